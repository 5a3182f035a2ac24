"""The task-batch type every algorithm consumes.

A meta-batch of ``T`` tasks is four tensors stacked over a leading task dimension:
``support_x (T, S, ...)``, ``support_y (T, S, ...)``, ``query_x (T, Q, ...)``,
``query_y (T, Q, ...)``. Stacking (rather than a list of tasks) is what lets the
engine ``vmap`` over tasks; slicing it is what lets a later distributed trainer give
each rank its share of the meta-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from .checks import check_batch_shapes


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks stacked over a leading task dimension; shapes are checked on construction.

    Args:
        support_x: ``(T, S, *example)`` support inputs, ``S >= 1`` examples per task.
        support_y: ``(T, S)`` integer class labels or ``(T, S, *target)`` float targets.
        query_x: ``(T, Q, *example)`` query inputs.
        query_y: ``(T, Q)`` or ``(T, Q, *target)``, like ``support_y``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        check_batch_shapes(self.support_x, self.support_y, self.query_x, self.query_y)  # see innerloop.tasks.checks

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks."""
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` as a batch of one (keeps the task dimension)."""
        return self[i : i + 1]

    def __getitem__(self, index) -> TaskBatch:
        """Tasks ``index`` (an int keeps the task dimension, like a slice of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TaskBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def __iter__(self) -> Iterator[TaskBatch]:
        """Each task as a batch of one."""
        for i in range(self.num_tasks):
            yield self.task(i)

    def to(self, *args, **kwargs) -> TaskBatch:
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
    def cat(batches: list[TaskBatch]) -> TaskBatch:
        """The tasks of ``batches`` in one batch (their per-task shapes must agree)."""
        return TaskBatch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TaskBatch)))
