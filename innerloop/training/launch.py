"""The trainer for a config and how the process was started: one process, or a rank of a torchrun group."""

from __future__ import annotations

from .config import Config
from .distributed import Group, LocalGroup, ProcessGroup, launched_by_torchrun
from .trainer import Trainer


def make_trainer(config: Config, resume: bool = False, overwrite: bool = False) -> Trainer:
    """A :class:`Trainer` on this process alone, or on the torchrun group this process is a rank of.

    A group that torchrun restarted after a failure always resumes: the run directory
    already holds its checkpoints. ``overwrite`` moves an existing run aside (``Trainer.find_start``).
    """
    group: Group
    if launched_by_torchrun():
        group = ProcessGroup.from_environment(config.train.device, config.train.dist_timeout)
    else:
        group = LocalGroup()
    return Trainer(config, resume=resume, overwrite=overwrite, group=group)
