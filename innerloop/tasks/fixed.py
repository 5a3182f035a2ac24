"""Fixed, seeded evaluation task sets for any indexed task source."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch

from ..validate import positive_int
from .batch import TaskBatch

#: Meta-batch number used by ``fixed_tasks``. Training draws count up from 0, so the
#: evaluation tasks never coincide with (and do not depend on) any training meta-batch.
EVAL_DRAW = -1


def _reseed(source, seed: int):
    if hasattr(source, "with_seed"):
        return source.with_seed(seed)
    if dataclasses.is_dataclass(source) and not isinstance(source, type) and hasattr(source, "seed"):
        return dataclasses.replace(source, seed=seed)
    raise TypeError(f"cannot reseed {type(source).__name__}: give it a with_seed(seed) method or a seed field")


class FixedTasks:
    """A fixed, re-iterable set of ``num_tasks`` tasks, yielded in meta-batches of ``batch_size``.

    Task ``i`` is task ``i`` of meta-batch ``draw`` (default ``EVAL_DRAW = -1``) of ``source``, so the
    set depends on the source's seed and ``draw`` only: not on ``batch_size``, not on how often or
    where it is iterated, and the first ``n`` tasks of a larger set are the ``n``-task set.

    Args:
        source: any task source with ``sample(draw, task_ids, dtype) -> TaskBatch``.
        num_tasks: the size of the set.
        batch_size: tasks per yielded meta-batch (the last may be smaller).
        draw: the meta-batch number the set is drawn as.
        dtype: the floating dtype of the tasks' tensors.
    """

    def __init__(
        self, source, num_tasks: int, batch_size: int, *, draw: int = EVAL_DRAW, dtype: torch.dtype = torch.float32
    ):
        self.source = source
        self.num_tasks = positive_int("num_tasks", num_tasks)
        self.batch_size = positive_int("batch_size", batch_size)
        self.draw = int(draw)
        self.dtype = dtype

    def __len__(self) -> int:
        return math.ceil(self.num_tasks / self.batch_size)

    def __iter__(self) -> Iterator[TaskBatch]:
        for start in range(0, self.num_tasks, self.batch_size):
            yield self.source.sample(self.draw, range(start, min(start + self.batch_size, self.num_tasks)), self.dtype)

    def __repr__(self) -> str:
        return f"FixedTasks({self.num_tasks} tasks in {len(self)} batches of <= {self.batch_size}, draw={self.draw}, source={self.source!r})"


def fixed_tasks(
    source,
    num_tasks: int,
    batch_size: int,
    *,
    seed: int | None = None,
    draw: int = EVAL_DRAW,
    dtype: torch.dtype = torch.float32,
) -> FixedTasks:
    """A fixed evaluation task set: the same ``num_tasks`` tasks on every iteration (and every run)
    for a given seed. ``seed`` (default: the source's own) picks another fixed set.

    >>> for batch in fixed_tasks(EpisodicTasks(test_set, 5, 1, 15), 600, 50): ...
    """
    if seed is not None:
        source = _reseed(source, seed)
    return FixedTasks(source, num_tasks, batch_size, draw=draw, dtype=dtype)
