"""Is a learned optimizer's win over tuned Adam only a better learning rate? Adam tuned on the test tasks themselves.

    .venv/bin/python benchmarks/lopt_oracle_adam.py RUN/evals/lopt-step-...json [--conditions 0 4]

``innerloop eval`` tunes Adam on meta-training tasks, as learned_optimization does. This script reads such an
evaluation's JSON (its run, test tasks and per-task learned losses), runs ``torch.optim.Adam`` at every rate of the
run's grid (``algorithm.tune_lrs``) on the *test* tasks of each chosen condition, and reports the rate with the
lowest mean loss there (an oracle: no rule chosen without the test tasks can do better with one constant rate),
and the learned rule against it, paired per task. Conditions are numbered as in the table (0: in-distribution).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from innerloop.analysis.lopt import conditions
from innerloop.stats import summarize
from innerloop.tasks.seeding import split_seed
from innerloop.training.config import load_config
from innerloop.unroll.compare import BASELINES, optim_curves, tune
from innerloop.unroll.learner import OptimizerTasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", type=Path, help="an innerloop eval JSON of a learned-optimizer run")
    parser.add_argument("--conditions", type=int, nargs="+", default=[0], help="table rows (0: in-distribution)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = json.loads(args.evaluation.read_text())
    run = args.evaluation.parent.parent
    cfg = load_config(str(run / "config.yaml"), [], out_dir=str(run))
    cfg.eval.tasks, cfg.eval.seed = payload["tasks"], payload["seed"]
    test = OptimizerTasks(split_seed(cfg.train.seed, cfg.eval.seed, "test")).task_seeds(range(cfg.eval.tasks))
    grid = payload["tune_lrs"]
    print(f"{args.evaluation}: {payload['rule']}, {len(test)} test tasks (seed {cfg.eval.seed}), {len(grid)} rates")
    print(
        "| condition | N | learned | Adam, tuned on meta-training tasks (lr) | Adam, best rate on these test tasks (lr) "
        "| learned - oracle Adam, paired | wins | learned / oracle Adam |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    table = conditions(cfg)
    for index in args.conditions:
        label, family, n = table[index]
        entry = payload["conditions"][index]
        assert entry["condition"] == label, (entry["condition"], label)
        learned = torch.tensor(entry["optimizers"]["learned"]["per_task"], dtype=torch.float64)
        best, _ = tune(family, test, n, BASELINES["adam"], grid)  # tuned on the test tasks themselves
        oracle = optim_curves(family, test, n, BASELINES["adam"], best)[:, -1]
        mine, theirs, diff = summarize(learned), summarize(oracle), summarize(learned - oracle)
        tuned = entry["optimizers"]["adam"]["final"]
        print(
            f"| {label} | {n} | {mine['mean']:.3g} ± {mine['ci95']:.2g} | "
            f"{tuned['mean']:.3g} ± {tuned['ci95']:.2g} ({entry['lrs']['adam']:.3g}) | "
            f"{theirs['mean']:.3g} ± {theirs['ci95']:.2g} ({best:.3g}) | "
            f"{diff['mean']:+.3g} ± {diff['ci95']:.2g} | {int((learned < oracle).sum())}/{len(test)} | "
            f"{mine['mean'] / theirs['mean']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
