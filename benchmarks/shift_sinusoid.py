"""Which learner degrades least under task-distribution shift on sinusoids (issue 23: MAML, Meta-SGD,
Meta-Curvature, CNP): each preset trained with `innerloop train` (or an existing run reused), then evaluated
in distribution and under amplitude, phase and input-range shifts (`innerloop.training.shift_eval`).

    python benchmarks/shift_sinusoid.py --iterations 70000 --tasks 1000 --seeds 0 1 --out runs/shift \
        --figure benchmarks/shift_sinusoid.png

prints a Markdown table (query MSE at each evaluated step of each learner, mean ± 95% CI over the test tasks, and
the change), writes ``OUT/shift_sinusoid-seeds<S>.json`` (``-2``, ``-3``, ... beside an earlier one, never over it) and, with ``--figure``, one PNG of MSE against shift size with
every learner. Run ``OUT/s<seed>/<preset>``; an existing run is reused (its best-validation checkpoint).
Nothing here is a test; see benchmarks/RESULTS.md for runs that were made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from innerloop.errors import ConfigError
from innerloop.plots import plt, save_figure
from innerloop.tasks.shift import parse_shift
from innerloop.training.builders import learner_from_checkpoint
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.overfitting import best_checkpoint
from innerloop.training.shift_eval import IN_DISTRIBUTION, evaluate_shifts

PRESETS = ("maml-sine", "metasgd-sine", "maml-metacurvature-sine", "cnp-sine")
SHIFTS = (
    "amplitude=5:7.5",
    "amplitude=7.5:10",
    "amplitude=10:15",
    "phase=3.14159:4.71239",
    "phase=4.71239:6.28319",
    "x_range=5:7.5",
    "x_range=7.5:10",
    "x_range=10:15",
)
TRAINING_EDGE = {"amplitude": 5.0, "phase": 3.14159, "x_range": 5.0}  # upper end of the training range


def train(preset: str, run: Path, iterations: int, seed: int, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "innerloop", "train", "-c", preset, "--out", str(run), "--no-evaluate"]
    command += [f"train.iterations={iterations}", f"train.seed={seed}", "train.progress=false", *overrides]
    subprocess.run(command, check=True)


def evaluate(run: Path, tasks: int, shifts: list[str], steps: list[int] | None) -> dict:
    try:
        path = best_checkpoint(run)
    except ConfigError as err:  # every validation had diverged tasks (a NaN mean is never "best"): the latest
        print(f"{run}: {err}; using the latest checkpoint", file=sys.stderr)
        path = run
    ckpt = load_checkpoint(path)
    print(f"{run}: checkpoint {ckpt.path} (iteration {ckpt.iteration})", file=sys.stderr)
    cfg = ckpt.config
    cfg.eval.tasks, cfg.eval.shots = tasks, [cfg.task.shots]
    if steps is not None and cfg.algorithm.name != "cnp":  # a CNP has no inner steps: its step 0 only
        cfg.eval.steps = steps
    learner = learner_from_checkpoint(ckpt)
    if hasattr(learner, "chooser"):
        learner.chooser.choices.update(ckpt.state.get("strategy_choices", {}))
    return evaluate_shifts(learner, cfg, [parse_shift(s) for s in shifts])


def rows_of(table: dict) -> dict[int, dict[str, dict]]:
    """``{step: {condition: {"loss": summary, "change": summary | None}}}`` at the (single) shots."""
    out: dict[int, dict[str, dict]] = {}
    for label, entry in table.items():
        per_step = next(iter(entry["results"].values()))
        change = next(iter(entry.get("change", {None: {}}).values()))
        for step, metrics in per_step.items():
            c = change.get(step, {}).get("loss") if change else None
            out.setdefault(int(step), {})[label] = {"loss": metrics["loss"], "change": c}
    return out


def figure(results: dict, shifts: list[str], path: Path) -> Path:
    """MSE (log scale) against shift size, one panel per shift kind, one line per learner at its fewest evaluated
    steps (first seed)."""
    kinds: dict[str, list] = {}
    for s in map(parse_shift, shifts):
        kinds.setdefault(s.name, []).append(s)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 3.8), squeeze=False)
    for ax, (kind, items) in zip(axes[0], kinds.items()):
        for preset, per_seed in results.items():
            seed = min(per_seed)
            rows = rows_of(per_seed[seed])
            for step, conditions in rows.items():
                if step != min(rows):
                    continue  # the fewest steps evaluated: the presets' trained 1 step (a CNP: its step 0)
                xs = [TRAINING_EDGE[kind]] + [s.size for s in items]
                pts = [conditions[IN_DISTRIBUTION]["loss"]] + [conditions[s.label]["loss"] for s in items]
                line = ax.errorbar(
                    xs,
                    [p["mean"] for p in pts],
                    yerr=[p["ci95"] for p in pts],
                    fmt="o-",
                    capsize=3,
                    label=f"{preset.removesuffix('-sine')} ({step} step{'s' if step != 1 else ''})",
                )
                diverged = [(x, p["median"]) for x, p in zip(xs, pts) if p.get("nonfinite")]
                if diverged:  # the mean is not finite: the median, marked x (the legend says so)
                    ax.plot(*zip(*diverged), "x", ms=9, color=line[0].get_color())
        ax.set_xlabel(f"{kind}: upper end of the test range (first point: training)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("query MSE (mean ± 95% CI)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("sinusoid regression under task-distribution shift (x: median where some tasks diverged)", fontsize=10)
    return save_figure(fig, path)


def new_file(path: Path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``, ... where it exists: a rerun never replaces an earlier result."""
    candidate, k = path, 2
    while candidate.exists():
        candidate, k = path.with_name(f"{path.stem}-{k}{path.suffix}"), k + 1
    return candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--tasks", type=int, default=1000, help="test tasks per condition")
    parser.add_argument("--out", type=Path, default=Path("runs/shift"))
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--shifts", nargs="*", default=list(SHIFTS))
    parser.add_argument("--steps", nargs="*", type=int, default=[1, 10], help="inner steps evaluated (not CNP)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of MSE against shift size")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="config override of the trainings (repeatable), e.g. train.val_every=1000",
    )
    args = parser.parse_args()
    results: dict[str, dict[int, dict]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            run = args.out / f"s{seed}" / preset
            if not (run / "checkpoints").is_dir():
                train(preset, run, args.iterations, seed, args.override)
            results.setdefault(preset, {})[seed] = evaluate(run, args.tasks, args.shifts, args.steps)
    conditions = [IN_DISTRIBUTION, *(parse_shift(s).label for s in args.shifts)]
    print("| learner | seed | steps | " + " | ".join(conditions) + " |")
    print("| --- " * (len(conditions) + 3) + "|")
    for preset, per_seed in results.items():
        for seed, table in per_seed.items():
            for step, row in rows_of(table).items():
                cells = []
                for label in conditions:
                    s, c = row[label]["loss"], row[label]["change"]
                    cell = f"{s['mean']:.3f} ± {s['ci95']:.3f}" + (f" ({c['mean']:+.3f})" if c else "")
                    if s.get("nonfinite"):
                        cell += f" [{s['nonfinite']}/{s['n']} diverged, median {s['median']:.3f}]"
                    cells.append(cell)
                print(f"| {preset} | {seed} | {step} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = "-".join(map(str, args.seeds))
    written = new_file(args.out / f"shift_sinusoid-seeds{seeds}.json")
    written.write_text(json.dumps(results, indent=1))
    print(f"results: {written}", file=sys.stderr)
    if args.figure is not None:
        print(f"figure: {figure(results, args.shifts, args.figure)}", file=sys.stderr)
    print(f"command: {' '.join(sys.argv)}", file=sys.stderr)


if __name__ == "__main__":
    main()
