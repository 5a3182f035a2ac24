"""Figures: the MAML paper's sinusoid and 2D-navigation figures, training curves, adaptation curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import torch

from .tasks.shift import RANGES


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close ``fig``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
        ax.plot(grid.numpy(), truth(grid).numpy(), color="tab:blue", lw=2, label="ground truth")
        ax.scatter(
            sx.numpy(), sy.numpy(), color="black", marker="^", s=50, zorder=5, label=f"{sx.shape[0]} support points"
        )
        with torch.no_grad():
            for s in (0, *steps):
                params = learner.adapt(sx, sy, steps=s)
                pred = learner.predict(params, grid.to(dtype))
                label = "pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
                ax.plot(
                    grid.numpy(), pred.float().numpy(), ls="--" if s == 0 else "-", color=colors.get(s), label=label
                )
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("y")
    return save_figure(fig, path)


CURVES = (  # metrics.jsonl split, line style, legend
    ("train", "-", "train (meta-batches)"),
    ("val", "o-", "validation tasks"),
    ("meta-train", "s--", "meta-training tasks"),
)


def training_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Loss (and accuracy when logged) against iteration: the training batches, the validation tasks and, at
    each validation, the meta-training tasks evaluated as the validation tasks are (the meta-overfitting gap)."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    metrics = [m for m in ("loss", "accuracy", "return_before", "return_after") if any(m in r for r in records)]
    val: dict = next(
        (r for r in records if r.get("split") == "val"), {}
    )  # its per-step keys (return_0, loss_5, ...) too
    metrics += [
        k for k in val if k not in (*metrics, "iteration", "split") and not k.endswith(("_median", "_nonfinite"))
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = []
        for split, style, label in CURVES:
            rows = [r for r in records if r.get("split", "train") == split and metric in r]
            if rows:
                values += [r[metric] for r in rows]
                ax.plot([r["iteration"] for r in rows], [r[metric] for r in rows], style, label=label, ms=3)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        if metric == "loss" and min(values) > 0:  # a log-loss meta-objective is negative: a linear axis then
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path or run_dir / "curves.png")


def _show(ax, image: torch.Tensor) -> None:
    image = image.detach().float().cpu()  # displayed via numpy below
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray_r" if image.mean() < 0.5 else "gray", vmin=0, vmax=1)
    else:  # RGB, possibly normalised: rescale to [0, 1] for display
        ax.imshow(((image - image.min()) / (image.max() - image.min() + 1e-8)).permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def episode_figure(learner, task, path: str | Path, max_query: int = 20) -> Path:
    """One few-shot episode: the support images with their labels, then query images with
    predicted / true label (green when right, red when wrong)."""
    sx, sy, qx, qy = task.support_x[0], task.support_y[0], task.query_x[0], task.query_y[0]
    dtype = next(learner.parameters()).dtype
    with torch.no_grad():
        state = learner.adapt(sx.to(dtype), sy)
        predicted = learner.predict(state, qx.to(dtype)).argmax(-1)
    order = torch.randperm(qx.shape[0], generator=torch.Generator().manual_seed(0))[:max_query]
    columns = max(min(sx.shape[0], 10), min(len(order), 10))
    support_rows = -(-sx.shape[0] // columns)
    query_rows = -(-len(order) // columns)
    fig, axes = plt.subplots(
        support_rows + query_rows, columns, figsize=(1.3 * columns, 1.5 * (support_rows + query_rows)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i in range(sx.shape[0]):
        ax = axes[i // columns][i % columns]
        ax.axis("on")
        _show(ax, sx[i])
        ax.set_title(f"support {int(sy[i])}", fontsize=8)
    for j, i in enumerate(order.tolist()):
        ax = axes[support_rows + j // columns][j % columns]
        ax.axis("on")
        _show(ax, qx[i])
        right = int(predicted[i]) == int(qy[i])
        ax.set_title(
            f"pred {int(predicted[i])} / true {int(qy[i])}", fontsize=7, color="tab:green" if right else "tab:red"
        )
    accuracy = float((predicted == qy).float().mean())
    fig.suptitle(
        f"{sx.shape[0]} support images (top), query predictions (bottom): query accuracy {accuracy:.0%}", fontsize=9
    )
    return save_figure(fig, path, dpi=100)


def adaptation_curves(
    curves: dict[str, dict[int, dict]],
    path: str | Path,
    metric: str = "loss",
    title: str = "query MSE against inner steps",
) -> Path:
    """Query ``metric`` (median, and the mean ± 95% CI band) against the number of adaptation steps.

    ``curves`` maps a learner's name to ``{steps: {metric: summary}}`` as ``evaluate`` returns it.
    The median is drawn because a few diverging tasks can swamp a mean.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, per_step in curves.items():
        steps = sorted(per_step)
        median = [per_step[s][metric]["median"] for s in steps]
        (line,) = ax.plot(steps, median, "o-", ms=3, label=name)
        mean = torch.tensor([per_step[s][metric]["mean"] for s in steps])
        ci = torch.tensor([per_step[s][metric]["ci95"] for s in steps])
        if torch.isfinite(mean).all():
            ax.fill_between(steps, mean - ci, mean + ci, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("inner steps on the support set")
    ax.set_ylabel(f"query {metric} (median; band: mean ± 95% CI)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def return_curve(
    results: dict[int, dict],
    path: str | Path,
    paper: dict[int, float] | None = None,
    title: str = "return against adaptation steps",
) -> Path:
    """Mean return (± standard error over tasks) after each number of policy-gradient steps."""
    steps = sorted(results)
    mean = [results[s]["return"]["mean"] for s in steps]
    err = [results[s]["return"]["stderr"] for s in steps]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(steps, mean, yerr=err, fmt="o-", capsize=3, label="innerloop")
    if paper:
        ax.plot(sorted(paper), [paper[s] for s in sorted(paper)], "s--", color="gray", label="Finn et al. 2017")
    ax.set_xlabel("policy-gradient adaptation steps")
    ax.set_ylabel("average return (± s.e. over tasks)")
    ax.set_xticks(steps)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def navigation_figure(draw, path: str | Path, task: int = 0, steps=(0, 1, 2), episodes: int = 3) -> Path:
    """2D navigation before and after adaptation, goal marked (Finn et al. 2017, Figure 4).

    ``draw`` is an :class:`~innerloop.rl.learner.Adaptation` whose ``episodes[k]`` were
    played after ``k`` steps; the goal is the one of task ``task``.
    """
    goal = draw.tasks[task]
    fig, ax = plt.subplots(figsize=(5, 5.8))
    for k in [k for k in steps if k < len(draw.episodes)]:
        positions = draw.episodes[k].observations[task].float()  # [E, H, 2]
        label = "pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"
        for e in range(min(episodes, positions.shape[0])):  # a few sampled episodes, thin
            ax.plot(positions[e, :, 0].numpy(), positions[e, :, 1].numpy(), "-", lw=0.6, alpha=0.35, color=f"C{k}")
        mean = positions.mean(0)  # the average path over all episodes, thick
        ax.plot(
            mean[:, 0].numpy(),
            mean[:, 1].numpy(),
            "-",
            lw=2.5,
            color=f"C{k}",
            label=f"{label} (mean of {positions.shape[0]})",
        )
    ax.plot([float(goal[0])], [float(goal[1])], "*", color="gold", markeredgecolor="black", ms=18, label="goal")
    ax.plot([0], [0], "ko", ms=4)
    ax.set_xlim(-0.6, 0.6)
    ax.set_ylim(-0.6, 0.6)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)  # below: never over the goal
    ax.set_title("2D navigation: trajectories before and after adaptation")
    return save_figure(fig, path)


def shift_figure(table: dict, path: str | Path, metric: str) -> Path:
    """Performance against shift size, one panel per shift (``training.shift_eval.evaluate_shifts``'s table).

    Each point: the mean ± 95% CI after the last reported step at the first shots; the line and band: the
    in-distribution value. A ``split`` shift has no size: its conditions are placed side by side.
    """
    first = next(iter(table.values()))["results"]
    shots = next(iter(first))
    step = list(first[shots])[-1]
    base = first[shots][step][metric]
    kinds: dict[str, list] = {}
    for label, entry in list(table.items())[1:]:
        kinds.setdefault(entry["shift"], []).append((label, entry))
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.6 * max(len(kinds), 1), 3.8), squeeze=False)
    for ax, (kind, entries) in zip(axes[0], kinds.items()):
        sizes = [e["size"] for _, e in entries]
        xs = sizes if None not in sizes else list(range(len(entries)))  # None: a split, no size
        points = [next(iter(e["results"].values()))[step][metric] for _, e in entries]
        ax.errorbar(xs, [p["mean"] for p in points], yerr=[p["ci95"] for p in points], fmt="o-", capsize=3)
        ax.axhline(base["mean"], color="gray", ls="--", label="in-distribution")
        ax.axhspan(base["mean"] - base["ci95"], base["mean"] + base["ci95"], color="gray", alpha=0.15)
        if xs is not sizes:
            ax.set_xticks(xs, [label for label, _ in entries], fontsize=7)
        ax.set_xlabel(f"{kind} (upper end of the range)" if kind in RANGES else kind)
        ax.set_ylabel(f"query {metric} after {step} step{'s' if step != 1 else ''}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
