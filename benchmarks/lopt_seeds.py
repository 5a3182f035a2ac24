"""Is a learned optimizer's win over tuned Adam robust across meta-training seeds? One row per run, in-distribution.

    .venv/bin/python benchmarks/lopt_seeds.py RUN [RUN ...] [--tasks 100] [--seed 2025] [--checkpoint best] [--guard G]

For each run (the same preset meta-trained with different ``train.seed``), the comparison of ``innerloop eval RUN``
on its first condition only (held-out tasks of the meta-training family; Adam and SGD-momentum tuned on the run's
grid ``algorithm.tune_lrs`` over meta-training tasks): the learned rule's loss after N steps, tuned Adam's, their
ratio, the ratio of their medians over tasks (a few diverging tasks move the mean, not the median), the paired
difference with its 95% CI and the tasks won; then the median of each ratio over the runs. ``--guard G`` tests an
``adam-correction`` rule with the loss guard at tolerance G switched on (``guard_decay`` 0.9) and the same
meta-parameters, whatever it was meta-trained with (the guard has no meta-parameters of its own).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from innerloop.analysis.lopt import compare_run
from innerloop.core.rules import AdamCorrection
from innerloop.training.builders import learner_from_checkpoint
from innerloop.training.checkpoint import find_checkpoint, load_checkpoint
from innerloop.training.overfitting import best_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2025, help="seed of the test tasks (innerloop eval --seed)")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="best")
    parser.add_argument("--guard", type=float, default=None, help="test with the loss guard at this tolerance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| run | train.seed | checkpoint | N | learned | Adam (tuned lr) | learned / Adam | median learned / median Adam "
        "| learned - Adam, paired | wins |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios, median_ratios = [], []
    for run in args.runs:
        path = best_checkpoint(run) if args.checkpoint == "best" else find_checkpoint(run)
        ckpt = load_checkpoint(path)
        cfg = ckpt.config
        cfg.eval.tasks, cfg.eval.seed = args.tasks, args.seed
        learner = learner_from_checkpoint(ckpt)
        if args.guard is not None:
            learner.rule = guarded(learner.rule, args.guard)
        entry = compare_run(learner, cfg, echo=lambda _: None, which=[0])["conditions"][0]
        learned, adam = (entry["optimizers"][k]["final"] for k in ("learned", "adam"))
        d = entry["learned_vs_adam"]
        ratios.append(learned["mean"] / adam["mean"])
        median_ratios.append(learned["median"] / adam["median"])
        print(
            f"| {run.name} | {cfg.train.seed} | {path.name} | {entry['steps']} | {learned['mean']:.3g} ± {learned['ci95']:.2g} "
            f"| {adam['mean']:.3g} ± {adam['ci95']:.2g} ({entry['lrs']['adam']:.3g}) | {ratios[-1]:.3f} "
            f"| {median_ratios[-1]:.3f} "
            f"| {d['mean']:+.3g} ± {d['ci95']:.2g} | {d['wins']}/{d['tasks']} |",
            flush=True,
        )
    for what, values in (("learned / Adam", ratios), ("median learned / median Adam", median_ratios)):
        below = sum(r < 1 for r in values)
        print(f"{what} over {len(values)} runs: median {statistics.median(values):.3f}; below 1 in {below}")


def guarded(rule, guard: float) -> AdamCorrection:
    """A copy of the ``AdamCorrection`` ``rule`` with the loss guard at tolerance ``guard`` and the same weights."""
    if not isinstance(rule, AdamCorrection) or not rule.scale_mult:
        raise SystemExit(f"--guard needs an adam-correction rule with scale_mult > 0, got {rule.describe()}")
    copy = AdamCorrection(**{**rule.hparams(), "guard": guard, "guard_decay": 0.9})
    copy.load_state_dict(rule.state_dict())
    return copy


if __name__ == "__main__":
    main()
