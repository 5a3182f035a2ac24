"""Evaluate a 2D-navigation checkpoint on the MAML paper's own 40 test goals.

    python benchmarks/nav2d_paper_goals.py runs/nav2d-lr05/checkpoints/step-00000100 --lrs 0.5 0.25 --episodes 40

The authors' test script (cbfinn/maml_rl, maml_examples/test_maml_point.py) draws its goals
with ``np.random.seed(1); np.random.uniform(-0.5, 0.5, size=(40, 2))``; numpy's legacy
generator reproduces them exactly. Returns after 0-3 policy-gradient steps of ``--lrs``
(the last repeats), ``--episodes`` per step, mean ± standard error over the 40 goals, with
the same random streams as ``innerloop eval``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from innerloop.rl.evaluate import evaluate_adaptation, format_returns
from innerloop.tasks.seeding import derive_seed
from innerloop.training.builders import learner_from_checkpoint
from innerloop.training.checkpoint import load_checkpoint


def paper_goals() -> torch.Tensor:
    rng = np.random.RandomState(1)  # the legacy stream np.random.seed(1) sets
    return torch.tensor(rng.uniform(-0.5, 0.5, size=(40, 2)), dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[0.5, 0.25], help="step sizes (the paper's code: 0.5 then 0.25)"
    )
    parser.add_argument("--episodes", type=int, default=40, help="episodes per step (the paper's code: 40)")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.config.task.name != "nav2d":
        raise SystemExit(f"{args.checkpoint} is a {ckpt.config.task.name} checkpoint; this script evaluates nav2d ones")
    learner = learner_from_checkpoint(ckpt)
    results = evaluate_adaptation(
        learner, paper_goals(), [0, 1, 2, 3], args.episodes, args.lrs, derive_seed(ckpt.config.eval.seed, "rl-test")
    )
    print(f"{args.checkpoint}: the paper's 40 goals, {args.episodes} episodes per step, step sizes {args.lrs}")
    print(format_returns(results, "nav2d"))


if __name__ == "__main__":
    main()
