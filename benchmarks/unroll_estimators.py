"""Meta-training cost per outer step of each meta-gradient estimator (issue 21), on the meta-train task families.

    .venv/bin/python benchmarks/unroll_estimators.py [--families quadratic-d10 ...] [--tasks 8] [--truncation 10]

One outer step = one ``MetaTraining.step()``: the estimate (``tasks`` runs for backprop, ``tasks`` antithetic pairs
for ES/PES, ``truncation`` inner steps each; full backprop unrolls the whole horizon) plus the Adam step on the
meta-parameters of an ``MLPOptimizer``. Timed with ``torch.utils.benchmark`` (median of blocked runs).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from innerloop.core.rules import MLPOptimizer
from innerloop.unroll import ESTIMATORS, MetaTraining, Unroll, meta_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=None, help="meta-train family names (default: all)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=10)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    families = meta_split()["meta-train"]
    print("| family | horizon | estimator | inner steps per outer step | ms per outer step | ms per inner step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.families or list(families):
        family, horizon = families[name]
        for key, cls in ESTIMATORS.items():
            truncation = horizon if key == "full" else args.truncation
            unroll = Unroll(family, MLPOptimizer(lr=1e-3), horizon, truncation)
            run = MetaTraining(cls(unroll, args.tasks), lr=1e-3)
            run.step()  # warm-up (first-call imports, allocations)
            timer = benchmark.Timer(stmt="run.step()", globals={"run": run}, num_threads=torch.get_num_threads())
            seconds = timer.blocked_autorange(min_run_time=args.min_run_time).median
            runs = args.tasks * (1 if key in ("full", "tbptt") else 2)
            steps = runs * truncation
            print(
                f"| {name} | {horizon} | {key} | {steps} ({runs} runs x {truncation}) | "
                f"{1e3 * seconds:.1f} | {1e3 * seconds / steps:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
