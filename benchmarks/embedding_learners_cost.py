"""Cost of Matching Networks and the fine-tuning baselines beside ProtoNets and MAML on the same Omniglot episodes.

    OMP_NUM_THREADS=1 python benchmarks/embedding_learners_cost.py --steps 8 --eval-tasks 20

Every learner is built from its preset with the same task settings (5-way 1-shot, 15 queries, Conv-4-64,
28x28; MAML one second-order inner step of 0.4) and meets the same seeded Omniglot training episodes and test
episodes. The network is the preset's: MAML's and iMAML's strided Conv-4 (``model.pool=stride``; also MAML on
the max-pool one), the max-pool Conv-4 for the others; MAML++ five second-order steps (its preset's first-order
epochs off) and in its first-order phase. Each runs in its own process (peak RSS is that child's alone, ``os.wait4``); per learner: the median
wall time of one meta-step (``learner.meta_step``: meta-gradient and Adam step) over ``--steps`` steps after one
warm-up, and the median time per test episode of ``learner.evaluate`` (the baselines' 100-epoch test-time fit
included). Baseline/Baseline++ train on base-class batches (their preset's ``BaseClassTasks``): the same images,
relabelled. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

LEARNERS = {  # name -> (preset, extra overrides)
    "maml (2nd order, 1 step)": ("maml-omniglot-5w1s", ["algorithm.inner_steps=1", "algorithm.eval_steps=1"]),
    "protonets": ("protonet-omniglot-5w1s", []),
    "matchingnets": ("matchingnets-omniglot-5w1s", []),
    "matchingnets fce": ("matchingnets-omniglot-5w1s", ["algorithm.fce=true"]),
    "baseline": ("baseline-omniglot-5w1s", []),
    "baseline++": ("baseline++-omniglot-5w1s", []),
    "r2d2": ("r2d2-omniglot-5w1s", []),
    "metaoptnet-svm": ("metaoptnet-svm-omniglot-5w1s", []),
    "maml max-pool (2nd order, 1 step)": (
        "maml-omniglot-5w1s",
        ["algorithm.inner_steps=1", "algorithm.eval_steps=1", "model.pool=max"],
    ),
    "imaml (16 steps, CG 5)": ("imaml-omniglot-5w1s", []),
    "imaml-hf (16 Newton-CG steps)": ("imaml-omniglot-5w1s", ["algorithm.inner_solver=hf"]),
    "mamlpp (5 steps, 2nd order)": ("mamlpp-omniglot-5w1s", ["algorithm.first_order_epochs=0"]),
    "mamlpp (5 steps, 1st-order phase)": ("mamlpp-omniglot-5w1s", []),
}
SAME = ["task.ways=5", "task.shots=1", "task.queries=15", "model.filters=64", "eval.queries=15", "train.seed=0"]


def child(preset: str, overrides: list[str], steps: int, meta_batch: int, eval_tasks: int) -> dict:
    """One learner, in this process: meta-step and evaluation times."""
    import torch

    from innerloop.algorithms.step import Shard
    from innerloop.training.builders import build_learner, build_optimizer, build_tasks
    from innerloop.training.config import load_config

    torch.set_num_threads(1)
    config = load_config(preset, [*SAME, f"train.meta_batch_size={meta_batch}", *overrides])
    torch.manual_seed(0)
    learner = build_learner(config)
    optimizer = build_optimizer(config, learner)
    tasks, test = build_tasks(config, "train"), build_tasks(config, "test")
    times = []
    for it in range(steps + 1):
        batch = tasks.sample(it, range(meta_batch))
        start = time.perf_counter()
        learner.meta_step(batch, optimizer, Shard())
        times.append(time.perf_counter() - start)
    per_episode = []
    for i in range(0, eval_tasks, 5):
        batch = test.sample(10**6, range(i, i + 5))
        start = time.perf_counter()
        learner.evaluate(batch, list(learner.validation_steps))
        per_episode.append((time.perf_counter() - start) / 5)
    return {"step_ms": 1e3 * statistics.median(times[1:]), "episode_ms": 1e3 * statistics.median(per_episode)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=list(LEARNERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, overrides = LEARNERS[args.child]
        print(json.dumps(child(preset, overrides, args.steps, args.meta_batch, args.eval_tasks)))
        return
    print(
        f"CPU: {platform.processor() or platform.machine()}, 1 thread, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"5-way 1-shot 15 queries, meta-batch {args.meta_batch}, {args.steps} timed steps, {args.eval_tasks} test episodes"
    )
    print("| learner | ms / meta-step (median) | ms / test episode (median) | peak RSS |")
    print("| --- | --- | --- | --- |")
    for name in args.only:
        command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
        command += ["--meta-batch", str(args.meta_batch), "--eval-tasks", str(args.eval_tasks)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name} failed")
        r = json.loads(out.decode().strip().splitlines()[-1])
        print(f"| {name} | {r['step_ms']:.0f} | {r['episode_ms']:.0f} | {round(usage.ru_maxrss / 1024)} MB |")


if __name__ == "__main__":
    main()
