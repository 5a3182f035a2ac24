"""The functional adaptation engine.

``adapt_params`` is the pure inner loop of every optimization-based algorithm, supervised or
meta-RL, on any support objective ``L(params, data)`` (``data``: any pytree of tensors), with
``torch.func.grad``:

    g_k = grad L(theta'_k; D_k),   (u_k, s_{k+1}) = rule(g_k, s_k, theta'_k, k, L(theta'_k; D_k)),
    theta'_{k+1} = theta'_k + u_k,   theta'_0 = theta,  s_0 = rule.init_state(theta)

(``D_k``: the same support data at every step, or one batch per step for meta-RL). Second order
keeps the graph of each inner gradient; first order treats it as a constant (``stop_gradient``);
``checkpoint=True`` recomputes each second-order step in the backward pass instead of storing it.
``inner_loop`` is the supervised form, ``L = loss_fn(forward(params, x), y[, params])``.

``map_tasks`` runs a per-task function over a meta-batch with ``torch.func.vmap`` or a per-task
loop (same numbers); ``StrategyChooser`` times both on the first batch under ``strategy="auto"``.
Batch norm is transductive (:mod:`innerloop.core.batchnorm`): ``functional_model`` swaps torch's layers.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import TreeSpec, tree_flatten, tree_map, tree_unflatten
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ..errors import ConfigError, InnerloopError
from ..tasks.batch import TaskBatch
from .batchnorm import use_transductive_batch_norm_
from .params import Params
from .rules import State, UpdateRule, apply_updates, stop_gradient

Forward = Callable[[Params, Any], torch.Tensor]
LossFn = Callable[..., torch.Tensor]  # (output, target) or (output, target, params) -> scalar
Objective = Callable[[Params, Any], torch.Tensor]  # (params, data) -> scalar support loss
STRATEGIES = ("vmap", "loop", "auto")
logger = logging.getLogger(__name__)


def functional_model(module: nn.Module) -> Forward:
    """``f(params, x)`` calling ``module`` with the given parameters and its own buffers.

    The buffers are the module's at call time (``functional_call`` swaps in only the given
    parameters), so ``.to()``, ``.double()``, ``.cuda()`` and a buffer reassigned after wrapping
    behave as on the plain module. ``x`` may be a tensor or a pytree (e.g. a dict of tensors), passed
    as the module's one argument. Batch-norm layers are switched to transductive batch statistics.
    """
    use_transductive_batch_norm_(module)

    def forward(params: Params, x: Any) -> torch.Tensor:
        return functional_call(module, params, (x,), strict=False)

    return forward


def loss_takes_params(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` takes the parameters as a third argument, ``(output, target, params)``."""
    try:
        parameters = list(inspect.signature(loss_fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 3


def inner_step(
    objective: Objective,
    rule: UpdateRule,
    fast: Params,
    shared: Params,
    state: State,
    data: Any,
    step: int,
    first_order: bool = False,
    meta: Params | None = None,
) -> tuple[Params, State]:
    """One step of the rule on ``objective({**shared, **fast}, data)``: the new ``fast`` parameters and state."""
    return _step_fn(objective, rule, first_order, meta)(fast, state, step, shared, data)


def _step_fn(objective: Objective, rule: UpdateRule, first_order: bool, meta: Params | None) -> Callable:
    def support_loss(fast: Params, shared: Params, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss = objective({**shared, **fast}, data)
        return loss, loss  # the loss itself too: learned optimizers read it

    support_grad = grad(support_loss, has_aux=True)

    def one_step(fast: Params, state: State, step: int, shared: Params, data: Any) -> tuple[Params, State]:
        grads, loss = support_grad(fast, shared, data)
        if first_order:
            grads, loss = stop_gradient(grads, loss)
        updates, state = rule.run(grads, state, fast, step, loss, meta)
        return apply_updates(fast, updates), state

    return one_step


def adapt_params(
    objective: Objective,
    rule: UpdateRule,
    fast: Params,
    shared: Params,
    data: Any,
    steps: int,
    per_step: bool = False,
    first_order: bool = False,
    trajectory: bool = False,
    checkpoint: bool = False,
    meta: Params | None = None,
) -> Params | list[Params]:
    """Adapt the ``fast`` parameters of one task by ``steps`` steps of ``rule`` on ``objective(params, data)``.

    ``shared`` parameters take part in the objective but are not adapted; they still receive the
    outer (meta) gradient through it. ``per_step``: ``data`` is a sequence, step k reads ``data[k]``
    (meta-RL: fresh episodes per step). ``meta``: the rule's meta-parameters (default: its own).
    Returns the adapted parameters (fast and shared merged), or with ``trajectory=True`` the list
    of them after 0, 1, ..., ``steps`` steps. ``checkpoint=True`` recomputes each second-order step
    in the backward pass (see :func:`recomputed_in_backward`); it does not run under vmap.
    """
    one_step = _step_fn(objective, rule, first_order, meta)
    # First order keeps no inner graph worth recomputing, and without autograd there is nothing to store.
    # shared and data are explicit inputs so a recomputed step hands their gradients back (they may be
    # non-leaf, e.g. ANIL's embedding) instead of back-propagating into the rest of the graph itself.
    recompute = checkpoint and not first_order and torch.is_grad_enabled()
    step_fn = (lambda *args: recomputed_in_backward(one_step, *args)) if recompute else one_step
    path: list[Params] = [{**shared, **fast}] if trajectory else []
    state = rule.init_state(fast)
    for step in range(steps):
        fast, state = step_fn(fast, state, step, shared, data[step] if per_step else data)
        if trajectory:
            path.append({**shared, **fast})
    return path if trajectory else {**shared, **fast}


def inner_loop(
    forward: Forward,
    loss_fn: LossFn,
    rule: UpdateRule,
    fast: Params,
    shared: Params,
    x: Any,
    y: Any,
    steps: int,
    first_order: bool = False,
    trajectory: bool = False,
    checkpoint: bool = False,
    meta: Params | None = None,
) -> Params | list[Params]:
    """:func:`adapt_params` on one task's support set ``(x, y)``: ``L = loss_fn(forward(params, x), y)``.

    ``loss_fn`` may take the parameters as a third argument (``(output, target, params)``, e.g. a
    proximal term); ``x`` and ``y`` may be pytrees of tensors.
    """

    with_params = loss_takes_params(loss_fn)

    def objective(params: Params, data: tuple[Any, Any]) -> torch.Tensor:
        output = forward(params, data[0])
        return loss_fn(output, data[1], params) if with_params else loss_fn(output, data[1])

    return adapt_params(objective, rule, fast, shared, (x, y), steps, False, first_order, trajectory, checkpoint, meta)


def recomputed_in_backward(fn: Callable, *args):
    """``fn(*args)`` (pytrees of tensors in and out) that keeps only its inputs for the backward pass.

    Uses torch.utils.checkpoint's reentrant form: its non-reentrant form works through
    saved-tensor hooks, which ``torch.func.grad`` inside ``fn`` refuses. The reentrant form
    runs ``fn`` without autograd, then again with it when the backward pass reaches it, so the
    result supports ``.backward()`` (gradients reach leaves ``fn`` closes over, such as learned
    inner rates) but not ``torch.autograd.grad``, and it cannot run under vmap.
    """
    leaves, spec = tree_flatten(args)
    tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    out_spec: list[TreeSpec] = []

    def flat_fn(*tensors):
        full = list(leaves)
        for i, t in zip(tensor_at, tensors):
            full[i] = t
        out_leaves, spec_out = tree_flatten(fn(*tree_unflatten(full, spec)))
        out_spec[:] = [spec_out]
        return tuple(out_leaves)

    outputs = torch_checkpoint(flat_fn, *(leaves[i] for i in tensor_at), use_reentrant=True)
    return tree_unflatten(list(outputs), out_spec[0])


TaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], object]


def map_tasks(fn: TaskFn, batch: TaskBatch, strategy: str):
    """Apply ``fn(support_x, support_y, query_x, query_y)`` to every task of ``batch``.

    ``fn`` returns a tensor or a (nested) tuple/dict of tensors per task; the results
    come back stacked over a leading task dimension, identically for both strategies.
    The four fields may be pytrees (dicts of tensors): every leaf is indexed by task.
    """
    args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    return map_over_tasks(fn, args, batch.num_tasks, strategy)


def map_over_tasks(fn: Callable, args: tuple, num_tasks: int, strategy: str):
    """``fn(*task_args)`` for every task of ``args`` (pytrees whose tensors have a leading task dimension)."""
    if strategy == "vmap":
        return vmap(fn, randomness="different")(*args)
    if strategy == "loop":
        outs = [fn(*tree_map(lambda t, i=i: t[i], args)) for i in range(num_tasks)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)
    raise ValueError(f"strategy must be 'vmap' or 'loop' here, got {strategy!r}")


def vmap_with_constants(fn: Callable, *args):
    """``vmap(fn)(*args)`` where the pytrees in and out may hold non-tensor leaves (e.g. a stateless rule's
    ``None`` state): those pass through unchanged instead of being mapped."""
    leaves, spec = tree_flatten(args)
    at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    out_leaves: list[Any] = []
    out_spec: list[TreeSpec] = []

    def flat_fn(*tensors):
        full = list(leaves)
        for i, t in zip(at, tensors):
            full[i] = t
        flat, tree = tree_flatten(fn(*tree_unflatten(full, spec)))
        tensor = [isinstance(leaf, torch.Tensor) for leaf in flat]
        out_leaves[:], out_spec[:] = [(t, None if t else leaf) for t, leaf in zip(tensor, flat)], [tree]
        return tuple(leaf for t, leaf in zip(tensor, flat) if t)

    mapped = iter(vmap(flat_fn, randomness="different")(*(leaves[i] for i in at)))
    full_out = [next(mapped) if tensor else leaf for tensor, leaf in out_leaves]
    return tree_unflatten(full_out, out_spec[0])


def _first_line(err: BaseException, limit: int = 240) -> str:
    """The first line of an error message, cut to its first sentence when long (vmap's run on)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if len(line) > limit and ". " in line[:limit]:
        line = line[: line.index(". ", 0, limit) + 1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _vmap_failure(err: BaseException) -> bool:
    """An error of running the workload under vmap, as opposed to one of innerloop's own (checks, config)."""
    return isinstance(err, RuntimeError) and not isinstance(err, InnerloopError)


class StrategyChooser:
    """Resolves ``strategy="auto"`` by timing vmap against the loop on the real workload.

    The first batch of each shape (training or evaluation) is run with both strategies on its first
    ``sample_tasks`` tasks — forward and, when gradients are on, backward to the given
    parameters — and the faster is remembered. The global RNG is forked so the
    measurement does not change what a run samples afterwards. ``choices`` can be saved
    and restored so a resumed run keeps the strategy it had.

    A model or loss ``vmap`` cannot run (``.item()``, data-dependent control flow, ...) makes
    ``auto`` use the loop, with one warning (logger ``innerloop.core.engine``) naming the reason
    (``fallback``); with ``strategy="vmap"`` it is a :class:`~innerloop.errors.ConfigError` naming
    ``strategy="loop"``.

    Args:
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``.
        sample_tasks: how many tasks of the first batch ``auto`` times each strategy on.
    """

    def __init__(self, strategy: str = "auto", sample_tasks: int = 8) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.sample_tasks = sample_tasks
        self.choices: dict[str, str] = {}
        self.fallback: str | None = None  # why auto gave up vmap (the first line of vmap's error), once it did

    def map(
        self,
        fn: TaskFn,
        batch: TaskBatch,
        run: Callable[[str, TaskBatch], torch.Tensor],
        params: Sequence[torch.Tensor],
    ):
        """``map_tasks(fn, batch, strategy)`` with the resolved strategy; a vmap failure falls back to the loop
        under ``auto`` and is a one-line ``ConfigError`` under ``strategy="vmap"``."""
        strategy = self.resolve(run, batch, params)
        if strategy != "vmap" or torch.compiler.is_compiling():
            return map_tasks(fn, batch, strategy)
        try:
            return map_tasks(fn, batch, "vmap")
        except RuntimeError as err:
            if not _vmap_failure(err):
                raise
            failure = err
        if self.strategy == "vmap":
            map_tasks(fn, batch[:1], "loop")  # an error of the workload itself (not vmap's) is raised as it is
            raise ConfigError(
                f'strategy="vmap" cannot run this model or loss under torch.func.vmap ({_first_line(failure)}); '
                'use strategy="loop" (config: algorithm.strategy=loop), or "auto", which then uses the loop'
            ) from failure
        out = map_tasks(fn, batch, "loop")  # the loop fails too: the workload's own error, no warning
        self._give_up_vmap(failure)
        self.choices[self._key(batch)] = "loop"
        return out

    def _give_up_vmap(self, err: BaseException) -> None:
        if self.fallback is None:
            self.fallback = _first_line(err)
            logger.warning(
                'strategy="auto": vmap cannot run this model or loss (%s); tasks run in a per-task loop instead. '
                'Set strategy="loop" to skip the attempt.',
                self.fallback,
            )

    def _key(self, batch: TaskBatch) -> str:
        if torch.is_grad_enabled():
            return self.training_key(batch)
        return f"{self._shapes(batch)}|tasks={batch.num_tasks}|eval"

    @staticmethod
    def _shapes(batch: TaskBatch) -> str:
        def per_task(tree):
            return tree_map(lambda t: tuple(t.shape[1:]), tree)

        return f"{per_task(batch.support_x)}|{per_task(batch.query_x)}"

    @classmethod
    def training_key(cls, batch: TaskBatch) -> str:
        """The key of training batches like ``batch`` in ``choices``: their per-task shapes."""
        return f"{cls._shapes(batch)}|train"

    def known(self, batch: TaskBatch) -> str | None:
        """The strategy training batches like ``batch`` use, if already decided (None before the first one)."""
        return self.strategy if self.strategy != "auto" else self.choices.get(self.training_key(batch))

    def resolve(
        self, run: Callable[[str, TaskBatch], torch.Tensor], batch: TaskBatch, params: Sequence[torch.Tensor]
    ) -> str:
        """``strategy``, or under ``auto`` the measured choice for batches like ``batch`` (measured on the first)."""
        if self.strategy != "auto":
            return self.strategy
        training = torch.is_grad_enabled()
        if batch.num_tasks == 1 and not training:
            return "loop"  # nothing to batch
        # A training workload is keyed by its per-task shapes alone: the ranks of a distributed
        # run hold shards of different sizes and adopt rank 0's choice for all of them.
        key = self._key(batch)
        if key not in self.choices:
            self.choices[key] = self._measure(run, batch[: self.sample_tasks], params)
        return self.choices[key]

    def _measure(self, run, sample: TaskBatch, params) -> str:
        timings = {}
        trainable = [p for p in params if p.requires_grad] if torch.is_grad_enabled() else []
        failure = None
        with torch.random.fork_rng(devices=[]):
            for strategy in ("vmap", "loop"):
                try:
                    for _ in range(2):  # a warm-up, then the measurement
                        start = time.perf_counter()
                        loss = run(strategy, sample)
                        if trainable:
                            torch.autograd.grad(loss, trainable, allow_unused=True)
                        if loss.is_cuda:
                            torch.cuda.synchronize()
                except RuntimeError as err:
                    if strategy != "vmap" or not _vmap_failure(err):
                        raise  # the loop fails too: the workload's own error
                    failure = err
                    continue
                timings[strategy] = time.perf_counter() - start
        if failure is not None:
            self._give_up_vmap(failure)
        return min(timings, key=timings.__getitem__)
