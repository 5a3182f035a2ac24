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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from ..core.engine import StrategyChooser, functional_model, inner_loop, map_tasks
from ..core.params import AdaptSpec, Params, named_params, select_adapted, split
from ..core.update_rules import SGD, UpdateRule
from ..tasks.batch import TaskBatch


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer class labels, mean squared error otherwise."""
    if target.is_floating_point():
        return F.mse_loss(output, target)
    return F.cross_entropy(output, target)


class MetaLearner(nn.Module):
    """Base class: a model, a task loss and a task-batching strategy."""

    def __init__(self, model: nn.Module, loss_fn=None, strategy: str = "auto") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.functional = functional_model(model)
        self.loss_fn = loss_fn or default_loss
        self.chooser = StrategyChooser(strategy)

    # -- calling the model functionally ---------------------------------------------
    def model_params(self) -> Params:
        return named_params(self.model)

    def forward(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self.functional(self.model_params() if params is None else params, x)

    def task_metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        metrics = {"loss": self.loss_fn(output, target)}
        if not target.is_floating_point():
            metrics["accuracy"] = (output.argmax(-1) == target).to(output.dtype).mean()
        return metrics

    def map_tasks(self, task_fn, batch: TaskBatch):
        """Run ``task_fn`` over the batch with the configured (or measured) strategy."""
        meta = list(self.parameters())

        def run(strategy: str, sample: TaskBatch) -> torch.Tensor:
            return sum(t.sum() for t in tree_leaves(map_tasks(task_fn, sample, strategy)))

        return map_tasks(task_fn, batch, self.chooser.resolve(run, batch, meta))

    # -- the interface ----------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Whether ``meta_backward`` back-propagates task by task (learners whose meta-loss is a
        mean of independent per-task losses say yes when their tasks run in a loop)."""
        return False

    def runs_tasks_in_a_loop(self, batch: TaskBatch) -> bool:
        """Several tasks, mapped with the per-task loop (as configured or as ``auto`` chose)."""
        return self.chooser.known(batch) == "loop" and batch.num_tasks > 1

    def meta_backward(self, batch: TaskBatch, weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Accumulate ``weight * d meta_loss / d theta`` into ``.grad``; returns the metrics.

        Where ``backward_per_task`` says so, each task's share of the mean is back-propagated
        as soon as it is computed and its graph freed: one backward of the summed loss would
        hold every task's graph at once (measured on Conv-4, 32 tasks of second-order MAML:
        ~10x the memory; 8 ProtoNets episodes: 4x). Same gradient, to rounding.
        """
        if not self.backward_per_task(batch):
            loss, metrics = self.meta_loss(batch)
            (loss * weight).backward()
            return metrics
        totals: dict[str, torch.Tensor] = {}
        for i in range(batch.num_tasks):
            loss, metrics = self.meta_loss(batch[i : i + 1])
            (loss * (weight / batch.num_tasks)).backward()
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0) + value.detach() / batch.num_tasks
        return totals

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        raise NotImplementedError

    def evaluate(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task query metrics after each number of adaptation steps in ``steps``."""
        raise NotImplementedError


def check_class_labels(learner: str, *labels: torch.Tensor) -> None:
    """Classification learners index by label: refuse float, complex and boolean labels clearly."""
    for y in labels:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{learner} needs integer class labels 0..N-1, got dtype {y.dtype}")


def _check_positive_int(name: str, value: int, allow_zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        bound = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {bound} integer, got {value!r}")
    return value


class GradientLearner(MetaLearner):
    """Shared machinery of the optimization-based family (MAML, FOMAML, Meta-SGD, ANIL, Reptile).

    Holds the set of adapted parameters, the update rule and the inner-loop length.
    The inner loop may run on an embedding of the inputs (``embed``, identity here)
    with a head (``head_forward``, the whole model here); ANIL overrides both so the
    frozen body runs once per task instead of once per inner step.
    """

    def backward_per_task(self, batch: TaskBatch) -> bool:
        return self.runs_tasks_in_a_loop(batch)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float | None = 0.01,
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
        self.inner_steps = _check_positive_int("inner_steps", inner_steps, allow_zero=True)
        self.eval_steps = _check_positive_int("eval_steps", eval_steps if eval_steps is not None else inner_steps, True)
        self.first_order = bool(first_order)
        self.adapted_names = select_adapted(model, adapt)
        if update_rule is None:
            if inner_lr is None:
                raise ValueError("give either inner_lr (plain SGD inner loop) or an update_rule")
            update_rule = SGD(inner_lr)
        if not isinstance(update_rule, UpdateRule):
            raise TypeError(f"update_rule must be an innerloop UpdateRule, got {type(update_rule).__name__}")
        if compile:
            # torch.compile traces the inner loop's grad and the task map into one graph and fuses the
            # many small kernels of small models (2-2.5x vmap on the sinusoid MLP, RESULTS.md); the first call compiles.
            self.meta_loss = torch.compile(self.meta_loss, dynamic=False)  # training shapes are fixed: specialise
        params = self.model_params()
        update_rule.bind({n: params[n].shape for n in self.adapted_names}, max(inner_steps, 1), params[self.adapted_names[0]])
        self.update_rule = update_rule

    # -- hooks ANIL overrides ---------------------------------------------------------
    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return x

    def head_forward(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        return self.functional(params, z)

    # -- per-task adaptation ----------------------------------------------------------
    def task_adapt(self, params: Params, x, y, steps: int, trajectory: bool = False, first_order: bool | None = None):
        """theta'_i: ``steps`` applications of the update rule on the support loss of one task."""
        fast, shared = split(params, self.adapted_names)
        return inner_loop(
            self.head_forward, self.loss_fn, self.update_rule, fast, shared, x, y, steps,
            first_order=self.first_order if first_order is None else first_order, trajectory=trajectory,
            checkpoint=self.checkpoint_steps,
        )

    def adapt(self, support_x, support_y, steps: int | None = None) -> Params:
        """Adapted parameters for one new task (no task dimension on the inputs)."""
        steps = self.eval_steps if steps is None else _check_positive_int("steps", steps, allow_zero=True)
        params = self.model_params()
        return self.task_adapt(params, self.embed(params, support_x), support_y, steps)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.head_forward(params, self.embed(params, x))

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        # The inner gradients are still taken: torch.func.grad ignores an outer no_grad.
        steps = sorted({_check_positive_int("steps", s, allow_zero=True) for s in steps})
        params = self.model_params()

        def task_eval(sx, sy, qx, qy):
            path = self.task_adapt(params, self.embed(params, sx), sy, steps[-1], trajectory=True)
            zq = self.embed(params, qx)
            return {s: self.task_metrics(self.head_forward(path[s], zq), qy) for s in steps}

        return self.map_tasks(task_eval, batch)
