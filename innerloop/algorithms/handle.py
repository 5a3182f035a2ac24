"""Your own training loop: a per-task handle, and lists of tasks of different sizes.

The batched path (``learner.meta_loss(batch)``) is the fast one. For a loop written by
hand, as with learn2learn's ``maml.clone()`` / ``learner.adapt(loss)``, a gradient-based
learner hands out a :class:`TaskHandle` per task::

    opt = torch.optim.Adam(learner.parameters(), lr)
    for it in range(iterations):
        opt.zero_grad()
        for sx, sy, qx, qy in tasks:
            task = learner.clone()                         # or learner.task()
            for _ in range(steps):
                task.adapt(loss_fn(task(sx), sy))          # any scalar loss you compute
            (loss_fn(task(qx), qy) / len(tasks)).backward()
        opt.step()

``task.adapt(loss)`` takes the gradient of ``loss`` with respect to the task's adapted
parameters (``torch.autograd.grad``, keeping its graph unless first order) and applies the
learner's update rule (SGD, Meta-SGD rates, MAML++ rates, Meta-Curvature, a learned optimizer
with its per-task state); shared parameters (``adapt=``) do not change and still get the outer
gradient. Nothing is written into the model: ``task.params`` is a ``name -> tensor`` dict
that starts as the learner's initialization theta and is replaced by every step, so a loss
may depend on the parameters themselves (``task.params`` against ``task.initial_params``).
Same meta-gradient as ``meta_loss`` (tested in float64).

:class:`TaskList` holds tasks whose support or query sizes differ; ``meta_loss`` and
``meta_backward`` of the MAML family accept it (or a plain list) and run it task by task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Protocol

import torch
from torch.utils._pytree import tree_leaves, tree_map

from ..core.params import Params, split
from ..core.rules import UpdateRule, apply_updates, stop_gradient
from ..errors import ConfigError, InputError
from ..tasks import checks
from ..tasks.batch import TaskBatch
from .losses import default_loss


class _Learner(Protocol):
    """What a handle uses of its learner: a ``gradient.GradientLearner`` (typed by shape: that module imports this one)."""

    first_order: bool
    adapted_names: list[str]
    update_rule: UpdateRule
    loss_fn: Callable[..., torch.Tensor]
    loss_sees_params: bool

    def model_params(self) -> Params: ...
    def rule_meta(self) -> Params: ...
    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor: ...
    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor: ...
    def head_forward(self, params: Params, z: torch.Tensor) -> torch.Tensor: ...


class TaskHandle:
    """One task's adapted parameters, stepped by your own losses (learn2learn's ``maml.clone()``).

    ``task(x)`` predicts with the current parameters (for ANIL, ``head(features(x))``: the body
    runs on every call; compute ``z = task.features(x)`` once and call ``task.head(z)`` to save it,
    as the batched path does). ``task.adapt(loss)`` applies one step of the learner's update rule
    to the gradient of ``loss`` and returns the handle, so calls chain.

    Attributes:
        params: the current parameters (adapted and shared), ``name -> tensor``.
        initial_params: theta, the learner's parameters when the handle was made.
        steps: how many ``adapt`` calls have been applied.
    """

    def __init__(self, learner: _Learner, first_order: bool | None = None) -> None:
        """Start at the learner's current initialization; ``first_order`` overrides the learner's setting."""
        self.learner = learner
        self.first_order = learner.first_order if first_order is None else bool(first_order)
        self.initial_params: Params = learner.model_params()
        self._fast = split(self.initial_params, learner.adapted_names)[0]  # the adapted ones; the rest stay theta
        self._state = learner.update_rule.init_state(self._fast)
        self.steps = 0

    @property
    def params(self) -> Params:
        """The current parameters, in the model's order (adapted ones replaced, shared ones as given)."""
        return {n: self._fast.get(n, p) for n, p in self.initial_params.items()}

    @property
    def adapted_names(self) -> list[str]:
        """The names of the parameters ``adapt`` changes (the learner's ``adapt=`` choice)."""
        return list(self.learner.adapted_names)

    # -- predicting -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` (one task's examples, no task dimension) with the current parameters."""
        return self.learner.predict(self.params, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The learner's embedding of ``x`` (ANIL: the body; other learners: ``x`` itself)."""
        return self.learner.embed(self.params, x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """The adapted part of the model applied to ``features(x)``: ``task(x) == task.head(task.features(x))``."""
        return self.learner.head_forward(self.params, z)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The learner's own task loss (``loss_fn``) of ``task(x)`` against ``y`` (the default loss checks shapes)."""
        output = self(x)
        if self.learner.loss_fn is default_loss:
            checks.check_output_target(output, y)
        if self.learner.loss_sees_params:
            return self.learner.loss_fn(output, y, self.params)
        return self.learner.loss_fn(output, y)

    # -- adapting -----------------------------------------------------------------------------
    def adapt(self, loss: torch.Tensor, first_order: bool | None = None) -> TaskHandle:
        """One inner step on ``loss``, any scalar computed from this handle's outputs or ``params``.

        (u, s_{k+1}) = rule(d loss / d theta'_k, s_k, theta'_k, k, loss), theta'_{k+1} = theta'_k + u. Second
        order keeps the graph of the gradient (the outer backward differentiates through it);
        first order treats gradient and loss as constants. An adapted parameter the loss does
        not use gets a zero gradient, as in the batched path.
        """
        first_order = self.first_order if first_order is None else bool(first_order)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InputError(
                f"adapt(loss) needs a scalar tensor, got {shape}; reduce it first (e.g. loss.mean() or loss.sum())"
            )
        if not loss.requires_grad:
            raise InputError(
                "adapt(loss): the loss has no gradient (computed under torch.no_grad(), detached, or not from this "
                "handle's output or params); compute it from task(x) or task.params with gradients enabled"
            )
        loss = loss if loss.dim() == 0 else loss.reshape(())
        names = list(self._fast)
        with torch.enable_grad():
            flat = torch.autograd.grad(
                loss,
                [self._fast[n] for n in names],
                create_graph=not first_order,
                allow_unused=True,
                materialize_grads=True,
            )
        grads = dict(zip(names, flat))
        if first_order:
            grads, loss = stop_gradient(grads, loss)
        rule, meta = self.learner.update_rule, self.learner.rule_meta()
        updates, self._state = rule.run(grads, self._state, self._fast, self.steps, loss, meta)
        self._fast = apply_updates(self._fast, updates)
        self.steps += 1
        return self

    def clone(self) -> TaskHandle:
        """An independent handle at this handle's current parameters and optimizer state (states are
        never mutated in place, so the two share them until either steps)."""
        other = object.__new__(TaskHandle)
        other.__dict__.update(self.__dict__)
        other._fast = dict(self._fast)
        return other

    def __repr__(self) -> str:
        order = "first" if self.first_order else "second"
        return (
            f"TaskHandle({type(self.learner).__name__}, {self.learner.update_rule.describe()}, "
            f"{len(self._fast)} adapted tensors, {self.steps} steps, {order} order)"
        )


class TaskList(Sequence[TaskBatch]):
    """Tasks that cannot be stacked: support or query sizes (or input shapes) differ from task to task.

    Built from a list whose items are ``TaskBatch`` es (of any number of tasks, each kept as its
    own task) or ``(support_x, support_y, query_x, query_y)`` tuples of ONE task without a task
    dimension. Items are single-task ``TaskBatch`` es; slicing gives a ``TaskList``. Learners run
    such a list with the per-task loop; the mean over its tasks is the mean of the single-task losses.
    """

    def __init__(self, tasks: Iterable[TaskBatch | Sequence[torch.Tensor]]) -> None:
        items: list[TaskBatch] = []
        for i, task in enumerate(tasks):
            if isinstance(task, TaskBatch):
                items.extend(task)
            elif isinstance(task, (tuple, list)) and len(task) == 4 and all(_tensors(t) for t in task):
                items.append(TaskBatch(*(tree_map(lambda t: t.unsqueeze(0), t) for t in task)))
            else:
                raise InputError(
                    f"task {i} of the list is a {type(task).__name__}; give a TaskBatch or a tuple "
                    "(support_x, support_y, query_x, query_y) of one task without a task dimension"
                )
        if not items:
            raise InputError("the list of tasks is empty; give at least one task")
        self._tasks = items

    @classmethod
    def of(cls, tasks) -> TaskList:
        """``tasks`` as a ``TaskList`` (itself if it already is one)."""
        return tasks if isinstance(tasks, TaskList) else cls(tasks)

    @property
    def num_tasks(self) -> int:
        """The number of tasks."""
        return len(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TaskList(self._tasks[index])
        return self._tasks[index]

    def __iter__(self) -> Iterator[TaskBatch]:
        return iter(self._tasks)

    def to(self, *args, **kwargs) -> TaskList:
        """Every task moved or cast as :meth:`TaskBatch.to`."""
        return TaskList([t.to(*args, **kwargs) for t in self._tasks])

    def __repr__(self) -> str:
        sizes = sorted({(checks.examples(t.support_x, 1), checks.examples(t.query_x, 1)) for t in self._tasks})
        return f"TaskList({len(self)} tasks, (support, query) sizes {sizes[:4]}{' ...' if len(sizes) > 4 else ''})"


def is_task_list(batch) -> bool:
    """Whether ``batch`` is a list of tasks (a ``TaskList``, list or tuple) rather than a stacked ``TaskBatch``."""
    return isinstance(batch, (TaskList, list)) or (isinstance(batch, tuple) and not isinstance(batch, TaskBatch))


def map_task_list(task_fn, tasks: TaskList):
    """``task_fn(support_x, support_y, query_x, query_y)`` on every task, results stacked over tasks."""
    outs = [task_fn(*(tree_map(lambda x: x[0], getattr(t, f.name)) for f in fields(TaskBatch))) for t in tasks]
    return tree_map(lambda *xs: torch.stack(xs), *outs)


def _tensors(tree) -> bool:
    """A tensor, or a non-empty pytree of tensors (e.g. a dict of inputs)."""
    leaves = tree_leaves(tree)
    return bool(leaves) and all(isinstance(leaf, torch.Tensor) for leaf in leaves)


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of ``REDUCTIONS`` ("mean", "sum", "none"), else a one-line ConfigError."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r} is not one of {REDUCTIONS}; 'none' gives the per-task losses (T,)")
    return reduction


def reduce_tasks(
    per_task: dict[str, torch.Tensor], reduction: str, objective: str = "loss"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, metrics)`` from per-task values ``(T,)``: the ``objective`` metric's mean, sum, or itself
    (``"none"``), and the detached metrics (their batch means unless ``"none"``)."""
    if reduction == "none":
        return per_task[objective], {name: value.detach() for name, value in per_task.items()}
    loss = per_task[objective].mean() if reduction == "mean" else per_task[objective].sum()
    return loss, {name: value.detach().mean() for name, value in per_task.items()}
