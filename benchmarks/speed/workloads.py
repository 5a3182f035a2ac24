"""The workloads: a model, one meta-batch and the implementations of its meta-training step."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from innerloop.algorithms import ANIL, FOMAML, MAML, ProtoNets, Reptile
from innerloop.models import MLP, Conv4
from innerloop.tasks import TaskBatch
from innerloop.tasks.sinusoid import SinusoidTasks

from . import impls as peers
from .impls import (
    AUTO,
    REFERENCE,
    HigherANIL,
    HigherMAML,
    HigherReptile,
    Impl,
    InnerloopImpl,
    Learn2LearnMAML,
    NaiveANIL,
    PlainANIL,
    PlainMAML,
    PlainProtoNets,
    PlainReptile,
)

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
    if peers.higher is None:
        skipped["higher"] = peers.HIGHER_MISSING
    else:
        impls["higher"] = factory


def _with_learn2learn(impls: dict[str, Factory], skipped: dict[str, str], factory: Factory) -> None:
    if peers.L2L_MAML is None:
        skipped["learn2learn"] = peers.L2L_MISSING
    else:
        impls["learn2learn"] = factory


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
    pool: str = "max",
) -> Workload:
    """MAML / FOMAML; ``pool="stride"``: MAML's own Omniglot network (stride-2 convolutions, no pooling)."""
    if domain == "sine":
        torch.manual_seed(0)
        model, lr, tasks, queries = MLP(1, (40, 40), 1), 0.01, tasks or 25, queries or 10
        batch, peak = sine_batch(tasks, queries=queries), "matmul"
        what = f"MLP 1-40-40-1, {tasks} tasks, 10 support / {queries} query"
    else:
        torch.manual_seed(0)
        model, lr, tasks, queries = (
            Conv4(1, 64, out_features=5, pool=pool),
            0.4,
            tasks or (2 if quick else 32),
            queries or (5 if quick else 15),
        )
        batch, peak = omniglot_batch(tasks, queries=queries), "conv"
        net = "Conv-4-64 stride-2 (MAML's Omniglot network)" if pool == "stride" else "Conv-4-64"
        what = f"{net}, 5-way 1-shot {queries} queries, {tasks} tasks (random 28x28)"
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
    if domain != "sine":
        _with_learn2learn(impls, skipped, lambda m: Learn2LearnMAML(m, lr, steps, first_order))
    impls[REFERENCE] = lambda m: PlainMAML(m, lr, steps, first_order)
    name = f"{domain}{'-stride' * (pool == 'stride')}-maml-{steps}step-{'1st' if first_order else '2nd'}"
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
    **{
        f"omniglot-stride-maml-{k}step-2nd": (lambda k=k, **kw: build_maml("omniglot", k, False, pool="stride", **kw))
        for k in (1, 5)
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


def select(patterns: list[str] | None, quick: bool) -> list[str]:
    if not patterns:
        return QUICK if quick else list(WORKLOADS)
    chosen = [n for n in WORKLOADS if any(fnmatch.fnmatch(n, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in WORKLOADS)]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return chosen
