"""The interface every meta-learner shares (the gradient-based family's machinery: ``gradient.py``).

Every learner is an ``nn.Module`` whose ``parameters()`` are exactly its
meta-parameters (the model's initialization plus whatever the algorithm learns
besides, e.g. Meta-SGD's rates), so any ``torch.optim`` optimizer meta-trains it:

    learner = MAML(model, inner_lr=0.01)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    loss, metrics = learner.meta_loss(task_batch)   # or learner.meta_backward(task_batch)
    loss.backward(); opt.step()
    adapted = learner.adapt(support_x, support_y, steps=10)
    prediction = learner(query_x, params=adapted)

``meta_backward(batch, weight)`` accumulates ``weight * d meta_loss`` into ``.grad``
(algorithms without a differentiable meta-loss, Reptile, override it); ``meta_step(batch,
optimizer, shard)``, the one call a trainer makes, adds the sum over processes, clipping and
the optimizer step (``algorithms.step``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..core.engine import StrategyChooser, functional_model, loss_takes_params, map_tasks
from ..core.params import Params, named_params
from ..tasks import checks
from ..tasks.batch import TaskBatch
from .handle import TaskList, check_reduction, is_task_list, map_task_list, reduce_tasks
from .losses import accuracy, default_loss  # default_loss re-exported: innerloop.algorithms.base.default_loss
from .step import DIVERGENCE_FIX, Shard, evaluate_held_out, gradient_step


class MetaLearner(nn.Module):
    """Base class: a model, a task loss and a task-batching strategy.

    Every entry point (``meta_loss``, ``meta_backward``, ``adapt``, ``evaluate``) checks its inputs
    first (:mod:`innerloop.tasks.checks`; ``innerloop.set_checks(False)`` turns that off).

    Args:
        model: the ``nn.Module`` whose parameters are meta-learned (batch-norm layers become transductive).
        loss_fn: ``(output, target) -> scalar`` task loss; default :func:`default_loss`.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``: how the tasks of a batch are mapped.
    """

    #: Whether float targets meet the default loss's MSE (then one-hot float rows are refused as a
    #: classification mistake); learners with a likelihood of their own (CNP) say no.
    float_targets_by_mse = True

    def __init__(self, model: nn.Module, loss_fn=None, strategy: str = "auto") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.functional = functional_model(model)
        self.loss_fn: Callable[..., torch.Tensor] = loss_fn or default_loss
        self.loss_sees_params = loss_takes_params(self.loss_fn)  # loss_fn(output, target, params)
        self.chooser = StrategyChooser(strategy)
        self._labels: checks.Labels | None = None  # label range of the batch being processed (checks)
        self._example_shape: tuple[int, ...] | None = None  # one input example, as the last batch had it
        self._inside_checked = False  # True while an entry point runs on inputs it already checked

    # -- calling the model functionally ---------------------------------------------
    def model_params(self) -> Params:
        """The model's parameters, ``name -> tensor`` (the meta-learned initialization theta)."""
        return named_params(self.model)

    def forward(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The model on ``x`` with ``params`` (default: the learner's own, theta)."""
        return self.functional(self.model_params() if params is None else params, x)

    def task_loss(self, output: torch.Tensor, target: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """``loss_fn(output, target)`` (``loss_fn(output, target, params)`` for a loss that sees the parameters,
        ``loss_sees_params``); with the default loss, the output and target shapes are checked first
        (a regression target of the output's shape, labels within the model's classes)."""
        if self.loss_fn is default_loss:
            checks.check_output_target(output, target, self._labels)
        if self.loss_sees_params:
            return self.loss_fn(output, target, params)
        return self.loss_fn(output, target)

    def task_metrics(
        self, output: torch.Tensor, target: torch.Tensor, params: Params | None = None
    ) -> dict[str, torch.Tensor]:
        """One task's ``loss`` (and ``accuracy`` for integer labels) of ``output`` against ``target``."""
        metrics = {"loss": self.task_loss(output, target, params)}
        if isinstance(target, torch.Tensor) and not target.is_floating_point():
            metrics["accuracy"] = accuracy(output, target).mean()
        return metrics

    def map_tasks(self, task_fn, batch: TaskBatch):
        """Run ``task_fn`` over the batch with the configured (or measured) strategy."""
        if is_task_list(batch):  # tasks of different sizes: one at a time
            return map_task_list(task_fn, TaskList.of(batch))
        meta = list(self.parameters())

        def run(strategy: str, sample: TaskBatch) -> torch.Tensor:
            return sum(t.sum() for t in tree_leaves(map_tasks(task_fn, sample, strategy)))

        return self.chooser.map(task_fn, batch, run, meta)

    # -- checks at the boundary (innerloop.tasks.checks) ------------------------------
    def check_batch(self, batch: TaskBatch, where: str = "meta_loss") -> None:
        """Check a batch's values before an entry point runs on it (finite, labels >= 0, no one-hot floats).

        One host sync per batch; skipped inside a compiled graph, with checks off, and inside an entry
        point that has already checked the batch (``meta_backward``'s per-task calls).
        """
        if self._inside_checked or not checks.value_checks_enabled():
            return
        one_hot = self.loss_fn is default_loss and self.float_targets_by_mse
        tasks = list(TaskList.of(batch)) if is_task_list(batch) else [batch]
        ranges = [r for r in (checks.check_batch_values(task, one_hot, where) for task in tasks) if r is not None]
        self._labels = checks.Labels(min(r.low for r in ranges), max(r.high for r in ranges)) if ranges else None
        self._example_shape = checks.example_shape(tasks[0].support_x) if tasks else None

    def check_task(self, support_x: torch.Tensor, support_y: torch.Tensor, where: str = "adapt") -> None:
        """Check one task's support set (``adapt``): one task, not a batch; finite; labels >= 0."""
        if self._inside_checked:
            return
        # No one-hot check here: a few regression targets of one task can be one-hot by coincidence.
        self._labels = checks.check_task(support_x, support_y, self._example_shape, False, where)

    def checked(self):
        """A context in which entry points skip the value checks of inputs already checked."""
        return _Checked(self)

    # -- the interface ----------------------------------------------------------------
    #: The per-task metric ``meta_loss`` minimises (CNP: ``nll``, its ``loss`` being the query MSE).
    objective = "loss"

    def episode_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query metrics ``name -> (T,)`` of ``batch``, differentiable: what an episodic learner writes."""
        raise NotImplementedError

    def meta_loss(self, batch: TaskBatch, reduction: str = "mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)``: the meta-objective, i.e. the ``objective`` of ``episode_metrics`` over the tasks (for
        the MAML family the query loss after adaptation; ``reduction``: mean, sum, or ``"none"`` for the per-task
        values), and the detached metrics."""
        check_reduction(reduction)
        return reduce_tasks(self.episode_metrics(batch), reduction, self.objective)

    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Whether ``meta_backward`` back-propagates task by task (learners whose meta-loss is a
        mean of independent per-task losses say yes when their tasks run in a loop)."""
        return False

    def runs_tasks_in_a_loop(self, batch: TaskBatch) -> bool:
        """Several tasks, mapped with the per-task loop (as configured or as ``auto`` chose)."""
        if is_task_list(batch):
            return len(batch) > 1
        return self.chooser.known(batch) == "loop" and batch.num_tasks > 1

    def meta_backward(self, batch: TaskBatch, weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Accumulate ``weight * d meta_loss / d theta`` into ``.grad``; returns the metrics.

        Where ``backward_per_task`` says so, each task's share of the mean is back-propagated
        as soon as it is computed and its graph freed: one backward of the summed loss would
        hold every task's graph at once (the memory this saves is measured in benchmarks/RESULTS.md).
        Same gradient, to rounding.
        """
        if is_task_list(batch):
            batch = TaskList.of(batch)  # type: ignore[assignment]  # a TaskList stands in for a TaskBatch here
        if not self.backward_per_task(batch):
            loss, metrics = self.meta_loss(batch)
            (loss * weight).backward()
            return metrics
        self.check_batch(batch, "meta_backward")  # once for the batch, not once per task
        totals: dict[str, torch.Tensor] = {}
        with self.checked():
            for i in range(batch.num_tasks):
                loss, metrics = self.meta_loss(batch[i : i + 1])
                (loss * (weight / batch.num_tasks)).backward()
                for name, value in metrics.items():
                    totals[name] = totals.get(name, 0) + value.detach() / batch.num_tasks
        return totals

    # -- what a trainer calls (innerloop.algorithms.step) -------------------------------
    divergence_fix = DIVERGENCE_FIX

    def meta_step(self, batch: TaskBatch, optimizer, shard: Shard = Shard()) -> dict[str, float]:
        """One meta-update on this process's ``shard`` of the meta-batch (:func:`~innerloop.algorithms.step.gradient_step`)."""
        return gradient_step(self, batch, optimizer, shard)

    @property
    def validation_steps(self) -> list[int]:
        """The adaptation steps a validation reports (``eval_steps``; 0 for learners without an inner loop)."""
        return [getattr(self, "eval_steps", 0)]

    def evaluate_tasks(self, source, ids: range, num_tasks: int, steps: Sequence[int], device=None, dtype=None) -> dict:
        """Per-task query metrics ``{step: {name: (len(ids),)}}`` of tasks ``ids`` of ``source``'s fixed evaluation set."""
        return evaluate_held_out(self, source, ids, steps, device, dtype)

    def progress_fields(self, record: dict) -> dict[str, str]:
        """What a progress bar shows of a logged training record."""
        return {"loss": f"{record['loss']:.4f}", "tasks_s": f"{record['tasks_per_s']:.0f}"}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        """The task state of one task from its support set ``(S, ...)`` (no task dimension), what ``predict`` takes:
        adapted parameters, prototypes, a representation, a context (the table in docs/learners.md)."""
        raise NotImplementedError

    def predict(self, state: Any, x: torch.Tensor) -> Any:
        """The output at one task's query inputs ``x`` from ``state = adapt(support_x, support_y)``."""
        raise NotImplementedError

    def evaluate(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task query metrics after each number of adaptation steps in ``steps``."""
        raise NotImplementedError


class _Checked:
    """``with learner.checked():`` entry points inside skip the value checks (the caller made them)."""

    def __init__(self, learner: MetaLearner) -> None:
        self.learner = learner

    def __enter__(self) -> None:
        self.previous, self.learner._inside_checked = self.learner._inside_checked, True

    def __exit__(self, *exc) -> None:
        self.learner._inside_checked = self.previous


check_class_labels = checks.check_class_labels  # classification learners: integer labels, one clear error
