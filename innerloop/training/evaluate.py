"""Evaluation on fresh, seeded tasks: mean and 95% confidence interval over tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..rl.evaluate import evaluate_adaptation
from ..stats import summarize
from ..tasks.seeding import derive_seed
from ..validate import positive_int
from .builders import DTYPES


def evaluate(
    learner,
    source,
    steps: Sequence[int],
    num_tasks: int,
    batch_size: int,
    device=None,
    dtype=None,
    group=None,
    **protocol,
) -> dict:
    """Per-task metrics after each number of adaptation steps, summarised over ``num_tasks`` held-out tasks.

    Any learner: the tasks ``0 .. num_tasks - 1`` of ``source``'s fixed evaluation set are evaluated
    ``batch_size`` at a time by ``learner.evaluate_tasks`` (a supervised learner's query metrics, a
    meta-RL learner's returns; ``protocol`` goes to it). With a process ``group``
    (``training.distributed``) the batches are dealt round-robin to the ranks and gathered back in
    order, so every rank returns the same summary as one process evaluating them all.
    """
    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    batch_size = positive_int("batch_size", batch_size)
    batches = [
        range(i, min(i + batch_size, num_tasks)) for i in range(0, positive_int("num_tasks", num_tasks), batch_size)
    ]
    was_training = learner.training
    learner.eval()
    mine: list[dict[int, dict[str, torch.Tensor]]] = []
    try:
        for ids in batches[rank::world]:
            results = learner.evaluate_tasks(source, ids, num_tasks, steps, device=device, dtype=dtype, **protocol)
            mine.append({int(s): {n: v.detach().float().cpu() for n, v in m.items()} for s, m in results.items()})
    finally:
        learner.train(was_training)
    if group is not None:
        per_rank = group.gather(mine)
        mine = [per_rank[i % world][i // world] for i in range(sum(map(len, per_rank)))]
    per_step: dict[int, dict[str, list[torch.Tensor]]] = {}
    for results in mine:
        for step, metrics in results.items():
            for name, values in metrics.items():
                per_step.setdefault(step, {}).setdefault(name, []).append(values)
    return {
        step: {name: summarize(torch.cat(chunks)) for name, chunks in metrics.items()}
        for step, metrics in sorted(per_step.items())
    }


def evaluate_config(learner, config, build_tasks, shots=None, steps=None, num_tasks=None, group=None) -> dict:
    """The results table of a run's ``eval`` section: {shots: {step: {metric: summary}}}."""

    e = config.eval
    results = {}
    for k in shots or e.shots:
        source = build_tasks(config, "test", shots=k, queries=e.queries)
        results[k] = evaluate(
            learner,
            source,
            steps or e.steps,
            num_tasks or e.tasks,
            e.batch_size,
            torch.device(config.train.device),
            DTYPES[config.train.dtype],
            group,
        )
    return results


def evaluate_rl(learner, config, keep: bool = False, source=None):
    """The protocol as configured: eval.tasks test tasks, eval.steps, rl.eval_episodes, rl.eval_lrs, eval.seed
    (``source``: the test tasks' source, default ``build_tasks(config, "test")``; a shifted one, ``tasks.shift``)."""
    from .builders import build_tasks

    e, r = config.eval, config.rl
    tasks = (source if source is not None else build_tasks(config, "test")).fixed(e.tasks)
    return evaluate_adaptation(
        learner,
        tasks,
        e.steps,
        r.eval_episodes,
        r.eval_lrs,
        derive_seed(e.seed, "rl-test"),
        batch_size=e.batch_size,
        keep=keep,
    )


def format_table(rows: dict[str, dict], metric: str = "loss", title: str = "query MSE") -> str:
    """Rows: {name: {shots: {step: {metric: summary}}}} -> aligned text table (mean ± 95% CI)."""
    first = next(iter(rows.values()))
    columns = [(k, s) for k in first for s in first[k]]
    head1 = f"{title:<14}" + "".join(f"{f'{k}-shot, {s} step' + ('s' if s != 1 else ''):>20}" for k, s in columns)
    lines = [head1]
    for name, table in rows.items():
        cells = []
        for k, s in columns:
            summary = table[k][s][metric]
            scale = 100.0 if metric == "accuracy" else 1.0
            cells.append(f"{summary['mean'] * scale:.3f} ± {summary['ci95'] * scale:.3f}")
        lines.append(f"{name:<14}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)
