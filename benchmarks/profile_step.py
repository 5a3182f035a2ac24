"""Where the time of one meta-training step goes: the profile evidence behind the speed suite.

    python benchmarks/profile_step.py --workloads omniglot-maml-1step-2nd --tasks 8 --threads 1
    python benchmarks/profile_step.py --workloads omniglot-protonets --impls 'innerloop auto' --channels-last

For each workload of the speed suite, ``benchmarks/speed/`` (same models, batches and implementations), and
each chosen implementation, one step after ``--warmup`` untimed ones runs under
``torch.profiler``; the self time of every aten op is summed into a few kinds of work:

* ``conv``: convolution forward and backward kernels (oneDNN / native);
* ``matmul``: matrix products (linear layers);
* ``batch norm``, ``max pool``: the other layers of Conv-4 with their backward passes;
* ``copies``: copies, concatenations, layout changes (contiguous, channels_last);
* ``other``: elementwise arithmetic (ReLU, SGD updates, losses), reductions, autograd
  bookkeeping and everything else.

The conv kernels' own rate is the step's convolution FLOPs (``FlopCounterMode``, the same
counter as the suite) over their profiled time, beside this machine's conv peak measured in
the same run. Two ceilings follow from the profile, so that a speed target can be judged
against what the step's structure allows: the step's time if its conv work ran at the peak
and the rest were unchanged ("conv at peak"), and if only the conv work were left at the
peak ("conv only, at peak"). The profiler adds overhead per op, so the percentages matter
more than the absolute times (the suite's timings are the reference for those).

``--batched-conv`` adds the question behind batching tasks on a CPU: one 64->64 3x3 conv
layer, forward and backward, for T tasks with their own weights, run as a per-task loop,
as one grouped convolution (tasks as groups), and under ``torch.vmap`` (what the vmap
strategy runs), in NCHW and channels_last, interleaved, medians.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from speed import WORKLOADS, measure_peaks, select
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("conv", "matmul", "batch norm", "max pool", "copies", "other")


def kind_of(op: str) -> str:
    name = op.removeprefix("aten::")
    if "conv" in name:
        return "conv"
    if name in {"mm", "addmm", "bmm", "matmul", "linear", "baddbmm"}:
        return "matmul"
    if "batch_norm" in name:
        return "batch norm"
    if "max_pool" in name:
        return "max pool"
    if name in {"copy_", "contiguous", "clone", "cat", "stack", "to", "_to_copy", "empty_like"}:
        return "copies"
    return "other"


def profile_impl(workload, name: str, warmup: int) -> dict:
    impl = workload.impls[name](copy.deepcopy(workload.model))
    for _ in range(warmup):
        impl.zero_grad()
        impl.step(workload.batch)
    impl.zero_grad()
    with FlopCounterMode(display=False) as counter:
        impl.step(workload.batch)
    per_op = counter.get_flop_counts().get("Global", {})
    conv_flops = sum(v for op, v in per_op.items() if "conv" in str(op))
    impl.zero_grad()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        impl.step(workload.batch)
    ops = [(e.self_cpu_time_total / 1e6, e.key, e.count) for e in prof.key_averages() if e.key.startswith("aten::")]
    seconds = defaultdict(float)
    for self_seconds, op, _ in ops:
        seconds[kind_of(op)] += self_seconds
    top = sorted(ops, reverse=True)[:8]
    return {
        "impl": name,
        "seconds": dict(seconds),
        "total": sum(seconds.values()),
        "conv_flops": conv_flops,
        "all_flops": counter.get_total_flops(),
        "top": top,
    }


def batched_conv(tasks: int, images: int, side: int, repeats: int = 5) -> list[tuple[str, float]]:
    """Median ms of one conv layer's forward + backward for ``tasks`` tasks, three ways x two layouts."""
    g = torch.Generator().manual_seed(0)
    xs, ws = torch.randn(tasks, images, 64, side, side, generator=g), torch.randn(tasks, 64, 64, 3, 3, generator=g)

    def fmt(t: torch.Tensor, cl: bool) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if cl else t.contiguous()

    def loop(cl):
        w = ws.clone().requires_grad_()
        sum(F.conv2d(fmt(xs[t], cl).requires_grad_(), w[t], padding=1).square().sum() for t in range(tasks)).backward()

    def grouped(cl):  # (N, T*C, H, W) input, (T*O, C, 3, 3) weight: the T tasks are the groups
        x = fmt(xs.transpose(0, 1).reshape(images, tasks * 64, side, side), cl).requires_grad_()
        w = ws.clone().requires_grad_()
        F.conv2d(x, w.reshape(tasks * 64, 64, 3, 3), padding=1, groups=tasks).square().sum().backward()

    def vmapped(cl):
        x = torch.stack([fmt(xs[t], cl) for t in range(tasks)]).requires_grad_()
        w = ws.clone().requires_grad_()
        torch.vmap(lambda xi, wi: F.conv2d(xi, wi, padding=1))(x, w).square().sum().backward()

    runs = {
        f"{name}{' channels_last' if cl else ''}": (lambda f=f, cl=cl: f(cl))
        for cl in (False, True)
        for name, f in (("per-task loop", loop), ("grouped", grouped), ("vmap", vmapped))
    }
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return [(name, statistics.median(t)) for name, t in times.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workloads", nargs="*", default=["omniglot-maml-1step-2nd"], help="speed suite workload names or patterns"
    )
    parser.add_argument(
        "--impls", nargs="*", default=["innerloop auto", "plain loop"], help="implementation name patterns"
    )
    parser.add_argument("--tasks", type=int, help="meta-batch size (default: the workload's)")
    parser.add_argument("--queries", type=int, help="query examples per class")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--top", action="store_true", help="also list the 8 costliest aten ops of each impl")
    parser.add_argument(
        "--batched-conv", action="store_true", help="also time one conv layer for T tasks: loop, grouped, vmap"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = measure_peaks(torch.device("cpu"), quick=False)["conv"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); measured conv peak {peak:.1f} GFLOP/s\n")
    print(
        "| workload | implementation | profiled step (s) | "
        + " | ".join(f"{k} %" for k in KINDS)
        + " | conv kernels GFLOP/s (% of peak) | step if conv at peak | conv only, at peak |"
    )
    print("|" + " --- |" * (len(KINDS) + 6))
    tops = []
    for wname in select(args.workloads, quick=False):
        workload = WORKLOADS[wname](tasks=args.tasks, queries=args.queries).to("cpu", channels_last=args.channels_last)
        names = [n for n in workload.impls if any(fnmatch.fnmatch(n, p) for p in args.impls)]
        for name in names:
            r = profile_impl(workload, name, args.warmup)
            conv_s = r["seconds"].get("conv", 0.0)
            rate = r["conv_flops"] / conv_s / 1e9 if conv_s else float("nan")
            at_peak = r["conv_flops"] / peak / 1e9
            shares = " | ".join(f"{100 * r['seconds'].get(k, 0.0) / r['total']:.0f}" for k in KINDS)
            print(
                f"| `{wname}` | {name} | {r['total']:.2f} | {shares} | {rate:.0f} ({100 * rate / peak:.0f}%) | "
                f"{r['total'] - conv_s + at_peak:.2f} s | {at_peak:.2f} s |",
                flush=True,
            )
            tops.append((wname, name, r["top"]))
    if args.top:
        for wname, name, top in tops:
            print(f"\n{wname} / {name}: " + "; ".join(f"{op} {s * 1e3:.0f} ms x{n}" for s, op, n in top))
    if args.batched_conv:
        tasks = args.tasks or 8
        print(
            f"\nOne 64->64 3x3 conv layer, forward + backward, {tasks} tasks x 80 images of 14x14, each task its own weights:\n"
        )
        print("| how the tasks run | ms (median of 5) |\n| --- | --- |")
        for name, ms in batched_conv(tasks, 80, 14):
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
