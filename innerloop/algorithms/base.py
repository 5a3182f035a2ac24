"""The interface every meta-learner shares, and the machinery of the gradient-based ones.

Every learner is an ``nn.Module`` whose ``parameters()`` are exactly its
meta-parameters (the model's initialization plus whatever the algorithm learns
besides, e.g. Meta-SGD's rates), so any ``torch.optim`` optimizer meta-trains it:

    learner = MAML(model, inner_lr=0.01)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    loss, metrics = learner.meta_loss(task_batch)   # or learner.meta_backward(task_batch)
    loss.backward(); opt.step()
    adapted = learner.adapt(support_x, support_y, steps=10)
    prediction = learner(query_x, params=adapted)

``meta_backward(batch, weight)`` accumulates ``weight * d meta_loss`` into ``.grad``;
it is the one call a trainer (and a distributed all-reduce after it) needs, and
algorithms without a differentiable meta-loss (Reptile) override it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..core.engine import StrategyChooser, functional_model, inner_loop, map_tasks
from ..core.params import AdaptSpec, Params, named_params, select_adapted, split
from ..core.update_rules import SGD, UpdateRule
from ..errors import ConfigError
from ..tasks import checks
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .handle import TaskHandle, TaskList, is_task_list, map_task_list
from .losses import default_loss  # re-exported: innerloop.algorithms.base.default_loss


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
        self.loss_fn = loss_fn or default_loss
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

    def task_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``loss_fn(output, target)``; with the default loss, the output and target shapes are checked first
        (a regression target of the output's shape, labels within the model's classes)."""
        if self.loss_fn is default_loss:
            checks.check_output_target(output, target, self._labels)
        return self.loss_fn(output, target)

    def task_metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One task's ``loss`` (and ``accuracy`` for integer labels) of ``output`` against ``target``."""
        metrics = {"loss": self.task_loss(output, target)}
        if not target.is_floating_point():
            metrics["accuracy"] = (output.argmax(-1) == target).to(output.dtype).mean()
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
        self._example_shape = tuple(tasks[0].support_x.shape[2:]) if tasks else None

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
    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)``: the differentiable meta-objective of ``batch`` and its detached batch means."""
        raise NotImplementedError

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
        hold every task's graph at once (measured on Conv-4, 32 tasks of second-order MAML:
        ~10x the memory; 8 ProtoNets episodes: 4x). Same gradient, to rounding.
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

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        """What the learner adapts to one task, from its support set ``(S, ...)`` (no task dimension): its own kind
        (adapted parameters, prototypes, a representation, a context)."""
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


class _DefaultRate(float):
    """The default ``inner_lr``, told apart from an explicit one (which ``update_rule=`` must not silently drop)."""

    def __repr__(self) -> str:
        return repr(float(self))


DEFAULT_INNER_LR = _DefaultRate(0.01)


class GradientLearner(MetaLearner):
    """Shared machinery of the optimization-based family (MAML, FOMAML, Meta-SGD, ANIL, Reptile).

    Holds the set of adapted parameters, the update rule and the inner-loop length.
    The inner loop may run on an embedding of the inputs (``embed``, identity here)
    with a head (``head_forward``, the whole model here); ANIL overrides both so the
    frozen body runs once per task instead of once per inner step.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization.
        inner_lr: alpha, the step size of the plain SGD inner loop (default 0.01). With
            ``update_rule=`` the rule carries its own rate: giving both is refused.
        inner_steps: inner steps at meta-training time.
        first_order: drop second derivatives (the inner gradients are constants).
        adapt: the adapted parameters: ``"all"``, ``"head"``, a regular expression, a list of names
            or a predicate; the others are shared and get only the outer gradient.
        update_rule: an :class:`~innerloop.core.update_rules.UpdateRule` replacing SGD(inner_lr).
        eval_steps: default steps of :meth:`adapt` (default: inner_steps).
        loss_fn: ``(output, target) -> scalar`` task loss; default cross-entropy for integer labels, else MSE.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"`` (time both, keep the faster; the loop where vmap fails).
        checkpoint_steps: second order: recompute each inner step in the backward pass (less memory).
        compile: ``torch.compile`` the meta-loss (a fixed strategy; input checks stay outside the graph).
    """

    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Task by task when the tasks run in a loop (each task's graph freed after its backward)."""
        return self.runs_tasks_in_a_loop(batch)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float | None = DEFAULT_INNER_LR,
        inner_steps: int = 1,
        first_order: bool = False,
        adapt: AdaptSpec = "all",
        update_rule: UpdateRule | None = None,
        eval_steps: int | None = None,
        loss_fn=None,
        strategy: str = "auto",
        checkpoint_steps: bool = False,
        compile: bool = False,
    ) -> None:
        if compile and (strategy == "auto" or checkpoint_steps):
            raise ValueError(
                "compile=True compiles the meta-loss of one fixed strategy: give strategy='vmap' or 'loop' "
                "(auto times both eagerly first) and leave checkpoint_steps off"
            )
        if checkpoint_steps and strategy == "vmap":
            raise ValueError(
                "checkpoint_steps recomputes inner steps with torch.utils.checkpoint, which cannot run under vmap: "
                "use strategy='loop' (or 'auto', which then means loop)"
            )
        # Recomputation only pays where memory is the limit: the per-task loop on big models.
        super().__init__(model, loss_fn, "loop" if checkpoint_steps else strategy)
        self.checkpoint_steps = bool(checkpoint_steps)
        self.inner_steps = positive_int("inner_steps", inner_steps, allow_zero=True)
        self.eval_steps = positive_int(
            "eval_steps", eval_steps if eval_steps is not None else inner_steps, allow_zero=True
        )
        self.first_order = bool(first_order)
        self.adapted_names = select_adapted(model, adapt)
        if update_rule is not None and inner_lr is not None and inner_lr is not DEFAULT_INNER_LR:
            raise ConfigError(
                f"give inner_lr={inner_lr!r} or update_rule={type(update_rule).__name__}(...), not both: the rule has "
                "its own rate (e.g. PerLayerPerStepRates(0.05)) and would ignore inner_lr"
            )
        if update_rule is None:
            if inner_lr is None:
                raise ValueError("give either inner_lr (plain SGD inner loop) or an update_rule")
            update_rule = SGD(inner_lr)
        if not isinstance(update_rule, UpdateRule):
            raise TypeError(f"update_rule must be an innerloop UpdateRule, got {type(update_rule).__name__}")
        if compile:
            # torch.compile traces the inner loop's grad and the task map into one graph and fuses the
            # many small kernels of small models (2-2.5x vmap on the sinusoid MLP, RESULTS.md); the first call compiles.
            # Input checks run here, eagerly, before the compiled call (inside the graph they are skipped).
            eager, compiled = self.meta_loss, torch.compile(self.meta_loss, dynamic=False)  # fixed shapes: specialise

            @functools.wraps(eager)
            def meta_loss(batch, *args, **kwargs):
                self.check_batch(batch)
                return compiled(batch, *args, **kwargs)

            self.meta_loss = meta_loss  # type: ignore[method-assign]  # this learner's meta_loss, compiled
        params = self.model_params()
        update_rule.bind(
            {n: params[n].shape for n in self.adapted_names}, max(inner_steps, 1), params[self.adapted_names[0]]
        )
        self.update_rule = update_rule

    # -- hooks ANIL overrides ---------------------------------------------------------
    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Features the inner loop adapts on (identity; ANIL: the frozen body, once per task)."""
        return x

    def head_forward(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """The adapted part of the model on features ``z`` (the whole model; ANIL: the head)."""
        return self.functional(params, z)

    # -- per-task adaptation ----------------------------------------------------------
    def task_adapt(self, params: Params, x, y, steps: int, trajectory: bool = False, first_order: bool | None = None):
        """theta'_i: ``steps`` applications of the update rule on the support loss of one task."""
        fast, shared = split(params, self.adapted_names)
        return inner_loop(
            self.head_forward,
            self.task_loss,
            self.update_rule,
            fast,
            shared,
            x,
            y,
            steps,
            first_order=self.first_order if first_order is None else first_order,
            trajectory=trajectory,
            checkpoint=self.checkpoint_steps,
        )

    def adapt(self, support_x, support_y, steps: int | None = None) -> Params:
        """Adapted parameters ``name -> tensor`` for one new task.

        Args:
            support_x: ``(S, *example)``, one task's support inputs (no task dimension).
            support_y: ``(S,)`` integer labels or ``(S, *target)`` float targets.
            steps: inner steps (default ``eval_steps``).
        """
        steps = self.eval_steps if steps is None else positive_int("steps", steps, allow_zero=True)
        self.check_task(support_x, support_y)
        params = self.model_params()
        return self.task_adapt(params, self.embed(params, support_x), support_y, steps)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` with (adapted) parameters ``params``."""
        return self.head_forward(params, self.embed(params, x))

    def clone(self, first_order: bool | None = None) -> TaskHandle:
        """A :class:`~innerloop.algorithms.handle.TaskHandle` for one task of your own training loop
        (learn2learn's ``maml.clone()``): ``task = learner.clone(); task.adapt(loss); task(x)``."""
        return TaskHandle(self, first_order)

    task = clone

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        """``{s: {"loss": (T,), ...}}``: per-task query metrics after ``s`` inner steps, for each ``s`` in ``steps``."""
        # The inner gradients are still taken: torch.func.grad ignores an outer no_grad.
        steps = sorted({positive_int("steps", s, allow_zero=True) for s in steps})
        self.check_batch(batch, "evaluate")
        params = self.model_params()

        def task_eval(sx, sy, qx, qy):
            path = self.task_adapt(params, self.embed(params, sx), sy, steps[-1], trajectory=True)
            zq = self.embed(params, qx)
            return {s: self.task_metrics(self.head_forward(path[s], zq), qy) for s in steps}

        return self.map_tasks(task_eval, batch)
