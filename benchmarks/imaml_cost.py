"""iMAML's memory and time per meta-step against second-order MAML, and its meta-gradient beside TorchOpt's.

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/torchopt python benchmarks/imaml_cost.py --inner-steps 5 20 50 --tasks 4

Part 1: the same seeded Omniglot 5-way 1-shot training episodes (1 query per class, as the papers train) on
MAML's strided Conv-4-64 (``pool="stride"``); for each number of inner steps, iMAML (lambda 2, 5 CG steps,
damping 1, the imaml-omniglot-5w1s preset) and second-order MAML (the same inner rate), both ``strategy=loop``,
timed round-robin: the median wall time of ``meta_backward`` over ``--repeats`` rounds after one warm-up, and the
peak resident-set growth of one ``meta_backward`` (the speed suite's ``MemoryProbe``: VmHWM - VmRSS after
``malloc_trim`` and a high-water-mark reset), the largest over the rounds.

Part 2: TorchOpt's implicit differentiation (``torchopt.diff.implicit.custom_root`` on the stationarity condition
``grad_phi G = 0`` of the proximal problem, ``torchopt.linear_solve.solve_cg`` with the same number of CG steps,
the solver's gradient-descent steps written as TorchOpt's iMAML example does) on the same episodes and network in
float64, against ``innerloop.IMAML`` with ``cg_damping=0`` (the same linear system): the relative difference of
the two meta-gradients and the median time of each. TorchOpt runs per task in a Python loop (it does not run
under ``vmap``: its issue #223); it is imported from PYTHONPATH (install it with ``pip install --target DIR``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

sys.path.insert(0, str(Path(__file__).parent))
from speed import MemoryProbe

from innerloop import IMAML, MAML
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch
from innerloop.training.builders import build_tasks
from innerloop.training.config import load_config

LAM, CG_STEPS, INNER_LR = 2.0, 5, 0.1


def episodes(tasks: int, queries: int) -> TaskBatch:
    """Seeded Omniglot 5-way 1-shot training episodes (the imaml-omniglot-5w1s preset's task settings)."""
    config = load_config("imaml-omniglot-5w1s", [f"task.queries={queries}", "train.seed=0"])
    return build_tasks(config, "train").sample(0, range(tasks))


def network(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(1, 64, out_features=5, pool="stride")


def cost_table(batch: TaskBatch, inner_steps: list[int], repeats: int) -> None:
    print("| inner steps | learner | ms / meta-step (median) | peak RSS growth of one meta-step (MiB) |")
    print("| --- | --- | --- | --- |")
    for steps in inner_steps:
        learners = {
            "iMAML (CG 5)": IMAML(
                network(), INNER_LR, steps, lam=LAM, cg_steps=CG_STEPS, cg_damping=1.0, strategy="loop"
            ),
            "MAML 2nd order": MAML(network(), inner_lr=INNER_LR, inner_steps=steps, strategy="loop"),
        }
        rows = {name: {"ms": [], "mib": 0.0} for name in learners}
        for _ in range(repeats + 1):  # round-robin; the first round is a warm-up
            for name, learner in learners.items():
                learner.zero_grad()
                with MemoryProbe(torch.device("cpu")) as probe:
                    start = time.perf_counter()
                    learner.meta_backward(batch)
                    elapsed = time.perf_counter() - start
                rows[name]["ms"].append(1e3 * elapsed)
                if len(rows[name]["ms"]) > 1:  # after the warm-up (its first-call allocations are not the step's)
                    rows[name]["mib"] = max(rows[name]["mib"], probe.bytes / 2**20)
        for name, row in rows.items():
            print(f"| {steps} | {name} | {statistics.median(row['ms'][1:]):.0f} | {row['mib']:.1f} |")
    print(f"memory: {probe.method}")


def torchopt_meta_gradient(model: torch.nn.Module, batch: TaskBatch, steps: int) -> list[torch.Tensor]:
    """The iMAML meta-gradient of the mean query loss by TorchOpt's implicit differentiation (its iMAML pattern)."""
    import torchopt

    names = [n for n, _ in model.named_parameters()]
    meta = tuple(p for _, p in model.named_parameters())

    def forward(params, x):
        return functional_call(model, dict(zip(names, params)), (x,))

    def objective(params, meta_params, x, y):  # G(phi) = L_support(phi) + lambda/2 ||phi - theta||^2
        proximal = sum(((p - m) ** 2).sum() for p, m in zip(params, meta_params))
        return F.cross_entropy(forward(params, x), y) + LAM / 2 * proximal

    @torchopt.diff.implicit.custom_root(
        grad(objective, argnums=0), argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=CG_STEPS, atol=0.0)
    )
    def solve(params, meta_params, x, y):
        with torch.enable_grad():
            for _ in range(steps):
                params = tuple(p.detach().requires_grad_() for p in params)
                grads = torch.autograd.grad(objective(params, meta_params, x, y), params)
                params = tuple(p - INNER_LR * g for p, g in zip(params, grads))
        return tuple(p.detach() for p in params)

    for p in meta:
        p.grad = None
    for i in range(batch.num_tasks):
        phi = solve(tuple(p.detach().clone() for p in meta), meta, batch.support_x[i], batch.support_y[i])
        loss = F.cross_entropy(forward(phi, batch.query_x[i]), batch.query_y[i]) / batch.num_tasks
        loss.backward()
    return [p.grad.clone() for p in meta]


def innerloop_meta_gradient(learner: IMAML, batch: TaskBatch) -> list[torch.Tensor]:
    learner.zero_grad()
    learner.meta_backward(batch)
    return [p.grad.clone() for p in learner.model.parameters()]


def torchopt_table(batch: TaskBatch, steps: int, repeats: int) -> None:
    try:
        import torchopt
    except Exception as err:  # recorded, as the issue asks
        print(f"TorchOpt did not import: {type(err).__name__}: {err}")
        return
    batch = batch.to(torch.float64)
    base = network().double()
    learner = IMAML(copy.deepcopy(base), INNER_LR, steps, lam=LAM, cg_steps=CG_STEPS, strategy="loop")
    vmapped = IMAML(copy.deepcopy(base), INNER_LR, steps, lam=LAM, cg_steps=CG_STEPS, strategy="vmap")
    peer = copy.deepcopy(base)
    for m in peer.modules():  # batch statistics only, as innerloop's transductive batch norm (no buffer updates)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    ours = innerloop_meta_gradient(learner, batch)
    try:
        theirs = torchopt_meta_gradient(peer, batch, steps)
    except Exception as err:  # recorded: the exact error
        print(f"TorchOpt {torchopt.__version__} failed on torch {torch.__version__}: {type(err).__name__}: {err}")
        return
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
    rel = (flat(ours) - flat(theirs)).norm() / flat(theirs).norm()
    print(
        f"TorchOpt {torchopt.__version__} on torch {torch.__version__}: float64 meta-gradient, {batch.num_tasks} tasks, "
        f"{steps} inner steps, CG {CG_STEPS}: relative difference |g_innerloop - g_torchopt| / |g_torchopt| = {rel:.2e}"
    )
    times: dict[str, list[float]] = {"innerloop IMAML loop": [], "innerloop IMAML vmap": [], "TorchOpt custom_root": []}
    for _ in range(repeats + 1):
        for name, run in (
            ("innerloop IMAML loop", lambda: innerloop_meta_gradient(learner, batch)),
            ("innerloop IMAML vmap", lambda: innerloop_meta_gradient(vmapped, batch)),
            ("TorchOpt custom_root", lambda: torchopt_meta_gradient(peer, batch, steps)),
        ):
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    print("| implementation (float64) | ms / meta-gradient (median) |")
    print("| --- | --- |")
    for name, ms in times.items():
        print(f"| {name} | {statistics.median(ms[1:]):.0f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner-steps", type=int, nargs="*", default=[5, 20, 50])
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch")
    parser.add_argument("--queries", type=int, default=1, help="query images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--torchopt-steps", type=int, default=16, help="inner steps of the TorchOpt comparison (0: skip)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"CPU: {platform.processor() or platform.machine()}, 1 thread, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"Omniglot 5-way 1-shot, {args.queries} query/class, {args.tasks} tasks, strided Conv-4-64, "
        f"inner rate {INNER_LR}, lambda {LAM}"
    )
    batch = episodes(args.tasks, args.queries)
    if args.inner_steps:
        cost_table(batch, args.inner_steps, args.repeats)
    if args.torchopt_steps:
        torchopt_table(batch, args.torchopt_steps, args.repeats)


if __name__ == "__main__":
    main()
