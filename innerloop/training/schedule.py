"""The meta learning rate schedule of a run (``train.lr_schedule``).

``step``: ``meta_lr * lr_decay ** (iteration // lr_decay_every)`` (constant without ``lr_decay_every``), a function
of the iteration alone. ``cosine``: ``torch.optim.lr_scheduler.CosineAnnealingLR`` from ``meta_lr`` to ``min_lr``
over ``train.iterations``, stepped once per iteration (MAML++, Antoniou et al. 2019, anneals per epoch); its state
is checkpointed, so a resumed run continues it exactly.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError


class MetaLRSchedule:
    """Sets the meta-optimizer's learning rate before each iteration (step decay) or after it (cosine).

    Args:
        train: the run's ``train`` section (``lr_schedule``, ``meta_lr``, ``min_lr``, ``lr_decay*``, ``iterations``).
        optimizer: the meta-optimizer, or None (a learner that takes its own outer step): then nothing is scheduled.
    """

    def __init__(self, train, optimizer: torch.optim.Optimizer | None) -> None:
        self.train, self.optimizer = train, optimizer
        self.cosine = None
        if optimizer is not None and train.lr_schedule == "cosine":
            self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=train.iterations, eta_min=train.min_lr
            )

    def learning_rate(self, iteration: int) -> float:
        """The step schedule's rate at ``iteration`` (``lr_schedule=step``)."""
        t = self.train
        return t.meta_lr * (t.lr_decay ** (iteration // t.lr_decay_every) if t.lr_decay_every else 1.0)

    def before(self, iteration: int) -> None:
        """Before iteration ``iteration``'s meta-step: the step schedule's rate."""
        if self.optimizer is not None and self.cosine is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(iteration)

    def after(self) -> None:
        """After a meta-step: the cosine schedule moves to the next iteration."""
        if self.cosine is not None:
            self.cosine.step()

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the cosine scheduler's state; nothing for the step schedule)."""
        return self.cosine.state_dict() if self.cosine is not None else {}

    def load_state_dict(self, state: dict | None, iteration: int) -> None:
        """Continue the checkpoint's cosine schedule at ``iteration`` (its length must be this run's)."""
        if self.cosine is None:
            return
        if not state:
            raise CheckpointError(
                f"the checkpoint at iteration {iteration} has no cosine schedule (its run used train.lr_schedule=step); "
                "resume with train.lr_schedule=step, or start a new run directory (--out)"
            )
        if state["T_max"] != self.train.iterations:
            raise CheckpointError(
                f"train.lr_schedule=cosine anneals over train.iterations, and this run started with "
                f"train.iterations={state['T_max']} (now {self.train.iterations}); resume with "
                f"train.iterations={state['T_max']}, or start a new run directory (--out)"
            )
        self.cosine.load_state_dict(state)
