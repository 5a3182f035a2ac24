"""A learned optimizer against tuned hand-designed ones, the comparison of learned_optimization (Metz et al. 2022,
section 4): ``torch.optim.Adam`` and ``torch.optim.SGD(momentum=0.9)``, each at the rate of a log grid with the
lowest mean loss after N steps on meta-training tasks, then every optimizer on the same held-out tasks.

Curves are training losses ``l(theta_t; b_t)`` for t = 0 .. N (t = N: the loss after N steps, on batch N).
Adam and SGD are elementwise, so one ``torch.optim`` optimizer over the task-stacked parameters (the loss summed
over tasks) makes exactly the steps of one optimizer per task; the tasks run batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.func import vmap

from ..core.params import Params
from ..core.rules import UpdateRule
from ..stats import summarize
from .families import TaskFamily
from .inner import InnerStates, Unroll
from .trees import index_tree, map_particles

MakeOptimizer = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]
BASELINES: dict[str, MakeOptimizer] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd-momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


def learned_curves(
    family: TaskFamily, rule: UpdateRule, meta: Params, seeds: Sequence[int], steps: int
) -> torch.Tensor:
    """``(tasks, steps + 1)`` training losses of fresh runs of tasks ``seeds`` trained by ``rule`` with ``meta``."""
    unroll = Unroll(family, rule, steps, steps, "final")
    with torch.no_grad():
        final, losses, _, _ = unroll.run(meta, fresh_states(unroll, seeds))
    return torch.cat([losses, final.unsqueeze(1)], 1).detach().double().cpu()


def optim_curves(family: TaskFamily, seeds: Sequence[int], steps: int, make: MakeOptimizer, lr: float) -> torch.Tensor:
    """``(tasks, steps + 1)`` training losses of the tasks ``seeds`` trained by ``make(params, lr)`` (module header)."""
    params = {k: v.clone().requires_grad_(True) for k, v in family.inits(list(seeds)).items()}
    optimizer = make(list(params.values()), lr)
    loss = vmap(family.loss)
    out = []
    for t in range(steps + 1):
        batch = index_tree(family.batches(list(seeds), t, 1, "train"), (slice(None), 0))
        losses = loss(params, batch)
        out.append(losses.detach().double().cpu())
        if t < steps:
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()
    return torch.stack(out, 1)


def tune(
    family: TaskFamily, seeds: Sequence[int], steps: int, make: MakeOptimizer, lrs: Sequence[float]
) -> tuple[float, list[float]]:
    """The rate of ``lrs`` with the lowest mean loss after ``steps`` steps on tasks ``seeds`` (a non-finite loss on
    any task scores inf; ties: the first), and every rate's score."""
    scores = []
    for lr in lrs:
        final = optim_curves(family, seeds, steps, make, lr)[:, -1]
        scores.append(float(final.mean()) if bool(torch.isfinite(final).all()) else math.inf)
    best = min(range(len(lrs)), key=scores.__getitem__)
    return float(lrs[best]), scores


def summary(curves: torch.Tensor) -> dict:
    """Mean and 95% CI over tasks of the final loss, and the mean curve with its CI band."""
    final = summarize(curves[:, -1])
    per_step = [summarize(curves[:, t]) for t in range(curves.shape[1])]
    return {
        "final": final,
        "curve": [s["mean"] for s in per_step],
        "ci95": [s["ci95"] for s in per_step],
        "per_task": curves[:, -1].tolist(),
    }


def paired(learned: torch.Tensor, other: torch.Tensor) -> dict:
    """The per-task difference of final losses (learned - other): mean, 95% CI, and on how many tasks learned is lower."""
    s = summarize(learned[:, -1] - other[:, -1])
    return {**s, "wins": int((learned[:, -1] < other[:, -1]).sum()), "tasks": int(learned.shape[0])}


def fresh_states(unroll: Unroll, seeds: Sequence[int]) -> InnerStates:
    """Runs at step 0 on the tasks ``seeds`` (one run each)."""
    params = unroll.family.inits(list(seeds))
    first = {n: p[0] for n, p in params.items()}
    state = (
        None if unroll.rule.init_state(first) is None else map_particles(unroll.rule.init_state, (params,), 0, "vmap")
    )
    return InnerStates(params, state, 0, list(seeds), 0, 0, {})


__all__ = ["BASELINES", "fresh_states", "learned_curves", "optim_curves", "paired", "summary", "tune"]
