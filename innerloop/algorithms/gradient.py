"""The optimization-based family's shared machinery (MAML, FOMAML, Meta-SGD, ANIL, Reptile, Pretrained).

Per task, ``steps`` applications of the update rule (:mod:`innerloop.core.rules`) on the support loss,
through :func:`innerloop.core.engine.adapt_params`::

    theta'_{k+1} = theta'_k + u_k,   (u_k, s_{k+1}) = rule(grad L_support(theta'_k), s_k, theta'_k, k, L_support)

The rule's meta-parameters are the learner's (``update_rule.*`` in ``parameters()`` and the state_dict)
and are handed to the engine explicitly (``rule_meta``). The support loss is ``loss_fn(output, target)``
or, for a loss that sees the parameters (e.g. a proximal term), ``loss_fn(output, target, params)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.engine import adapt_params
from ..core.params import AdaptSpec, Params, head_names, select_adapted, split
from ..core.rules import SGD, UpdateRule
from ..errors import ConfigError
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .base import MetaLearner
from .handle import TaskHandle


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
        update_rule: an :class:`~innerloop.core.rules.UpdateRule` replacing SGD(inner_lr) (or a combination:
            ``chain``, ``partition``, ``first_order``).
        eval_steps: default steps of :meth:`adapt` (default: inner_steps).
        loss_fn: ``(output, target) -> scalar`` task loss, or ``(output, target, params)`` for one that sees the
            parameters; default cross-entropy for integer labels, else MSE.
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
            # many small kernels of small models (benchmarks/RESULTS.md); the first call compiles.
            # Input checks run here, eagerly, before the compiled call (inside the graph they are skipped).
            eager, compiled = self.meta_loss, torch.compile(self.meta_loss, dynamic=False)  # fixed shapes: specialise

            @functools.wraps(eager)
            def meta_loss(batch, *args, **kwargs):
                self.check_batch(batch)
                return compiled(batch, *args, **kwargs)

            self.meta_loss = meta_loss  # type: ignore[method-assign]  # this learner's meta_loss, compiled
        params = self.model_params()
        update_rule.bind(
            {n: params[n].shape for n in self.adapted_names},
            max(inner_steps, 1),
            params[self.adapted_names[0]],
            head=head_names(model),
        )
        self.update_rule = update_rule

    def rule_meta(self) -> Params:
        """The update rule's meta-parameters, ``name -> tensor`` (learned rates, LSTM weights; empty for SGD)."""
        return self.update_rule.meta()

    # -- hooks ANIL overrides ---------------------------------------------------------
    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Features the inner loop adapts on (identity; ANIL: the frozen body, once per task)."""
        return x

    def head_forward(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """The adapted part of the model on features ``z`` (the whole model; ANIL: the head)."""
        return self.functional(params, z)

    # -- per-task adaptation ----------------------------------------------------------
    def support_loss(self, params: Params, data: tuple[Any, Any]) -> torch.Tensor:
        """The inner objective ``L(params, (z, y))``: the task loss of the head on features ``z``."""
        z, y = data
        return self.task_loss(self.head_forward(params, z), y, params)

    def task_adapt(
        self,
        params: Params,
        x,
        y,
        steps: int,
        trajectory: bool = False,
        first_order: bool | None = None,
        meta: Params | None = None,
    ):
        """theta'_i: ``steps`` applications of the update rule on the support loss of one task
        (``meta``: the rule's meta-parameters, default :meth:`rule_meta`)."""
        fast, shared = split(params, self.adapted_names)
        return adapt_params(
            self.support_loss,
            self.update_rule,
            fast,
            shared,
            (x, y),
            steps,
            first_order=self.first_order if first_order is None else first_order,
            trajectory=trajectory,
            checkpoint=self.checkpoint_steps,
            meta=self.rule_meta() if meta is None else meta,
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
            return {s: self.task_metrics(self.head_forward(path[s], zq), qy, path[s]) for s in steps}

        return self.map_tasks(task_eval, batch)
