"""The MAML paper's meta-RL evaluation protocol.

On fixed held-out tasks (seeded: the same tasks every time), sample episodes with the
meta-learned policy, take a policy-gradient step, sample again, and so on: the return
after 0, 1, 2, ... adaptation steps, averaged over episodes, then summarised over tasks
(mean and standard error). Finn et al. (2017) use 40 tasks, 20-40 episodes per step and
step size 0.1 for the first step, 0.05 for later ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch

from ..stats import summarize
from .learner import Adaptation

# Finn et al. (2017): MAML's average return after 0-3 steps on 2D navigation (Figure 5) and
# before / after one step on HalfCheetah direction (as quoted by the meta-RL issue, 500+ iterations).
PAPER = {"nav2d": {0: -40.41, 1: -11.68, 2: -3.33, 3: -3.23}, "halfcheetah-dir": {0: -50.69, 1: 293.19}}


Returns = dict[int, dict[str, dict[str, float]]]  # {step: {"return": summary over tasks}}


@overload
def evaluate_adaptation(
    learner,
    tasks: torch.Tensor,
    steps: Sequence[int],
    episodes: int,
    lrs: Sequence[float],
    seed: int,
    batch_size: int = ...,
    keep: Literal[False] = ...,
) -> Returns: ...
@overload
def evaluate_adaptation(
    learner,
    tasks: torch.Tensor,
    steps: Sequence[int],
    episodes: int,
    lrs: Sequence[float],
    seed: int,
    batch_size: int = ...,
    *,
    keep: Literal[True],
) -> tuple[Returns, list[Adaptation]]: ...
@overload
def evaluate_adaptation(
    learner,
    tasks: torch.Tensor,
    steps: Sequence[int],
    episodes: int,
    lrs: Sequence[float],
    seed: int,
    batch_size: int = ...,
    keep: bool = ...,
) -> Returns | tuple[Returns, list[Adaptation]]: ...
def evaluate_adaptation(
    learner,
    tasks: torch.Tensor,
    steps: Sequence[int],
    episodes: int,
    lrs: Sequence[float],
    seed: int,
    batch_size: int = 40,
    keep: bool = False,
) -> Returns | tuple[Returns, list[Adaptation]]:
    """Returns after each number of ``steps`` on ``tasks``: ``{step: summary over tasks}``.

    Tasks are processed ``batch_size`` at a time (each with its own random stream, so the
    results do not depend on ``batch_size``); ``keep=True`` also returns the
    :class:`~innerloop.rl.learner.Adaptation` of each batch (for figures).
    """
    rule = learner.evaluation_rule(lrs)
    per_task: dict[int, list[torch.Tensor]] = {s: [] for s in steps}
    draws: list[Adaptation] = []
    was_training = learner.training
    learner.eval()
    try:
        for start in range(0, len(tasks), batch_size):
            chunk = range(start, min(start + batch_size, len(tasks)))
            returns, draw = learner.returns_after(tasks[chunk.start : chunk.stop], steps, episodes, rule, seed, chunk)
            for s in steps:
                per_task[s].append(returns[s]["return"])
            if keep:
                draws.append(draw)
    finally:
        learner.train(was_training)
    results = {s: {"return": summarize(torch.cat(v))} for s, v in per_task.items()}
    return (results, draws) if keep else results


def format_returns(results: dict, family: str) -> str:
    """Aligned table: step, mean return ± standard error, the paper's figure when there is one."""
    paper = PAPER.get(family, {})
    lines = [
        f"{'steps':>5}  {'return':>10}  {'std. error':>10}  {'tasks':>5}"
        + ("  paper (Finn et al. 2017)" if paper else "")
    ]
    for step, metrics in sorted(results.items()):
        s = metrics["return"]
        extra = f"  {paper[step]:>10.2f}" if step in paper else ""
        lines.append(f"{step:>5}  {s['mean']:>10.2f}  {s['stderr']:>10.2f}  {s['n']:>5}{extra}")
    return "\n".join(lines)
