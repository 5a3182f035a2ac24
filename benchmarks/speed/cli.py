"""Meta-training speed, side by side: innerloop against ``higher`` and a plain per-task loop.

    python benchmarks/speed                      # every workload, full size
    python benchmarks/speed --quick              # a subset at reduced sizes, fewer rounds
    python benchmarks/speed --device cuda        # the same suite on a GPU, unchanged
    python benchmarks/speed --markdown           # a table for benchmarks/RESULTS.md
    python benchmarks/speed --json runs/speed.json --workloads 'sine-*'

(``python -m benchmarks.speed`` from the repository root is the same.) What is measured and
how: benchmarks/speed/README.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import impls as peers
from .check import GradientMismatch
from .measure import measure_peaks, run_workload
from .report import machine_info, markdown, text_table
from .workloads import WORKLOADS, select


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a subset at reduced sizes, fewer rounds, smaller checks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table for benchmarks/RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="write every measurement to PATH")
    parser.add_argument(
        "--workloads", nargs="*", metavar="NAME", help=f"names or glob patterns; all: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--impls",
        nargs="*",
        metavar="NAME",
        help="glob patterns over implementation names (the plain-loop reference always runs)",
    )
    parser.add_argument("--tasks", type=int, help="override the meta-batch size of every workload")
    parser.add_argument(
        "--queries", type=int, help="override the query examples per class (per task for sine) of every workload"
    )
    parser.add_argument(
        "--repeats", type=int, help="timing rounds, each one blocked_autorange per impl (default 10, quick 3)"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=0.0,
        help="seconds of steps per impl and round (blocked_autorange's min_run_time; default 0: one block)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps per impl before the probe (default 2, quick 1)")
    parser.add_argument(
        "--check-tasks", type=int, help="tasks of the float64 gradient check (default 4; quick: 2 MLP, 1 conv)"
    )
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of the gradient check")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument(
        "--channels-last", action="store_true", help="conv models and images in channels_last, for every impl"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, log=None) -> dict:
    try:
        return _run(args, log)
    finally:
        gc.unfreeze()


def _run(args: argparse.Namespace, log=None) -> dict:
    started = time.perf_counter()
    log = log or (lambda msg: print(f"{time.perf_counter() - started:6.1f}s {msg}", file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    check_tasks = args.check_tasks if args.check_tasks is not None else (None if args.quick else 4)
    names = select(args.workloads, args.quick)
    report = {
        "command": "python benchmarks/speed " + " ".join(shlex.quote(a) for a in (getattr(args, "argv", None) or [])),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "device": str(device),
        "quick": args.quick,
        "machine": machine_info(device),
        "settings": {
            "warmup": warmup,
            "repeats": repeats,
            "rtol": args.rtol,
            "check_tasks": check_tasks if check_tasks is not None else "2 (MLP) / 1 (conv)",
            "flop_tasks": 4 if args.quick else "all",
            "channels_last": args.channels_last,
            "min_run_time": args.min_run_time,
            "timer": "torch.utils.benchmark.Timer.blocked_autorange, rounds interleaved over impls",
            "higher": getattr(peers.higher, "__version__", None) if peers.higher else peers.HIGHER_MISSING,
        },
        "workloads": [],
    }
    gc.collect()
    gc.freeze()  # torch's many long-lived objects out of the collector's way: gc.collect() below takes ms, not 0.2 s
    log(f"measuring this machine's peak ({device}) ...")
    start_peak = measure_peaks(device, args.quick)
    for name in names:
        t0 = time.perf_counter()
        workload = WORKLOADS[name](tasks=args.tasks, quick=args.quick, queries=args.queries)
        if args.impls:
            keep = {
                n for n in workload.impls if n == workload.reference or any(fnmatch.fnmatch(n, p) for p in args.impls)
            }
            keep |= {
                workload.same_flops_as[n] for n in keep if n in workload.same_flops_as
            }  # its FLOPs come from there
            workload.impls = {n: f for n, f in workload.impls.items() if n in keep}
        report["workloads"].append(
            run_workload(
                workload,
                device,
                warmup,
                repeats,
                check_tasks,
                args.rtol,
                args.channels_last,
                log,
                flop_tasks=4 if args.quick else None,
                min_run_time=args.min_run_time,
            )
        )
        report["workloads"][-1]["wall_s"] = time.perf_counter() - t0
    end_peak = measure_peaks(device, args.quick)
    report["peak"] = {
        **start_peak,
        "matmul": max(start_peak["matmul"], end_peak["matmul"]),
        "conv": max(start_peak["conv"], end_peak["conv"]),
        "start": {k: start_peak[k] for k in ("matmul", "conv")},
        "end": {k: end_peak[k] for k in ("matmul", "conv")},
    }
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for w in report["workloads"]:
        for r in w["results"]:
            r["fraction_of_peak"] = r["gflops"] / report["peak"][w["peak_kind"]]
    return report


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except GradientMismatch as err:
        print(f"GRADIENT MISMATCH, nothing timed:\n{err}", file=sys.stderr)
        raise SystemExit(2) from err
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report) if args.markdown else text_table(report))
    return report
