"""Meta-training speed, side by side: innerloop against `higher` and a plain per-task loop.

    python benchmarks/speed.py                      # every workload, full size
    python benchmarks/speed.py --quick              # a subset at reduced size, under a minute on CPU-2
    python benchmarks/speed.py --device cuda        # the same suite on a GPU, unchanged
    python benchmarks/speed.py --markdown           # a table for benchmarks/RESULTS.md
    python benchmarks/speed.py --json runs/speed.json --workloads 'sine-*'

What one measurement is: one meta-training step, i.e. the forward pass of the meta-loss
over a whole meta-batch and its backward pass into ``.grad`` of the meta-parameters
(for Reptile, which has no meta-loss, the pseudo-gradient ``theta - mean_i theta_i``).
No optimizer step (identical for every implementation). Each workload is built ONCE
(model, meta-batch, hyper-parameters) and every implementation gets a deep copy of the
same initial model and the very same batch.

Implementations ("impls"), all timed in the same process, interleaved round-robin so
that a change in machine load hits them alike:

* ``innerloop vmap`` / ``innerloop loop`` / ``innerloop auto``: innerloop's learner
  (``MAML``, ``FOMAML``, ``ANIL``, ``Reptile``, ``ProtoNets``) with each task strategy;
  ``auto`` times both on the first batch (during warm-up) and keeps the faster one.
* ``higher``: the ``higher`` library's MAML pattern, one
  ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False)`` per task, query loss
  backward per task (its MAML example). First order (FOMAML, Reptile):
  ``track_higher_grads=False`` and the gradient at the adapted weights is added to the
  initial weights' ``.grad``. ANIL: the body runs once per set, the context wraps the head.
* ``plain loop``: a per-task Python loop of ``torch.func.functional_call`` +
  ``torch.autograd.grad(create_graph=not first_order)``, query loss backward per task
  (the learn2learn pattern). ProtoNets: the reference implementation's arithmetic.
* ``naive ANIL`` (ANIL only): the plain loop with only the head adapted, re-running the
  frozen body on the support set at every inner step.

Before timing, every workload checks that all impls give the same meta-gradient: the
first ``--check-tasks`` tasks of the batch, model and data in float64, each impl against
the plain loop; a relative error above ``--rtol`` stops the suite (exit status 2).

Measured per impl:

* time: median over ``--repeats`` timed steps (after ``--warmup`` untimed ones) -> tasks/s;
* peak memory: on CPU the growth of the process's resident set during one untimed step,
  ``VmHWM - VmRSS`` from ``/proc/self/status``, after ``gc.collect()``, glibc
  ``malloc_trim(0)`` (so memory freed earlier is returned and must be taken again) and a
  reset of the high-water mark (``echo 5 > /proc/self/clear_refs``). Where the reset is not
  possible it falls back to the growth of ``getrusage().ru_maxrss``, a lower bound (marked).
  On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step;
* FLOPs per task: ``torch.utils.flop_counter.FlopCounterMode`` over that same step (its
  overhead is Python time, not memory), divided
  by the number of tasks. It counts matrix products and convolutions only (forward and
  backward), the work that matters here; elementwise ops are not counted. Each impl is
  counted separately: vmap executes differently batched kernels (it counts more on conv
  nets) and naive ANIL does redundant work;
* achieved GFLOP/s = the impl's FLOPs / its median time, and as a fraction of this
  machine's peak measured in the same run (best of the start and end of the run, fp32,
  the threads this process uses): a large square matrix product for the MLP workloads, a
  64->64 3x3 convolution in channels_last on 28x28 maps for the conv workloads;
* speed-up of innerloop: the impl's median time / the median of ``innerloop auto``
  (and of the fastest innerloop strategy), so > 1 means innerloop is faster.

Workloads (sizes of the full run; ``--quick`` runs the ones marked Q at the sizes given):

* ``sine-maml-{1,5}step-{2nd,1st}``: MLP 1-40-40-1, 25 tasks, 10 support / 10 query points,
  inner SGD 0.01 (Finn et al. 2017, 5.1). Q: the 1-step ones, full size. Besides the
  strategies, ``innerloop vmap+compile`` (``compile=True``; not in --quick, compiling takes
  a minute) and, second order, ``innerloop loop+checkpoint`` (``checkpoint_steps=True``).
* ``omniglot-maml-{1,5}step-{2nd,1st}``: Conv-4-64 (batch norm, transductive), 5-way 1-shot
  15 queries per class, 28x28, 32 tasks, inner SGD 0.4 (Finn et al. 2017, 5.2).
  Q: 1 step, 2nd order, 2 tasks of 5 queries per class. First order, also
  ``innerloop loop+compile`` (not in --quick).
* ``omniglot-anil-5step-2nd``: the same Conv-4-64 classifier; only the linear head adapts
  (5 steps of 0.4), the body is shared. Q: 2 tasks of 5 queries per class.
* ``sine-reptile-5step`` / ``omniglot-reptile-5step``: Reptile, 5 inner SGD steps on
  support + query points (0.01 / 0.1). Q: the sinusoid one. (innerloop's
  ``Reptile.meta_backward`` also evaluates the query loss at theta_i for its metrics: an
  extra forward pass the peers do not make, visible in its FLOPs.)
* ``omniglot-protonets`` (reported as ``omniglot-protonets-60w5s``): ProtoNets training
  episode, 60-way 5-shot 5 queries per class, Conv-4-64 embedding, one episode per
  meta-batch (the paper's setting), also with the meta-loss under ``torch.compile``
  (``innerloop +compile``, not in --quick). Q: 10-way 5-shot 5 queries.

The Omniglot-shaped workloads use random N(0, 1) 28x28 tensors (and correct labels), not
real characters: the time of a step does not depend on pixel values, and this keeps the
suite free of data downloads. ``--quick`` also takes 1 warm-up + 3 timed steps instead of
2 + 10, checks gradients on 2 tasks (MLP) or 1 task (conv nets) instead of 4, counts FLOPs
on the first 4 tasks of the batch in a separate step (FLOPs per task do not depend on the
number of tasks; counting costs Python time per op) and measures the peak with smaller
operands. It guards against slow-downs; its Omniglot figures are not the full-size ones.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import fnmatch
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from innerloop.algorithms import ANIL, FOMAML, MAML, ProtoNets, Reptile
from innerloop.models import MLP, Conv4
from innerloop.tasks import TaskBatch
from innerloop.tasks.sinusoid import SinusoidTasks

try:
    import higher
except ImportError:  # the higher column is skipped with a note
    higher = None
    HIGHER_MISSING = "higher is not installed (pip install higher; it is in innerloop's dev extra)"
else:
    HIGHER_MISSING = None

REFERENCE = "plain loop"
AUTO = "innerloop auto"


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task loss of every workload: cross-entropy for labels, MSE for regression targets."""
    return F.mse_loss(output, target) if target.is_floating_point() else F.cross_entropy(output, target)


# ---------------------------------------------------------------------------------------------
# Implementations: each wraps its own copy of the model and does one meta-training step.
# ---------------------------------------------------------------------------------------------


class Impl:
    """One implementation of a workload's meta-training step on its own model copy."""

    family = "peer"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def zero_grad(self) -> None:
        for p in self.meta_parameters().values():
            p.grad = None

    def step(self, batch: TaskBatch) -> None:
        """Forward and backward of the meta-loss: accumulates its gradient into ``.grad``."""
        raise NotImplementedError

    def info(self) -> dict:
        return {}


def _accumulate(param: torch.Tensor, grad: torch.Tensor | None) -> None:
    if grad is not None:
        param.grad = grad.detach().clone() if param.grad is None else param.grad + grad


def _tasks(batch: TaskBatch):
    for i in range(batch.num_tasks):
        yield batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]


class InnerloopImpl(Impl):
    """innerloop's learner; ``meta_backward`` is the one call a trainer makes."""

    family = "innerloop"

    def __init__(self, learner) -> None:
        super().__init__(learner.model)
        self.learner = learner

    def meta_parameters(self):
        return dict(self.learner.model.named_parameters())

    def step(self, batch):
        self.learner.meta_backward(batch)

    def info(self):
        return {"chosen": dict(self.learner.chooser.choices)} if self.learner.chooser.strategy == "auto" else {}


class PlainMAML(Impl):
    """Per-task loop, ``functional_call`` + ``autograd.grad(create_graph=not first_order)``."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        super().__init__(model)
        self.lr, self.steps, self.first_order = lr, steps, first_order

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for sx, sy, qx, qy in _tasks(batch):
            fast = theta
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, fast, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.model, fast, (qx,)), qy) / batch.num_tasks).backward()


class HigherMAML(Impl):
    """higher's pattern: ``innerloop_ctx(model, SGD, copy_initial_weights=False)`` per task."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        super().__init__(model)
        self.steps, self.first_order = steps, first_order
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, batch):
        params = list(self.model.parameters())
        for sx, sy, qx, qy in _tasks(batch):
            with higher.innerloop_ctx(
                self.model, self.inner_opt, copy_initial_weights=False, track_higher_grads=not self.first_order
            ) as (fmodel, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fmodel(sx), sy))
                query_loss = default_loss(fmodel(qx), qy) / batch.num_tasks
                if not self.first_order or self.steps == 0:
                    query_loss.backward()
                else:  # the adapted weights are detached leaves: their gradient is FOMAML's
                    fast = list(fmodel.parameters())
                    for p, g in zip(params, torch.autograd.grad(query_loss, fast, allow_unused=True)):
                        _accumulate(p, g)


class _Split:
    """Body (all but the last module) and head (the last) of a Sequential model."""

    def __init__(self, model: nn.Sequential) -> None:
        self.body = nn.Sequential(*list(model)[:-1])
        self.head = model[-1]
        self.head_prefix = f"{len(model) - 1}."


class _ANILPeer(Impl, _Split):
    """A hand-written ANIL: the model split into body and head, inner SGD on the head."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        Impl.__init__(self, model)
        _Split.__init__(self, model)
        self.lr, self.steps, self.first_order = lr, steps, first_order


class PlainANIL(_ANILPeer):
    """ANIL in the plain loop: the body runs once per set, the head adapts with autograd.grad."""

    def step(self, batch):
        for sx, sy, qx, qy in _tasks(batch):
            zs, zq = self.body(sx), self.body(qx)
            fast = dict(self.head.named_parameters())
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.head, fast, (zs,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.head, fast, (zq,)), qy) / batch.num_tasks).backward()


class NaiveANIL(_ANILPeer):
    """ANIL written as MAML restricted to the head: the frozen body reruns at every inner step."""

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for sx, sy, qx, qy in _tasks(batch):
            fast = {n: p for n, p in theta.items() if n.startswith(self.head_prefix)}
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, {**theta, **fast}, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.model, {**theta, **fast}, (qx,)), qy) / batch.num_tasks).backward()


class HigherANIL(Impl, _Split):
    """higher on the head only; the body's features are computed once per set."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        Impl.__init__(self, model)
        _Split.__init__(self, model)
        self.steps, self.first_order = steps, first_order
        self.inner_opt = torch.optim.SGD(self.head.parameters(), lr=lr)

    def step(self, batch):
        head_params = list(self.head.parameters())
        for sx, sy, qx, qy in _tasks(batch):
            zs, zq = self.body(sx), self.body(qx)
            with higher.innerloop_ctx(
                self.head, self.inner_opt, copy_initial_weights=False, track_higher_grads=not self.first_order
            ) as (fhead, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fhead(zs), sy))
                query_loss = default_loss(fhead(zq), qy) / batch.num_tasks
                if not self.first_order:
                    query_loss.backward()
                else:
                    fast = list(fhead.parameters())
                    grads = torch.autograd.grad(query_loss, fast + list(self.body.parameters()), allow_unused=True)
                    for p, g in zip(head_params + list(self.body.parameters()), grads):
                        _accumulate(p, g)


def _reptile_data(sx, sy, qx, qy):
    return torch.cat([sx, qx]), torch.cat([sy, qy])


class PlainReptile(Impl):
    """Per-task SGD with autograd.grad (no graph); ``.grad += (theta - theta_i) / T``."""

    def __init__(self, model, lr: float, steps: int) -> None:
        super().__init__(model)
        self.lr, self.steps = lr, steps

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for task in _tasks(batch):
            x, y = _reptile_data(*task)
            fast = {n: p.detach().requires_grad_() for n, p in theta.items()}
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, fast, (x,)), y)
                grads = torch.autograd.grad(loss, list(fast.values()))
                fast = {n: (p - self.lr * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
            with torch.no_grad():
                for n, p in theta.items():
                    _accumulate(p, (p - fast[n]) / batch.num_tasks)


class HigherReptile(Impl):
    """higher with ``track_higher_grads=False`` (Reptile is first order); theta_i read from the fmodel."""

    def __init__(self, model, lr: float, steps: int) -> None:
        super().__init__(model)
        self.steps = steps
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, batch):
        params = list(self.model.parameters())
        for task in _tasks(batch):
            x, y = _reptile_data(*task)
            with higher.innerloop_ctx(
                self.model, self.inner_opt, copy_initial_weights=False, track_higher_grads=False
            ) as (fmodel, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fmodel(x), y))
                with torch.no_grad():
                    for p, q in zip(params, fmodel.parameters()):
                        _accumulate(p, (p - q) / batch.num_tasks)


class PlainProtoNets(Impl):
    """The reference implementation's arithmetic (Snell et al.'s code): support and query
    embedded in one pass, prototypes as class means of label-sorted supports, squared
    Euclidean distances through an (n, m, d) difference tensor."""

    def __init__(self, model, ways: int, shots: int) -> None:
        super().__init__(model)
        self.ways, self.shots = ways, shots

    def step(self, batch):
        for sx, _sy, qx, qy in _tasks(batch):
            z = self.model(torch.cat([sx, qx])).flatten(1)
            zs, zq = z[: sx.shape[0]], z[sx.shape[0] :]
            prototypes = zs.view(self.ways, self.shots, -1).mean(1)  # supports sorted by class
            n, m = zq.shape[0], prototypes.shape[0]
            dists = (zq.unsqueeze(1).expand(n, m, -1) - prototypes.unsqueeze(0).expand(n, m, -1)).pow(2).sum(2)
            (F.cross_entropy(-dists, qy) / batch.num_tasks).backward()


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

Factory = Callable[[nn.Module], Impl]


@dataclass
class Workload:
    name: str
    description: str
    model: nn.Module  # pristine; every impl gets a deep copy
    batch: TaskBatch
    peak_kind: str  # "matmul" or "conv": which measured peak the achieved GFLOP/s is compared with
    impls: dict[str, Factory]
    skipped: dict[str, str] = field(default_factory=dict)  # impl -> why it is not run
    reference: str = REFERENCE
    same_flops_as: dict[str, str] = field(default_factory=dict)  # impl -> the impl whose FLOP count it shares

    def to(self, device, dtype=None, channels_last: bool = False) -> Workload:
        """A copy on ``device`` (and ``dtype``), the impls unchanged."""
        model = copy.deepcopy(self.model).to(device)
        batch = self.batch.to(device=device)
        if dtype is not None:
            model, batch = model.to(dtype), batch.to(dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

            # (T, N, C, H, W) stored as (T, N, H, W, C): every task's (N, C, H, W) slice is channels_last.
            def cl(x: torch.Tensor) -> torch.Tensor:
                return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if x.dim() == 5 else x

            batch = TaskBatch(cl(batch.support_x), batch.support_y, cl(batch.query_x), batch.query_y)
        return Workload(
            self.name,
            self.description,
            model,
            batch,
            self.peak_kind,
            self.impls,
            dict(self.skipped),
            self.reference,
            dict(self.same_flops_as),
        )


def _innerloop_strategies(make_learner, strategies=("vmap", "loop", "auto")) -> dict[str, Factory]:
    return {f"innerloop {s}": (lambda m, s=s: InnerloopImpl(make_learner(m, s))) for s in strategies}


def _with_higher(impls: dict[str, Factory], skipped: dict[str, str], factory: Factory) -> None:
    if higher is None:
        skipped["higher"] = HIGHER_MISSING
    else:
        impls["higher"] = factory


def sine_batch(tasks: int, shots: int = 10, queries: int = 10) -> TaskBatch:
    return SinusoidTasks(shots=shots, queries=queries, seed=0).sample(0, range(tasks))


def omniglot_batch(
    tasks: int, ways: int = 5, shots: int = 1, queries: int = 15, size: int = 28, seed: int = 0
) -> TaskBatch:
    """Random N(0, 1) images of Omniglot's shape; labels sorted by class (0..ways-1)."""
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
        torch.randn(tasks, ways * queries, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1),
    )


def build_maml(
    domain: str,
    steps: int,
    first_order: bool,
    tasks: int | None = None,
    quick: bool = False,
    queries: int | None = None,
) -> Workload:
    if domain == "sine":
        torch.manual_seed(0)
        model, lr, tasks, queries = MLP(1, (40, 40), 1), 0.01, tasks or 25, queries or 10
        batch, peak = sine_batch(tasks, queries=queries), "matmul"
        what = f"MLP 1-40-40-1, {tasks} tasks, 10 support / {queries} query"
    else:
        torch.manual_seed(0)
        model, lr, tasks, queries = (
            Conv4(1, 64, out_features=5),
            0.4,
            tasks or (2 if quick else 32),
            queries or (5 if quick else 15),
        )
        batch, peak = omniglot_batch(tasks, queries=queries), "conv"
        what = f"Conv-4-64, 5-way 1-shot {queries} queries, {tasks} tasks (random 28x28)"
    order = "first" if first_order else "second"
    Learner = FOMAML if first_order else MAML
    impls = _innerloop_strategies(
        lambda m, s: Learner(m, inner_lr=lr, inner_steps=steps, first_order=first_order, strategy=s)
    )
    same_flops_as = {}
    if not quick:  # compiling takes a minute or more: not in --quick
        # sinusoid: torch.compile fuses vmap's many small ops; Omniglot: the first-order loop (the route the issue names)
        compiled = "vmap" if domain == "sine" else "loop" if first_order else None
        if compiled:
            impls[f"innerloop {compiled}+compile"] = lambda m: InnerloopImpl(
                Learner(m, inner_lr=lr, inner_steps=steps, first_order=first_order, strategy=compiled, compile=True)
            )
            same_flops_as[f"innerloop {compiled}+compile"] = f"innerloop {compiled}"
    if not first_order:  # the memory option: inner steps recomputed in the backward pass
        impls["innerloop loop+checkpoint"] = lambda m: InnerloopImpl(
            MAML(m, inner_lr=lr, inner_steps=steps, checkpoint_steps=True)
        )
    skipped: dict[str, str] = {}
    _with_higher(impls, skipped, lambda m: HigherMAML(m, lr, steps, first_order))
    impls[REFERENCE] = lambda m: PlainMAML(m, lr, steps, first_order)
    name = f"{domain}-maml-{steps}step-{'1st' if first_order else '2nd'}"
    return Workload(
        name,
        f"{'FOMAML' if first_order else 'MAML'} {order} order, {steps} inner step{'s' * (steps > 1)} of SGD {lr}; {what}",
        model,
        batch,
        peak,
        impls,
        skipped,
        same_flops_as=same_flops_as,
    )


def build_anil(steps: int = 5, tasks: int | None = None, quick: bool = False, queries: int | None = None) -> Workload:
    torch.manual_seed(0)
    model, lr, tasks, queries = (
        Conv4(1, 64, out_features=5),
        0.4,
        tasks or (2 if quick else 32),
        queries or (5 if quick else 15),
    )
    impls = _innerloop_strategies(lambda m, s: ANIL(m, inner_lr=lr, inner_steps=steps, strategy=s))
    skipped: dict[str, str] = {}
    _with_higher(impls, skipped, lambda m: HigherANIL(m, lr, steps, False))
    impls[REFERENCE] = lambda m: PlainANIL(m, lr, steps, False)
    impls["naive ANIL"] = lambda m: NaiveANIL(m, lr, steps, False)
    return Workload(
        f"omniglot-anil-{steps}step-2nd",
        f"ANIL second order, head adapts ({steps} steps of SGD {lr}), Conv-4-64 body shared; "
        f"5-way 1-shot {queries} queries, {tasks} tasks (random 28x28)",
        model,
        omniglot_batch(tasks, queries=queries),
        "conv",
        impls,
        skipped,
    )


def build_reptile(
    domain: str, steps: int = 5, tasks: int | None = None, quick: bool = False, queries: int | None = None
) -> Workload:
    torch.manual_seed(0)
    if domain == "sine":
        model, lr, tasks, queries = MLP(1, (40, 40), 1), 0.01, tasks or 25, queries or 10
        batch, peak, what = (
            sine_batch(tasks, queries=queries),
            "matmul",
            f"MLP 1-40-40-1, {tasks} tasks of 10 + {queries} points",
        )
    else:
        model, lr, tasks, queries = (
            Conv4(1, 64, out_features=5),
            0.1,
            tasks or (2 if quick else 32),
            queries or (5 if quick else 15),
        )
        batch, peak = omniglot_batch(tasks, queries=queries), "conv"
        what = f"Conv-4-64, 5-way 1-shot {queries} queries, {tasks} tasks (random 28x28)"
    impls = _innerloop_strategies(lambda m, s: Reptile(m, inner_lr=lr, inner_steps=steps, strategy=s))
    skipped: dict[str, str] = {}
    _with_higher(impls, skipped, lambda m: HigherReptile(m, lr, steps))
    impls[REFERENCE] = lambda m: PlainReptile(m, lr, steps)
    return Workload(
        f"{domain}-reptile-{steps}step",
        f"Reptile pseudo-gradient, {steps} SGD steps of {lr} on support + query; {what}",
        model,
        batch,
        peak,
        impls,
        skipped,
    )


def build_protonets(
    ways: int | None = None, shots: int = 5, queries: int | None = None, tasks: int | None = None, quick: bool = False
) -> Workload:
    torch.manual_seed(0)
    queries = queries or 5
    ways = ways or (10 if quick else 60)
    tasks = tasks or 1
    model = Conv4(1, 64)
    # One episode per meta-batch: innerloop embeds it in one pass whatever the strategy.
    impls: dict[str, Factory] = {AUTO: lambda m: InnerloopImpl(ProtoNets(m, strategy="auto"))}
    same_flops_as = {}
    if not quick:  # the meta-loss under torch.compile (as MAML(compile=True) does it); compiling takes a minute
        impls["innerloop +compile"] = lambda m: InnerloopImpl(_compiled(ProtoNets(m, strategy="loop")))
        same_flops_as["innerloop +compile"] = AUTO
    impls[REFERENCE] = lambda m: PlainProtoNets(m, ways, shots)
    skipped = {"higher": "not applicable: ProtoNets has no inner optimisation loop"}
    return Workload(
        f"omniglot-protonets-{ways}w{shots}s",
        f"ProtoNets training episode, {ways}-way {shots}-shot {queries} queries, Conv-4-64 embedding, "
        f"{tasks} episode(s) per step (random 28x28)",
        model,
        omniglot_batch(tasks, ways, shots, queries, seed=1),
        "conv",
        impls,
        skipped,
        same_flops_as=same_flops_as,
    )


def _compiled(learner):
    learner.meta_loss = torch.compile(learner.meta_loss, dynamic=False)
    return learner


WORKLOADS: dict[str, Callable[..., Workload]] = {
    **{
        f"sine-maml-{k}step-{o}": (lambda k=k, o=o, **kw: build_maml("sine", k, o == "1st", **kw))
        for k in (1, 5)
        for o in ("2nd", "1st")
    },
    **{
        f"omniglot-maml-{k}step-{o}": (lambda k=k, o=o, **kw: build_maml("omniglot", k, o == "1st", **kw))
        for k in (1, 5)
        for o in ("2nd", "1st")
    },
    "omniglot-anil-5step-2nd": lambda **kw: build_anil(5, **kw),
    "sine-reptile-5step": lambda **kw: build_reptile("sine", 5, **kw),
    "omniglot-reptile-5step": lambda **kw: build_reptile("omniglot", 5, **kw),
    "omniglot-protonets": lambda **kw: build_protonets(**kw),
}
QUICK = [
    "sine-maml-1step-2nd",
    "sine-maml-1step-1st",
    "sine-reptile-5step",
    "omniglot-maml-1step-2nd",
    "omniglot-anil-5step-2nd",
    "omniglot-protonets",
]


# ---------------------------------------------------------------------------------------------
# Gradient agreement
# ---------------------------------------------------------------------------------------------


class GradientMismatch(RuntimeError):
    """Implementations of one workload disagree on the meta-gradient."""


def meta_gradient(factory: Factory, model: nn.Module, batch: TaskBatch) -> dict[str, torch.Tensor]:
    impl = factory(copy.deepcopy(model))
    impl.step(batch)
    return {
        n: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
        for n, p in impl.meta_parameters().items()
    }


def check_gradients(
    workload: Workload,
    tasks: int = 4,
    rtol: float = 1e-6,
    device="cpu",
    impls: list[str] | None = None,
    channels_last: bool = False,
) -> dict[str, dict[str, float]]:
    """Every impl's meta-gradient against the reference's, float64, on the first ``tasks`` tasks.

    Returns ``{impl: {"rel_err": global, "max_tensor_rel_err": worst tensor}}``; raises
    :class:`GradientMismatch` (naming every failing impl) if any error exceeds ``rtol``.
    """
    small = Workload(
        workload.name,
        workload.description,
        workload.model,
        workload.batch[: min(tasks, workload.batch.num_tasks)],
        workload.peak_kind,
        workload.impls,
    ).to(device, torch.float64, channels_last)
    ref = meta_gradient(workload.impls[workload.reference], small.model, small.batch)
    ref_norm = torch.sqrt(sum(g.pow(2).sum() for g in ref.values())).item()
    if not ref_norm > 0:
        raise GradientMismatch(f"{workload.name}: the reference meta-gradient is zero or not finite ({ref_norm})")
    report, failures = {}, []
    for name in impls or list(workload.impls):
        if name == workload.reference:
            continue
        grads = meta_gradient(workload.impls[name], small.model, small.batch)
        if set(grads) != set(ref):
            failures.append(f"{name}: parameters {sorted(set(grads) ^ set(ref))} differ from the reference's")
            continue
        diff = torch.sqrt(sum((grads[n] - ref[n]).pow(2).sum() for n in ref)).item()
        per_tensor = max(((grads[n] - ref[n]).norm() / max(ref[n].norm().item(), 1e-3 * ref_norm)).item() for n in ref)
        rel = diff / ref_norm
        report[name] = {"rel_err": rel, "max_tensor_rel_err": per_tensor}
        if not (rel <= rtol and per_tensor <= rtol):  # also catches NaN
            failures.append(f"{name}: relative error {rel:.3e} (worst tensor {per_tensor:.3e}) > {rtol:g}")
    if failures:
        raise GradientMismatch(
            f"{workload.name}: meta-gradients disagree with '{workload.reference}' "
            f"(float64, {small.batch.num_tasks} tasks):\n  " + "\n  ".join(failures)
        )
    return report


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory a step adds: CUDA max allocated, or CPU resident-set growth (see module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated - allocated before"
        else:
            _malloc_trim()
            if _reset_peak_rss() and _proc_status("VmHWM") is not None:
                self.before = _proc_status("VmRSS")
                self.method = "rss: VmHWM - VmRSS before (after malloc_trim, HWM reset)"
            else:
                self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self.method = "ru_maxrss growth (lower bound: no HWM reset)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("rss"):
            peak = _proc_status("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(peak - self.before, 0)
        return False


def _best_rate(fn, flops: float, device, min_time: float, min_reps: int = 3) -> float:
    fn()
    _sync(device)
    best, reps, start = float("inf"), 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return flops / best / 1e9


def measure_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """This machine's fp32 GFLOP/s on a large matrix product and a 64->64 3x3 conv (channels_last)."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    matmul = _best_rate(lambda: a @ b, 2 * n**3, device, 0.3 if quick else 2.0)
    batch = 16 if quick else 64
    x = torch.randn(batch, 64, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    conv = _best_rate(
        lambda: F.conv2d(x, w, padding=1), 2 * batch * 64 * 64 * 9 * 28 * 28, device, 0.3 if quick else 2.0
    )
    return {
        "matmul": matmul,
        "conv": conv,
        "matmul_shape": f"{n}x{n} @ {n}x{n}",
        "conv_shape": f"{batch}x64x28x28 * 64x64x3x3, padding 1, channels_last",
    }


def run_workload(
    workload: Workload,
    device: torch.device,
    warmup: int,
    repeats: int,
    check_tasks: int | None,
    rtol: float,
    channels_last: bool = False,
    log=print,
    flop_tasks: int | None = None,
) -> dict:
    if check_tasks is None:  # --quick: 2 tasks of the MLP workloads, 1 of the (float64-costly) conv ones
        check_tasks = 2 if workload.peak_kind == "matmul" else 1
    log(f"[{workload.name}] gradient check (float64, {min(check_tasks, workload.batch.num_tasks)} tasks) ...")
    check = check_gradients(workload, check_tasks, rtol, device, channels_last=channels_last)
    worst = max((v["rel_err"] for v in check.values()), default=0.0)
    log(f"[{workload.name}]   all {len(check) + 1} impls agree (worst relative error {worst:.1e})")
    w = workload.to(device, channels_last=channels_last)
    tasks = w.batch.num_tasks
    impls = {name: factory(copy.deepcopy(w.model)) for name, factory in w.impls.items()}
    rows = {name: {"impl": name, "family": impl.family} for name, impl in impls.items()}
    for name, impl in impls.items():  # warm-up, then one untimed probe of memory
        for _ in range(warmup):
            impl.zero_grad()
            impl.step(w.batch)
            _sync(device)
        impl.zero_grad()
        with MemoryProbe(device) as mem:
            impl.step(w.batch)
        rows[name].update(peak_mem_mib=mem.bytes / 2**20, memory_method=mem.method, times_ms=[])
    for _ in range(repeats):  # round-robin, so that load changes hit every impl alike
        for name, impl in impls.items():
            impl.zero_grad()
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            impl.step(w.batch)
            _sync(device)
            rows[name]["times_ms"].append(1e3 * (time.perf_counter() - t0))
    # FLOPs after the timed steps, and never under torch.compile: once compiled code meets FlopCounterMode's
    # dispatch mode it runs as slow as eager from then on (measured on the sinusoid: 2.8 -> 7.2 ms per step).
    counted = w.batch if not flop_tasks or flop_tasks >= tasks else w.batch[:flop_tasks]
    for name, impl in impls.items():
        if name in w.same_flops_as:
            continue
        if counted is not w.batch:  # FLOPs of the first tasks only (--quick): counting costs Python time per op
            impl.zero_grad()
            impl.step(counted)  # "auto" may key its choice on the number of tasks: resolve it before counting
        impl.zero_grad()
        with FlopCounterMode(display=False) as flops:
            impl.step(counted)
        rows[name].update(
            flop_tasks=counted.num_tasks, gflop_per_task=flops.get_total_flops() / counted.num_tasks / 1e9
        )
    for name, twin in w.same_flops_as.items():
        rows[name].update(flop_tasks=rows[twin]["flop_tasks"], gflop_per_task=rows[twin]["gflop_per_task"])
    for name, impl in impls.items():
        row = rows[name]
        row["median_ms"] = statistics.median(row["times_ms"])
        row["tasks_per_s"] = tasks / row["median_ms"] * 1e3
        row["gflops"] = row["gflop_per_task"] * row["tasks_per_s"]
        row.update(impl.info())
        log(
            f"[{workload.name}]   {name:16s} {row['median_ms']:10.2f} ms  {row['tasks_per_s']:9.1f} tasks/s  "
            f"{row['peak_mem_mib']:8.1f} MiB  {row['gflop_per_task']:.3f} GFLOP/task"
        )
    ours = [r for r in rows.values() if r["family"] == "innerloop"]
    best = min(ours, key=lambda r: r["median_ms"])
    auto = rows.get(AUTO, best)
    for row in rows.values():
        row["speedup_innerloop_auto"] = row["median_ms"] / auto["median_ms"]
        row["speedup_innerloop_best"] = row["median_ms"] / best["median_ms"]
    return {
        "name": w.name,
        "description": w.description,
        "tasks": tasks,
        "peak_kind": w.peak_kind,
        "gradient_check": {
            "reference": w.reference,
            "dtype": "float64",
            "tasks": min(check_tasks, tasks),
            "rtol": rtol,
            "errors": check,
        },
        "innerloop_best": best["impl"],
        "results": list(rows.values()),
        "skipped": w.skipped,
    }


# ---------------------------------------------------------------------------------------------
# Reporting and CLI
# ---------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def select(patterns: list[str] | None, quick: bool) -> list[str]:
    if not patterns:
        return QUICK if quick else list(WORKLOADS)
    chosen = [n for n in WORKLOADS if any(fnmatch.fnmatch(n, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in WORKLOADS)]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return chosen


def markdown(report: dict) -> str:
    m, p = report["machine"], report["peak"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s)"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + (
            f", 1-min load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end"
            if m.get("load_average_start") and m.get("load_average_end")
            else ""
        )
        + "  ",
        f"torch {report['torch']}, device {report['device']}, date {report['date']}"
        + (" (--quick: reduced sizes, see benchmarks/speed.py)" if report["quick"] else "")
        + "  ",
        f"Measured peak (fp32, same run, best of start/end): matmul {p['matmul']:.1f} GFLOP/s ({p['matmul_shape']}), "
        f"conv {p['conv']:.1f} GFLOP/s ({p['conv_shape']})",
        "",
        "| workload | implementation | ms / step (median) | tasks/s | innerloop auto is x faster | peak memory (MiB) "
        "| GFLOP / task | GFLOP/s | % of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in report["workloads"]:
        peak = p[w["peak_kind"]]
        for r in w["results"]:
            impl = r["impl"] + (f" (chose {', '.join(sorted(set(r['chosen'].values())))})" if r.get("chosen") else "")
            lines.append(
                f"| `{w['name']}` | {impl} | {r['median_ms']:.2f} | {r['tasks_per_s']:.1f} | "
                f"{r['speedup_innerloop_auto']:.2f} | {r['peak_mem_mib']:.1f} | {r['gflop_per_task']:.3g} | "
                f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f}% ({w['peak_kind']}) |"
            )
        for name, why in w["skipped"].items():
            lines.append(f"| `{w['name']}` | {name} | - | - | - | - | - | - | {why} |")
    lines.append("")
    lines.append(
        "Gradient agreement (float64, against the plain loop; worst relative error over impls): "
        + "; ".join(
            f"`{w['name']}` {max((e['rel_err'] for e in w['gradient_check']['errors'].values()), default=0):.1e}"
            for w in report["workloads"]
        )
    )
    return "\n".join(lines)


def text_table(report: dict) -> str:
    out = [
        f"{'workload':28s} {'implementation':18s} {'ms/step':>10s} {'tasks/s':>9s} {'x auto':>7s} {'MiB':>8s} "
        f"{'GFLOP/task':>10s} {'GFLOP/s':>8s} {'%peak':>6s}"
    ]
    for w in report["workloads"]:
        peak = report["peak"][w["peak_kind"]]
        for r in w["results"]:
            out.append(
                f"{w['name']:28s} {r['impl']:18s} {r['median_ms']:10.2f} {r['tasks_per_s']:9.1f} "
                f"{r['speedup_innerloop_auto']:7.2f} {r['peak_mem_mib']:8.1f} {r['gflop_per_task']:10.3g} "
                f"{r['gflops']:8.1f} {100 * r['gflops'] / peak:5.0f}%"
            )
        for name, why in w["skipped"].items():
            out.append(f"{w['name']:28s} {name:18s} skipped: {why}")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="subset at reduced sizes, fewer repeats (under a minute on CPU-2)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table for benchmarks/RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="write every measurement to PATH")
    parser.add_argument(
        "--workloads", nargs="*", metavar="NAME", help=f"names or glob patterns; all: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--impls",
        nargs="*",
        metavar="NAME",
        help="glob patterns over implementation names (the plain-loop reference always runs)",
    )
    parser.add_argument("--tasks", type=int, help="override the meta-batch size of every workload")
    parser.add_argument(
        "--queries", type=int, help="override the query examples per class (per task for sine) of every workload"
    )
    parser.add_argument("--repeats", type=int, help="timed steps per impl (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per impl before the probe (default 2, quick 1)")
    parser.add_argument(
        "--check-tasks", type=int, help="tasks of the float64 gradient check (default 4; quick: 2 MLP, 1 conv)"
    )
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of the gradient check")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument(
        "--channels-last", action="store_true", help="conv models and images in channels_last, for every impl"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, log=None) -> dict:
    try:
        return _run(args, log)
    finally:
        gc.unfreeze()


def _run(args: argparse.Namespace, log=None) -> dict:
    started = time.perf_counter()
    log = log or (lambda msg: print(f"{time.perf_counter() - started:6.1f}s {msg}", file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    check_tasks = args.check_tasks if args.check_tasks is not None else (None if args.quick else 4)
    names = select(args.workloads, args.quick)
    report = {
        "command": "python benchmarks/speed.py "
        + " ".join(shlex.quote(a) for a in (getattr(args, "argv", None) or [])),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "device": str(device),
        "quick": args.quick,
        "machine": machine_info(device),
        "settings": {
            "warmup": warmup,
            "repeats": repeats,
            "rtol": args.rtol,
            "check_tasks": check_tasks if check_tasks is not None else "2 (MLP) / 1 (conv)",
            "flop_tasks": 4 if args.quick else "all",
            "channels_last": args.channels_last,
            "higher": getattr(higher, "__version__", None) if higher else HIGHER_MISSING,
        },
        "workloads": [],
    }
    gc.collect()
    gc.freeze()  # torch's many long-lived objects out of the collector's way: gc.collect() below takes ms, not 0.2 s
    log(f"measuring this machine's peak ({device}) ...")
    start_peak = measure_peaks(device, args.quick)
    for name in names:
        t0 = time.perf_counter()
        workload = WORKLOADS[name](tasks=args.tasks, quick=args.quick, queries=args.queries)
        if args.impls:
            keep = {
                n for n in workload.impls if n == workload.reference or any(fnmatch.fnmatch(n, p) for p in args.impls)
            }
            keep |= {
                workload.same_flops_as[n] for n in keep if n in workload.same_flops_as
            }  # its FLOPs come from there
            workload.impls = {n: f for n, f in workload.impls.items() if n in keep}
        report["workloads"].append(
            run_workload(
                workload,
                device,
                warmup,
                repeats,
                check_tasks,
                args.rtol,
                args.channels_last,
                log,
                flop_tasks=4 if args.quick else None,
            )
        )
        report["workloads"][-1]["wall_s"] = time.perf_counter() - t0
    end_peak = measure_peaks(device, args.quick)
    report["peak"] = {
        **start_peak,
        "matmul": max(start_peak["matmul"], end_peak["matmul"]),
        "conv": max(start_peak["conv"], end_peak["conv"]),
        "start": {k: start_peak[k] for k in ("matmul", "conv")},
        "end": {k: end_peak[k] for k in ("matmul", "conv")},
    }
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for w in report["workloads"]:
        for r in w["results"]:
            r["fraction_of_peak"] = r["gflops"] / report["peak"][w["peak_kind"]]
    return report


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except GradientMismatch as err:
        print(f"GRADIENT MISMATCH, nothing timed:\n{err}", file=sys.stderr)
        raise SystemExit(2) from err
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report) if args.markdown else text_table(report))
    return report


if __name__ == "__main__":
    main()
