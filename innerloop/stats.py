"""Summaries over tasks: mean, spread and confidence interval (supervised and meta-RL evaluation share them)."""

from __future__ import annotations

import math

import torch


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation, standard error and 95% CI half-width (1.96 std / sqrt(n)) over tasks.

    Also the median and how many tasks gave a non-finite value (a diverging adaptation
    makes the mean meaningless; the median and that count still say what happened).
    """
    v = values.double().flatten()
    n = v.numel()
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return {
        "mean": float(v.mean()),
        "std": std,
        "stderr": std / math.sqrt(n),
        "ci95": 1.96 * std / math.sqrt(n),
        "n": n,
        "median": float(v.nanmedian()),
        "nonfinite": int((~torch.isfinite(v)).sum()),
    }
