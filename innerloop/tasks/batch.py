"""The task-batch type every algorithm consumes.

A meta-batch of ``T`` tasks is four tensors stacked over a leading task dimension:
``support_x (T, S, ...)``, ``support_y (T, S, ...)``, ``query_x (T, Q, ...)``,
``query_y (T, Q, ...)``. Stacking (rather than a list of tasks) is what lets the
engine ``vmap`` over tasks; slicing it is what lets a later distributed trainer give
each rank its share of the meta-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

import torch


@dataclass(frozen=True)
class TaskBatch:
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name).shape[0] for f in fields(self)}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"TaskBatch tensors disagree on the number of tasks (leading dimension): {sizes}. "
                "Stack every tensor over the same task dimension."
            )
        if self.support_x.shape[1] != self.support_y.shape[1]:
            raise ValueError(
                f"support_x has {self.support_x.shape[1]} examples per task but support_y has "
                f"{self.support_y.shape[1]}; they must match."
            )
        if self.query_x.shape[1] != self.query_y.shape[1]:
            raise ValueError(
                f"query_x has {self.query_x.shape[1]} examples per task but query_y has "
                f"{self.query_y.shape[1]}; they must match."
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> "TaskBatch":
        """Task ``i`` as a batch of one (keeps the task dimension)."""
        return self[i : i + 1]

    def __getitem__(self, index) -> "TaskBatch":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TaskBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def __iter__(self) -> Iterator["TaskBatch"]:
        for i in range(self.num_tasks):
            yield self.task(i)

    def to(self, *args, **kwargs) -> "TaskBatch":
        """Move/cast like ``Tensor.to``; integer labels keep their dtype when casting floats."""
        out = []
        for f in fields(self):
            t = getattr(self, f.name)
            if t.is_floating_point():
                out.append(t.to(*args, **kwargs))
            else:
                device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), t.device))
                out.append(t.to(device))
        return TaskBatch(*out)

    @staticmethod
    def cat(batches: list["TaskBatch"]) -> "TaskBatch":
        return TaskBatch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TaskBatch)))
