"""Your own loop against the batched path: what ``learner.clone()`` costs, and what ``meta_loss`` saves.

    OMP_NUM_THREADS=1 python benchmarks/handle_speed.py              # sinusoid (25 tasks, 1 and 5 steps) + Conv-4
    OMP_NUM_THREADS=1 python benchmarks/handle_speed.py --no-conv    # sinusoid only (~1 min on CPU-2)

One measurement is one meta-training step, second-order MAML: the meta-loss over the meta-batch
and its backward pass into ``.grad`` (no optimizer step). Implementations:

* ``meta_loss vmap`` / ``meta_loss loop``: ``learner.meta_loss(batch)[0].backward()``, tasks under
  ``torch.func.vmap`` or a per-task loop;
* ``handle``: the learn2learn-style loop on innerloop's per-task handle, ``task = learner.clone();
  task.adapt(F.mse_loss(task(x), y))``, query loss / T backward per task;
* ``hand-written loop``: the same loop written with ``torch.func.functional_call`` and
  ``torch.autograd.grad(create_graph=True)`` alone.

Every implementation first gets the same model and batch in float64 and must give the same
meta-gradient (relative error < 1e-10), then is timed in float32 with
``torch.utils.benchmark.Timer.blocked_autorange`` (medians of blocks), interleaved round by round.
Prints a markdown table: medians over rounds, and two ratios taken within each round (then their
median): the handle over the hand-written loop, and the batched path's speed-up over that loop.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils import benchmark

from innerloop import MAML, SinusoidTasks, TaskBatch
from innerloop.models import MLP, Conv4


def sinusoid(tasks: int, steps: int, dtype, strategy: str = "loop") -> tuple[MAML, TaskBatch, callable]:
    torch.manual_seed(0)
    learner = MAML(MLP(1, [40, 40], 1).to(dtype), inner_lr=0.01, inner_steps=steps, strategy=strategy)
    return learner, SinusoidTasks(shots=10, queries=10, seed=0).sample(0, range(tasks), dtype=dtype), F.mse_loss


def conv4(tasks: int, steps: int, dtype, strategy: str = "loop") -> tuple[MAML, TaskBatch, callable]:
    """Omniglot-sized random data: 5-way 1-shot, 15 queries per class, 28x28 grayscale, Conv-4 (64 filters)."""
    torch.manual_seed(0)
    learner = MAML(
        Conv4(in_channels=1, hidden=64, out_features=5).to(dtype), inner_lr=0.4, inner_steps=steps, strategy=strategy
    )
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.rand(tasks, 5, 1, 28, 28, generator=g).to(dtype),
        torch.arange(5).repeat(tasks, 1),
        torch.rand(tasks, 75, 1, 28, 28, generator=g).to(dtype),
        torch.arange(5).repeat_interleave(15).repeat(tasks, 1),
    )
    return learner, batch, F.cross_entropy


def implementations(make, tasks: int, steps: int, dtype) -> tuple[dict[str, callable], list[MAML]]:
    """The four implementations, each on its own copy of the same initial model, and those learners."""
    by_strategy = {s: make(tasks, steps, dtype, s)[0] for s in ("vmap", "loop")}
    learner, batch, loss_fn = make(tasks, steps, dtype)
    lr, n, model = learner.update_rule.lr, batch.num_tasks, learner.model
    tasks = [(t.support_x[0], t.support_y[0], t.query_x[0], t.query_y[0]) for t in batch]

    def batched(strategy):
        return lambda: by_strategy[strategy].meta_loss(batch)[0].backward()

    def handle():
        for sx, sy, qx, qy in tasks:
            task = learner.clone()
            for _ in range(steps):
                task.adapt(loss_fn(task(sx), sy))
            (loss_fn(task(qx), qy) / n).backward()

    def hand_written():
        params = dict(model.named_parameters())
        for sx, sy, qx, qy in tasks:
            fast = params
            for _ in range(steps):
                loss = loss_fn(functional_call(model, fast, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {name: p - lr * g for (name, p), g in zip(fast.items(), grads)}
            (loss_fn(functional_call(model, fast, (qx,)), qy) / n).backward()

    return {
        "meta_loss vmap": batched("vmap"),
        "meta_loss loop": batched("loop"),
        "handle": handle,
        "hand-written loop": hand_written,
    }, [by_strategy["vmap"], by_strategy["loop"], learner, learner]


def gradient(fn, owner) -> torch.Tensor:
    owner.zero_grad()
    fn()
    return torch.cat([p.grad.flatten() for p in owner.parameters()])


def check(make, tasks: int, steps: int) -> float:
    fns, owners = implementations(make, tasks, steps, torch.float64)
    ref = gradient(fns["hand-written loop"], owners[-1])
    worst = 0.0
    for (_name, fn), owner in zip(fns.items(), owners):
        worst = max(worst, float((gradient(fn, owner) - ref).norm() / ref.norm()))
    if worst > 1e-10:
        raise SystemExit(f"meta-gradients disagree (relative error {worst:.2e}): not timing")
    return worst


def time_all(fns: dict, owners, min_run_time: float, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each round: ``rounds`` interleaved rounds, each one blocked_autorange median per impl."""
    for fn, owner in zip(fns.values(), owners):
        owner.zero_grad()
        fn()  # warm-up (and vmap's first trace)
    medians = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            medians[name].append(
                benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median
            )
    return medians


def ratio(t: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a / b within each round: machine load that changes between rounds cancels."""
    return statistics.median(x / y for x, y in zip(t[a], t[b]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=25, help="sinusoid meta-batch")
    parser.add_argument("--conv-tasks", type=int, default=4)
    parser.add_argument("--no-conv", action="store_true")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per blocked_autorange")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workloads = [
        (f"sinusoid MLP 40-40, {args.tasks} tasks, 1 step", sinusoid, args.tasks, 1),
        (f"sinusoid MLP 40-40, {args.tasks} tasks, 5 steps", sinusoid, args.tasks, 5),
    ]
    if not args.no_conv:
        workloads.append(
            (f"Conv-4 Omniglot-sized 5-way 1-shot, {args.conv_tasks} tasks, 1 step", conv4, args.conv_tasks, 1)
        )
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"{datetime.date.today()}; second-order MAML, float32; ms per meta-training step (median)\n"
    )
    print(
        "| workload | meta_loss vmap | meta_loss loop | handle | hand-written loop | handle / hand-written "
        "| hand-written / vmap | gradients (rel. error) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for title, make, tasks, steps in workloads:
        worst = check(make, min(tasks, 4), steps)
        t = time_all(*implementations(make, tasks, steps, torch.float32), args.min_run_time, args.rounds)
        ms = {k: 1e3 * statistics.median(v) for k, v in t.items()}
        print(
            f"| {title} | {ms['meta_loss vmap']:.2f} | {ms['meta_loss loop']:.2f} | {ms['handle']:.2f} | "
            f"{ms['hand-written loop']:.2f} | {ratio(t, 'handle', 'hand-written loop'):.2f}x | "
            f"{ratio(t, 'hand-written loop', 'meta_loss vmap'):.1f}x | {worst:.1e} |",
            flush=True,
        )
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
