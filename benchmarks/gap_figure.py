"""Meta-overfitting side by side: meta-training-task vs validation accuracy of several runs (issue 23).

Reads each run's ``metrics.jsonl`` (the trainer's records at each validation: ``split`` "val" and "meta-train")
and draws, per run, both accuracies against the iteration and their difference; prints the same as a Markdown
table. The figure is written next to none it would replace (an existing path is refused).

    python benchmarks/gap_figure.py --out benchmarks/gap_omniglot.png MAML=runs/maml SNAIL=runs/snail
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from innerloop.plots import plt, save_figure


def records(run: Path) -> dict[str, dict[int, float]]:
    """``{"val": {iteration: accuracy}, "meta-train": {...}}`` of one run."""
    out: dict[str, dict[int, float]] = {"val": {}, "meta-train": {}}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") in out:
            out[row["split"]][row["iteration"]] = 100 * row["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose another --out (this script never overwrites a figure)")
    fig, (acc, gap) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, spec in enumerate(args.runs):
        label, _, run = spec.partition("=")
        r = records(Path(run))
        its = sorted(set(r["val"]) & set(r["meta-train"]))
        color = f"C{i}"
        acc.plot(its, [r["meta-train"][t] for t in its], "--", color=color, label=f"{label}: meta-training tasks")
        acc.plot(its, [r["val"][t] for t in its], "-o", ms=3, color=color, label=f"{label}: validation tasks")
        gap.plot(its, [r["meta-train"][t] - r["val"][t] for t in its], "-o", ms=3, color=color, label=label)
        print(f"\n{label} ({run})\n\n| iteration | " + " | ".join(map(str, its)) + " |")
        print("| --- |" + " --- |" * len(its))
        for split in ("meta-train", "val"):
            print(f"| {split} | " + " | ".join(f"{r[split][t]:.1f}" for t in its) + " |")
        print("| gap (points) | " + " | ".join(f"{r['meta-train'][t] - r['val'][t]:+.1f}" for t in its) + " |")
    acc.set(xlabel="iteration", ylabel="accuracy %", title="meta-training vs validation tasks")
    gap.set(xlabel="iteration", ylabel="meta-train - validation (points)", title="the gap")
    gap.axhline(0, color="0.6", lw=0.6)
    for ax in (acc, gap):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    print(f"\nfigure: {save_figure(fig, args.out)}")


if __name__ == "__main__":
    main()
