"""Sinusoid regression reproduction (Finn et al. 2017, section 5.1): every sinusoid preset, then one table.

    python benchmarks/sinusoid.py --iterations 70000 --out runs/bench-sine

Each preset is meta-trained with `innerloop train` (K=10 support points, meta-batch 25,
Adam 1e-3 unless the preset says otherwise) and evaluated on 1000 fresh 5-shot and
10-shot tasks (100 query points each) after 0, 1, 5 and 10 SGD steps of alpha=0.01.
Writes <out>/summary.json and prints a markdown table for benchmarks/RESULTS.md.

The 40-40 MLP gains nothing from intra-op threads, so each run uses one thread
(OMP_NUM_THREADS=1) and ``--jobs`` runs go side by side (2 on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from _train import ms_per_iteration, train_subprocess

from innerloop.training.checkpoint import find_checkpoint, load_checkpoint

PRESETS = ["maml-sine", "fomaml-sine", "reptile-sine", "metasgd-sine", "anil-sine", "pretrained-sine"]
# The model-based family beside MAML and Meta-SGD (issue 4): learned update rules and a black-box learner.
MODEL_BASED = [
    "maml-sine",
    "metasgd-sine",
    "maml-lslr-sine",
    "maml-metacurvature-sine",
    "maml-lstm-optimizer-sine",
    "maml-meta-lstm-sine",
    "cnp-sine",
]
FORWARD_PASS = {"cnp-sine"}  # adapts in one forward pass: evaluated at "0 steps" only
PAPER = {"maml-sine": "0.67 / 0.38 / 0.35", "pretrained-sine": "2.41 / 2.23 / 2.19"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-sine")
    parser.add_argument(
        "--presets", nargs="*", default=PRESETS, help=f"default: the MAML family; or {' '.join(MODEL_BASED)}"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    def run(preset: str) -> None:
        run_dir = out / preset
        command = [
            sys.executable,
            "-m",
            "innerloop",
            "train",
            "--config",
            preset,
            "--out",
            str(run_dir),
            "--resume",
            f"train.iterations={args.iterations}",
            f"train.seed={args.seed}",
            "train.progress=false",
        ]
        done = find_checkpoint(run_dir)
        if done is not None and load_checkpoint(done).iteration >= args.iterations and (run_dir / "eval.json").exists():
            # Already trained: only re-evaluate. Wall time of that run: from its config (written
            # at the start) to its final eval.json.
            wall = summary.get(preset, {}).get("wall_s") or (
                (run_dir / "eval.json").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime
            )
        else:
            start = time.perf_counter()
            peak = train_subprocess(command, out / f"{preset}.log")
            wall = time.perf_counter() - start
            summary.setdefault(preset, {})["peak_rss_mb"] = peak
        # Evaluate the final checkpoint with `innerloop eval` (the same command a user runs).
        steps = ["0"] if preset in FORWARD_PASS else ["0", "1", "5", "10"]
        evaluation = [
            sys.executable,
            "-m",
            "innerloop",
            "eval",
            str(run_dir),
            "--tasks",
            "1000",
            "--shots",
            "5",
            "--shots",
            "10",
            *(arg for step in steps for arg in ("--steps", step)),
            "--output",
            str(run_dir / "eval-final.json"),
        ]
        subprocess.run(evaluation, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results = json.loads((run_dir / "eval-final.json").read_text())["results"]
        summary[preset] = {
            **summary.get(preset, {}),
            "wall_s": round(wall, 1),
            "iterations": args.iterations,
            "seed": args.seed,
            "threads": 1,
            "ms_per_iteration": ms_per_iteration(run_dir),
            "command": "OMP_NUM_THREADS=1 " + " ".join(["innerloop", *command[3:]]),
            "results": results,
        }
        summary_path.write_text(json.dumps(summary, indent=2))

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, args.presets))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.node()}, date {date.today()}")
    print(
        "| preset | paper, 5-shot 1 / 5 / 10 steps | 5-shot: 1 / 5 / 10 steps | 10-shot: 1 / 5 / 10 steps "
        "| iterations | ms / iteration (median) | peak RSS | wall (train+eval) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset in [p for p in args.presets if p in summary]:
        row = summary[preset]
        steps = ("0",) if preset in FORWARD_PASS else ("1", "5", "10")
        cells = [" / ".join(cell(row["results"][k][s]["loss"]) for s in steps) for k in ("5", "10")]
        if preset in FORWARD_PASS:
            cells = [f"forward pass: {c}" for c in cells]
        print(
            f"| `{preset}` | {PAPER.get(preset, '-')} | {cells[0]} | {cells[1]} | {row['iterations']} "
            f"| {row.get('ms_per_iteration', '-')} | {row.get('peak_rss_mb', '-')} MB | {row['wall_s'] / 60:.1f} min |"
        )


def cell(summary: dict) -> str:
    """mean ± CI; with the median and the count of non-finite tasks when some adaptation diverged."""
    text = f"{summary['mean']:.3f} ± {summary['ci95']:.3f}"
    if summary.get("nonfinite") or summary["mean"] > 3 * summary.get("median", summary["mean"]):
        text += f" (median {summary['median']:.3f}; {summary.get('nonfinite', 0)} non-finite)"
    return text


if __name__ == "__main__":
    main()
