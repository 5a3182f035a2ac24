"""Forward-pass learners: the support set is read in the forward pass, there is no inner loop.

CNP, SNAIL and the embedding + head learners (ProtoNets) share this base: each writes the
episode of one task, ``(support_x, support_y, query_x, query_y) -> {metric: value}``; the base
maps it over the tasks of a batch (or runs it once on a leading task dimension where that is
exact), and ``MetaLearner.meta_loss`` reduces it. ``adapt``/``predict`` follow docs/learners.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .base import MetaLearner
from .handle import is_task_list

#: One task's query metrics from its four tensors; written so that leading task dimensions also work.
Episode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class ForwardPassLearner(MetaLearner):
    """Base of the learners without an inner loop.

    A subclass writes :meth:`episode` (and ``adapt``/``predict`` for one task); ``flatten_tasks``
    says whether the episode may run once on the whole batch. ``evaluate`` accepts step counts only to
    share the protocol of the gradient learners: every requested step gets the same metrics.
    """

    eval_steps = 0  # no inner loop: the trainer validates at step 0
    flatten_tasks: bool | None = False

    def episode(self, batch: TaskBatch) -> tuple[Episode, TaskBatch]:
        """The per-task function for ``batch`` (constants such as the number of ways closed over) and the batch it
        runs on (e.g. reordered); the learner's own label and shape checks go here."""
        raise NotImplementedError

    def uses_flat_path(self, batch: TaskBatch) -> bool:
        """Whether the episode runs once on the batch's leading task dimension instead of mapped over tasks."""
        return bool(self.flatten_tasks)

    def episode_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query metrics ``(T,)``: the episode on each task (or once on the stacked tasks)."""
        self.check_batch(batch)
        task, batch = self.episode(batch)
        if self._flat(batch):
            return task(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return self.map_tasks(task, batch)

    def _flat(self, batch: TaskBatch) -> bool:
        return not is_task_list(batch) and self.uses_flat_path(batch)  # a list of tasks of different sizes: mapped

    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Task by task when the tasks are mapped (not flattened) and run in a loop."""
        return not self._flat(batch) and self.runs_tasks_in_a_loop(batch)

    def forward(self, support_x, support_y, query_x) -> Any:  # type: ignore[override]  # a whole task
        """``predict(adapt(support_x, support_y), query_x)``: one task's outputs in one call."""
        return self.predict(self.adapt(support_x, support_y), query_x)

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{s: per-task metrics (T,)}`` for each ``s`` in ``steps``, all the same (no adaptation steps)."""
        steps = sorted({positive_int("steps", s, allow_zero=True) for s in steps})
        per_task = self.episode_metrics(batch)
        return {s: dict(per_task) for s in steps}
