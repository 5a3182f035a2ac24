"""Adaptation curves of meta-trained runs: query loss against the number of inner steps.

    python benchmarks/adaptation_curves.py runs/bench-sine-model-based/maml-sine ... --out benchmarks/adaptation_curves.png

Each run directory's final checkpoint is evaluated (as `innerloop eval` does) on the same
seeded held-out tasks after 0, 1, ..., --max-steps steps of its own update rule, and all
curves go into one figure; the medians are printed as a markdown table. Learners without an
inner loop (CNP) are drawn as a flat line at their forward-pass loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from innerloop.plots import adaptation_curves
from innerloop.training.builders import build_tasks, learner_from_checkpoint
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import FORWARD_PASS_LEARNERS
from innerloop.training.evaluate import evaluate_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/adaptation_curves.png"))
    args = parser.parse_args()

    curves = {}
    for run in args.runs:
        checkpoint = load_checkpoint(run)
        config = checkpoint.config
        learner = learner_from_checkpoint(checkpoint)
        forward_pass = config.algorithm.name in FORWARD_PASS_LEARNERS
        steps = [0] if forward_pass else list(range(args.max_steps + 1))
        result = evaluate_config(learner, config, build_tasks, shots=[args.shots], steps=steps, num_tasks=args.tasks)
        per_step = result[args.shots]
        if forward_pass:
            per_step = dict.fromkeys(range(args.max_steps + 1), per_step[0])
        curves[run.name] = per_step
    adaptation_curves(curves, args.out, title=f"sinusoid {args.shots}-shot, {args.tasks} held-out tasks")
    print(f"figure: {args.out}")
    steps = range(args.max_steps + 1)
    print("| run | " + " | ".join(f"{s} steps" for s in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name, per_step in curves.items():
        print(f"| `{name}` | " + " | ".join(f"{per_step[s]['loss']['median']:.3f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
