"""The trainer for a config and how the process was started: one process, or a rank of a torchrun group."""

from __future__ import annotations

from .config import Config, is_rl
from .distributed import DistributedTrainer, ProcessGroup, launched_by_torchrun
from .rl_trainer import DistributedRLTrainer, RLTrainer
from .trainer import Trainer


def make_trainer(config: Config, resume: bool = False, overwrite: bool = False) -> Trainer:
    """A plain :class:`Trainer`, or a :class:`DistributedTrainer` when launched by torchrun.

    A group that torchrun restarted after a failure always resumes: the run directory
    already holds its checkpoints. ``overwrite`` moves an existing run aside (``Trainer.load_existing``).
    """
    if is_rl(config):
        if not launched_by_torchrun():
            return RLTrainer(config, resume=resume, overwrite=overwrite)
        group = ProcessGroup.from_environment(config.train.device, config.train.dist_timeout)
        return DistributedRLTrainer(config, group, resume=resume, overwrite=overwrite)
    if not launched_by_torchrun():
        return Trainer(config, resume=resume, overwrite=overwrite)
    group = ProcessGroup.from_environment(config.train.device, config.train.dist_timeout)
    return DistributedTrainer(config, group, resume=resume, overwrite=overwrite)
