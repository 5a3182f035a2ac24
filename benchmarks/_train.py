"""Shared by the benchmark scripts that drive `innerloop train` in a subprocess."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

from omegaconf import OmegaConf


def train_subprocess(command: list[str], log: Path, threads: int = 1) -> int:
    """Run ``command`` with ``threads`` torch threads, output to ``log``; return the child's own peak RSS in MB.

    ``os.wait4`` gives the peak of this child alone, even with other runs side by side.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return round(usage.ru_maxrss / 1024)


def ms_per_iteration(run_dir: Path, skip: int = 0) -> float:
    """Median wall time of one meta-training iteration, from the ``tasks_per_s`` of the run's metrics.jsonl.

    ``skip`` leaves out the first logged intervals (warm-up: allocator, first-call overheads).
    """
    meta_batch = OmegaConf.load(run_dir / "config.yaml").train.meta_batch_size
    rates = [
        r["tasks_per_s"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "tasks_per_s" in r
    ]
    if len(rates) <= skip:
        raise SystemExit(f"{run_dir}: {len(rates)} logged intervals, need more than {skip}")
    return round(1e3 * meta_batch / statistics.median(rates[skip:]), 2)
