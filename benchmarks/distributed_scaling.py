"""Meta-training throughput on 1, 2, ... data-parallel processes (torchrun, gloo on CPU / NCCL on CUDA).

    python benchmarks/distributed_scaling.py [--procs 1 2] [--workloads sine omniglot] [--device cpu]

Each (workload, P) pair is a real ``innerloop train`` run: P = 1 is a plain process, P > 1 is
``torchrun --nproc-per-node=P``. The global meta-batch is the preset's (25 sinusoid tasks,
32 Omniglot 5-way 1-shot tasks), so every P does the same work per iteration. On CPU the
machine's cores are divided between the processes (OMP_NUM_THREADS = cores // P), so the
figure answers "does splitting the meta-batch across processes beat one process using all
cores?". Throughput is the median of the per-iteration tasks/s that rank 0 logs
(``metrics.jsonl``), after dropping warm-up iterations (the first steps time vmap against
the loop and build the graph); wall time is the whole command, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    # name: (preset, iterations, warm-up iterations dropped, extra overrides)
    "sine": ("maml-sine", 400, 50, []),
    # 15 queries per class, as measured in RESULTS.md (the preset now trains with the paper's 1)
    "omniglot": ("maml-omniglot-5w1s", 24, 4, ["task.queries=15"]),
}


def run(workload: str, procs: int, device: str, threads: int, out: Path) -> dict:
    preset, iterations, warmup, extra = WORKLOADS[workload]
    overrides = [
        *extra,
        f"train.iterations={iterations}",
        "train.log_every=1",
        "train.progress=false",
        f"train.device={device}",
        f"train.val_every={10 * iterations}",
        f"train.checkpoint_every={10 * iterations}",
    ]
    command = ["train", "--config", preset, "--out", str(out), "--no-evaluate", *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}"] if procs > 1 else []
    full = [*launcher, *(["-m", "innerloop"] if launcher else [sys.executable, "-m", "innerloop"]), *command]
    start = time.perf_counter()
    result = subprocess.run(full, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{workload} on {procs} processes failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tasks_per_s"] for r in records if "split" not in r and r["iteration"] > warmup]
    return {"tasks_per_s": statistics.median(rates), "iterations": len(rates), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["sine", "omniglot"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores divided among the processes")
    args = parser.parse_args()

    print(
        f"| workload | processes | threads each | median tasks/s | vs {args.procs[0]} process(es) | iterations timed | wall (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for workload in args.workloads:
        base = None
        for procs in args.procs:
            threads = max(1, args.cores // procs)
            with tempfile.TemporaryDirectory() as tmp:
                r = run(workload, procs, args.device, threads, Path(tmp) / "run")
            base = base or r["tasks_per_s"]
            print(
                f"| {workload} ({WORKLOADS[workload][0]}) | {procs} | {threads} | {r['tasks_per_s']:.1f} | "
                f"{r['tasks_per_s'] / base:.2f}x | {r['iterations']} | {r['wall_s']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
