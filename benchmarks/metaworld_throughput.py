"""Sampling throughput of the Meta-World families: environment steps per second with 1 and 2 worker processes.

Each measurement is one rollout of a fresh MAML-TRPO policy (2 x 100) on ``--tasks`` test goals x ``--episodes``
episodes of ``--horizon`` steps (innerloop.rl.sampler.rollout: simulators, policy and sampling together), after a
warm-up rollout that builds the simulators. Needs the metaworld extra (its own venv: `make test-metaworld`).

    python benchmarks/metaworld_throughput.py --families ml1-reach ml1-push ml10 --workers 1 2
"""

from __future__ import annotations

import argparse
import time

import torch

from innerloop.rl.envs import make_family
from innerloop.rl.maml_trpo import MAMLTRPO
from innerloop.rl.policies import make_policy
from innerloop.rl.sampler import rollout


def steps_per_second(name: str, workers: int, tasks: int, episodes: int, horizon: int, repeats: int) -> float:
    family = make_family(name, horizon=horizon, workers=workers)
    try:
        torch.manual_seed(0)
        learner = MAMLTRPO(make_policy(family), family, episodes=episodes)
        rows = family.test_tasks(tasks, 0)
        rollout(family, rows, learner, learner.params(), episodes, seed=0)  # builds the simulators
        best = 0.0
        for r in range(repeats):
            start = time.perf_counter()
            played = rollout(family, rows, learner, learner.params(), episodes, seed=r + 1)
            best = max(best, played.steps / (time.perf_counter() - start))
        return best
    finally:
        family.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["ml1-reach", "ml1-push"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | workers | env steps/s (best of repeats) |")
    print("| --- | --- | --- |")
    for name in args.families:
        for workers in args.workers:
            rate = steps_per_second(name, workers, args.tasks, args.episodes, args.horizon, args.repeats)
            print(f"| {name} | {workers} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
