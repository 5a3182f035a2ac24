"""A task family's tasks for one split: indexed draws for training, fixed sets for validation and test.

Each draw ``(seed, draw, task)`` has its own generator, so a resumed run samples exactly what an
uninterrupted one would, and the shards of a distributed meta-batch agree with one process.
"""

from __future__ import annotations

import torch

from ..tasks.seeding import task_generator
from .envs import TaskFamily


class RLTasks:
    """The tasks of ``family`` for ``split``, drawn from ``seed`` (``tasks.seeding.split_seed`` of the run's seeds)."""

    def __init__(self, family: TaskFamily, seed: int, split: str) -> None:
        self.family = family
        self.split = split
        self.seed = seed

    def sample(self, draw: int, indices) -> torch.Tensor:
        """Tasks ``indices`` of meta-batch ``draw`` (each from its own generator: shards of a batch agree)."""
        return torch.cat([self.family.sample_tasks(1, task_generator(self.seed, draw, i)) for i in indices])

    def fixed(self, num_tasks: int) -> torch.Tensor:
        """The held-out tasks of this split (the same ones every time)."""
        return self.family.test_tasks(num_tasks, self.seed)
