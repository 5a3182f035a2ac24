"""Figures: the MAML paper's sinusoid figure, training curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def sinusoid_figure(learners: dict, tasks, path: str | Path, steps=(1, 10), draw: int = 0, task: int = 0) -> Path:
    """One panel per learner: true curve, support points, prediction before and after ``steps``.

    The style of Finn et al. (2017), Figure 2.
    """
    batch, truth = tasks.sample_with_truth(draw, task)
    grid = torch.linspace(-5, 5, 200).unsqueeze(-1)
    fig, axes = plt.subplots(1, len(learners), figsize=(5.5 * len(learners), 4), sharey=True, squeeze=False)
    colors = {0: "tab:green", steps[0]: "tab:orange", steps[-1]: "tab:red"}
    for ax, (name, learner) in zip(axes[0], learners.items()):
        dtype = next(learner.parameters()).dtype
        sx, sy = batch.support_x[0].to(dtype), batch.support_y[0].to(dtype)
        ax.plot(grid, truth(grid), color="tab:blue", lw=2, label="ground truth")
        ax.scatter(sx, sy, color="black", marker="^", s=50, zorder=5, label=f"{sx.shape[0]} support points")
        with torch.no_grad():
            for s in (0, *steps):
                params = learner.adapt(sx, sy, steps=s)
                pred = learner.predict(params, grid.to(dtype))
                label = "pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
                ax.plot(grid, pred, ls="--" if s == 0 else "-", color=colors.get(s, None), label=label)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("y")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Loss (and accuracy when logged) against iteration, training and validation."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    metrics = [m for m in ("loss", "accuracy") if any(m in r for r in records)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for split, style in (("train", "-"), ("val", "o-")):
            rows = [r for r in records if r.get("split", "train") == split and metric in r]
            if rows:
                ax.plot([r["iteration"] for r in rows], [r[metric] for r in rows], style, label=split, ms=3)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path) if path else run_dir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
