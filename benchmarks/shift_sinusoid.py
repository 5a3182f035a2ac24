"""Which learner degrades least under task-distribution shift on sinusoids (issue 23: MAML, Meta-SGD,
Meta-Curvature, CNP): each preset trained with `innerloop train` (or an existing run reused), then evaluated
in distribution and under amplitude, phase and input-range shifts (`innerloop.training.shift_eval`).

    python benchmarks/shift_sinusoid.py --iterations 70000 --tasks 1000 --out runs/shift

prints a Markdown table (query MSE after the last eval step, mean ± 95% CI, and the change) and writes
``OUT/shift_sinusoid.json``. Nothing here is a test; see benchmarks/RESULTS.md for runs that were made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from innerloop.tasks.shift import parse_shift
from innerloop.training.builders import learner_from_checkpoint
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.overfitting import best_checkpoint
from innerloop.training.shift_eval import IN_DISTRIBUTION, evaluate_shifts

PRESETS = ("maml-sine", "metasgd-sine", "maml-metacurvature-sine", "cnp-sine")
SHIFTS = ("amplitude=5:7.5", "amplitude=7.5:10", "phase=3.14:6.28", "x_range=5:10", "x_range=-10:10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--tasks", type=int, default=1000, help="test tasks per condition")
    parser.add_argument("--out", type=Path, default=Path("runs/shift"))
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = parser.parse_args()
    rows = {}
    for preset in args.presets:
        run = args.out / preset
        if not (run / "checkpoints").is_dir():
            command = [
                sys.executable,
                "-m",
                "innerloop",
                "train",
                "-c",
                preset,
                f"train.iterations={args.iterations}",
                "--out",
                str(run),
            ]
            subprocess.run([*command, "train.progress=false"], check=True)
        ckpt = load_checkpoint(best_checkpoint(run))
        cfg = ckpt.config
        cfg.eval.tasks, cfg.eval.shots = args.tasks, [cfg.task.shots]
        rows[preset] = evaluate_shifts(learner_from_checkpoint(ckpt), cfg, [parse_shift(s) for s in SHIFTS])
    print(f"| learner | {IN_DISTRIBUTION} | " + " | ".join(SHIFTS) + " |")
    print("| --- " * (len(SHIFTS) + 2) + "|")
    for preset, table in rows.items():
        cells = []
        for entry in table.values():
            per_step = next(iter(entry["results"].values()))
            step = max(per_step)
            s = per_step[step]["loss"]
            cell = f"{s['mean']:.3f} ± {s['ci95']:.3f}"
            if "change" in entry:
                c = next(iter(entry["change"].values()))[step]["loss"]
                cell += f" ({c['mean']:+.3f} ± {c['ci95']:.3f})"
            cells.append(cell)
        print(f"| {preset} | " + " | ".join(cells) + " |")
    (args.out / "shift_sinusoid.json").write_text(json.dumps(rows, indent=1))
    print(f"command: {' '.join(sys.argv)}", file=sys.stderr)


if __name__ == "__main__":
    main()
