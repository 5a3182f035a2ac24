"""Evaluation on fresh, seeded tasks: mean and 95% confidence interval over tasks."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..tasks.batch import TaskBatch
from ..tasks.fixed import fixed_tasks


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and 95% CI half-width (1.96 std / sqrt(n)) over tasks.

    Also the median and how many tasks gave a non-finite value (a diverging adaptation
    makes the mean meaningless; the median and that count still say what happened).
    """
    v = values.double().flatten()
    n = v.numel()
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return {
        "mean": float(v.mean()), "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n,
        "median": float(v.nanmedian()), "nonfinite": int((~torch.isfinite(v)).sum()),
    }


def evaluate(learner, source, steps: Sequence[int], num_tasks: int, batch_size: int, device=None, dtype=None) -> dict:
    """Query metrics after each number of adaptation steps, summarised over ``num_tasks`` tasks."""
    per_step: dict[int, dict[str, list[torch.Tensor]]] = {}
    was_training = learner.training
    learner.eval()
    try:
        for batch in fixed_tasks(source, num_tasks, batch_size):
            batch: TaskBatch = batch.to(device=device, dtype=dtype) if device or dtype else batch
            for step, metrics in learner.evaluate(batch, steps).items():
                for name, values in metrics.items():
                    per_step.setdefault(int(step), {}).setdefault(name, []).append(values.detach().float().cpu())
    finally:
        learner.train(was_training)
    return {
        step: {name: summarize(torch.cat(chunks)) for name, chunks in metrics.items()}
        for step, metrics in sorted(per_step.items())
    }


def evaluate_config(learner, config, build_tasks, shots=None, steps=None, num_tasks=None) -> dict:
    """The results table of a run's ``eval`` section: {shots: {step: {metric: summary}}}."""
    from .builders import DTYPES

    e = config.eval
    results = {}
    for k in shots or e.shots:
        source = build_tasks(config, "test", shots=k, queries=e.queries)
        results[k] = evaluate(
            learner, source, steps or e.steps, num_tasks or e.tasks, e.batch_size,
            torch.device(config.train.device), DTYPES[config.train.dtype],
        )
    return results


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
