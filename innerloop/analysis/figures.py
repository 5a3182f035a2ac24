"""The analysis report's figures, each from the dict its analysis function returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import plt, save_figure


def parameter_change_figure(result: dict, path: str | Path) -> Path:
    """Relative change of each layer against the inner step, mean over tasks with a +-1 std band."""
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = result["steps"]
    for layer, r in result["layers"].items():
        mean, std = np.array(r["mean"]), np.array(r["std"])
        ax.plot(steps, mean, marker="o", ls="-" if r["adapted"] else ":", label=layer)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("inner steps")
    ax.set_ylabel("||theta' - theta|| / ||theta||")
    ax.set_title(f"parameter change per layer ({result['tasks']} tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def similarity_figure(result: dict, path: str | Path) -> Path:
    """Per layer, each measure between theta's activations and those after adaptation and after a plain fine-tune."""
    layers = result["layers"]
    kinds = [k for k in ("adapted", "finetune") if k in result]  # an embedding learner: the fine-tune only
    measures = list(next(iter(result[kinds[0]].values())).keys()) if layers else []
    series = [(k, m) for m in measures for k in kinds]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(layers) + 2), 4))
    x = np.arange(len(layers))
    for i, (k, m) in enumerate(series):
        ax.bar(
            x + i * width,
            [result[k][n][m] for n in layers],
            width,
            label=f"{m}: {k}",
            hatch="//" if k == "finetune" else None,
        )
    ax.set_xticks(x + width * (len(series) - 1) / 2, layers, rotation=30, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("similarity to theta's activations")
    what = "inner" if "adapted" in result else "fine-tune"
    ax.set_title(f"before vs after {result['steps']} {what} steps (query inputs, {result['tasks']} tasks)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def rates_figure(readout: dict, path: str | Path) -> Path:
    """Heatmaps of the learned rates: LSLR per tensor and step, Meta-SGD per tensor (mean, min, max)."""
    panels = [k for k in ("lslr", "metasgd") if k in readout]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5.5 * len(panels), 0.35 * max(map(len, (readout[k] for k in panels))) + 2),
        squeeze=False,
    )
    for ax, key in zip(axes[0], panels):
        names = list(readout[key])
        if key == "lslr":
            grid, xlabels, title = np.array([readout[key][n] for n in names]), None, "MAML++ LSLR rate per step"
        else:
            stats = ("mean", "min", "max")
            grid, xlabels, title = (
                np.array([[readout[key][n][s] for s in stats] for n in names]),
                stats,
                "Meta-SGD rates",
            )
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        if xlabels:
            ax.set_xticks(range(len(xlabels)), xlabels)
        else:
            ax.set_xlabel("inner step")
        ax.set_title(title)
    return save_figure(fig, path)


def spectra_figure(readout: dict, path: str | Path) -> Path:
    """Meta-Curvature: the singular values of every mode matrix, sorted (1 everywhere = plain SGD)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, modes in readout["metacurvature"].items():
        for i, values in enumerate(modes):
            ax.plot(range(1, len(values) + 1), values, marker=".", label=f"{name} mode {i}")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title("Meta-Curvature preconditioner spectra")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def response_figure(result: dict, path: str | Path) -> Path:
    """A learned rule's update against the gradient it is fed, for each gradient history."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, u in result["curves"].items():
        ax.plot(result["g"], u, label=label)
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel(f"gradient g of {result['probe']}")
    ax.set_ylabel("update u")
    ax.set_title(f"response curve (history: {result['history_steps']} steps of h * {result['scale']:.3g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def attention_figure(result: dict, path: str | Path, queries: int = 10) -> Path:
    """SNAIL: per shown episode (rows) and attention block (columns), the first ``queries`` queries' weights over
    the support sequence and itself (last column); ticks are the support labels and the queries' labels."""
    episodes = [
        {**ep, "query_labels": ep["query_labels"][:queries], "weights": [w[:queries] for w in ep["weights"]]}
        for ep in result["episodes"]
    ]
    blocks = len(episodes[0]["weights"]) if episodes else 0
    fig, axes = plt.subplots(len(episodes), blocks, figsize=(3.2 * blocks, 2.6 * len(episodes)), squeeze=False)
    for row, ep in zip(axes, episodes):
        for b, ax in enumerate(row):
            ax.imshow(np.array(ep["weights"][b]), aspect="auto", cmap="magma", vmin=0)
            ax.set_xticks(range(len(ep["support_labels"]) + 1), [*map(str, ep["support_labels"]), "q"], fontsize=6)
            ax.set_yticks(range(len(ep["query_labels"])), list(map(str, ep["query_labels"])), fontsize=6)
            ax.set_ylabel("query (label)", fontsize=7)
            ax.set_title(f"attention block {b}", fontsize=8)
    return save_figure(fig, path)
