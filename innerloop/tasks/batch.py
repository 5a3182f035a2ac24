"""The task-batch type every algorithm consumes.

A meta-batch of ``T`` tasks is four tensors stacked over a leading task dimension:
``support_x (T, S, ...)``, ``support_y (T, S, ...)``, ``query_x (T, Q, ...)``,
``query_y (T, Q, ...)``. Stacking (rather than a list of tasks) is what lets the
engine ``vmap`` over tasks; slicing it is what lets a distributed trainer give each
rank its share of the meta-batch. Each field may also be a pytree of such tensors
(e.g. ``{"input_ids": ..., "attention_mask": ...}`` as inputs): every operation maps over its leaves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from .checks import check_batch_shapes


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks stacked over a leading task dimension; shapes are checked on construction.

    Args:
        support_x: ``(T, S, *example)`` support inputs, ``S >= 1`` examples per task (or a pytree of them).
        support_y: ``(T, S)`` integer class labels or ``(T, S, *target)`` float targets.
        query_x: ``(T, Q, *example)`` query inputs, of ``support_x``'s structure.
        query_y: ``(T, Q)`` or ``(T, Q, *target)``, like ``support_y``.
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any

    def __post_init__(self) -> None:
        check_batch_shapes(self.support_x, self.support_y, self.query_x, self.query_y)  # see innerloop.tasks.checks

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks."""
        return tree_leaves(self.support_x)[0].shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` as a batch of one (keeps the task dimension)."""
        return self[i : i + 1]

    def __getitem__(self, index) -> TaskBatch:
        """Tasks ``index`` (an int keeps the task dimension, like a slice of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TaskBatch(*(tree_map(lambda t: t[index], getattr(self, f.name)) for f in fields(self)))

    def __iter__(self) -> Iterator[TaskBatch]:
        """Each task as a batch of one."""
        for i in range(self.num_tasks):
            yield self.task(i)

    def to(self, *args, **kwargs) -> TaskBatch:
        """Move/cast like ``Tensor.to``; integer labels keep their dtype when casting floats."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), t.device))
            return t.to(device)

        return TaskBatch(*(tree_map(move, getattr(self, f.name)) for f in fields(self)))

    @staticmethod
    def cat(batches: list[TaskBatch]) -> TaskBatch:
        """The tasks of ``batches`` in one batch (their per-task shapes must agree)."""
        return TaskBatch(
            *(tree_map(lambda *ts: torch.cat(ts), *(getattr(b, f.name) for b in batches)) for f in fields(TaskBatch))
        )
