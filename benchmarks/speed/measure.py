"""Measurement of one workload: peak memory of a step, its time (``torch.utils.benchmark``), its FLOPs."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import resource

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Measurement, Timer
from torch.utils.flop_counter import FlopCounterMode

from .check import check_gradients
from .impls import AUTO
from .workloads import Workload


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory a step adds: CUDA max allocated, or CPU resident-set growth (see module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated - allocated before"
        else:
            _malloc_trim()
            if _reset_peak_rss() and _proc_status("VmHWM") is not None:
                self.before = _proc_status("VmRSS")
                self.method = "rss: VmHWM - VmRSS before (after malloc_trim, HWM reset)"
            else:
                self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self.method = "ru_maxrss growth (lower bound: no HWM reset)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("rss"):
            peak = _proc_status("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(peak - self.before, 0)
        return False


def _timer(stmt: str, label: str, description: str, **globals) -> Timer:
    """A ``torch.utils.benchmark.Timer`` at this process's thread count (its own default is 1 thread)."""
    return Timer(
        stmt,
        setup="gc.collect()",
        globals={"gc": gc, **globals},
        label=label,
        description=description,
        num_threads=torch.get_num_threads(),
    )


def time_round_robin(timers: dict[str, Timer], rounds: int, min_run_time: float = 0.0) -> dict[str, Measurement]:
    """``rounds`` x ``blocked_autorange`` of every timer, interleaved so that load changes hit them alike;
    each timer's blocks merged into one :class:`Measurement` (times per step: ``.median``, ``.iqr``, ``.times``)."""
    blocks: dict[str, list[Measurement]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            blocks[name].append(timer.blocked_autorange(min_run_time=min_run_time))
    return {name: Measurement.merge(parts)[0] for name, parts in blocks.items()}


def _best_rate(stmt: str, flops: float, min_run_time: float, **globals) -> float:
    """GFLOP/s of ``stmt`` at its fastest block."""
    measurement = _timer(stmt, "peak", stmt, **globals).blocked_autorange(min_run_time=min_run_time)
    return flops / min(measurement.times) / 1e9


def measure_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """This machine's fp32 GFLOP/s on a large matrix product and a 64->64 3x3 conv (channels_last)."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    matmul = _best_rate("a @ b", 2 * n**3, 0.3 if quick else 2.0, a=a, b=b)
    batch = 16 if quick else 64
    x = torch.randn(batch, 64, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    conv = _best_rate(
        "F.conv2d(x, w, padding=1)", 2 * batch * 64 * 64 * 9 * 28 * 28, 0.3 if quick else 2.0, F=F, x=x, w=w
    )
    return {
        "matmul": matmul,
        "conv": conv,
        "matmul_shape": f"{n}x{n} @ {n}x{n}",
        "conv_shape": f"{batch}x64x28x28 * 64x64x3x3, padding 1, channels_last",
    }


def run_workload(
    workload: Workload,
    device: torch.device,
    warmup: int,
    repeats: int,
    check_tasks: int | None,
    rtol: float,
    channels_last: bool = False,
    log=print,
    flop_tasks: int | None = None,
    min_run_time: float = 0.0,
) -> dict:
    """Check the gradients, then measure every impl of ``workload``: memory, time, FLOPs (see README.md)."""
    if check_tasks is None:  # --quick: 2 tasks of the MLP workloads, 1 of the (float64-costly) conv ones
        check_tasks = 2 if workload.peak_kind == "matmul" else 1
    log(f"[{workload.name}] gradient check (float64, {min(check_tasks, workload.batch.num_tasks)} tasks) ...")
    check = check_gradients(workload, check_tasks, rtol, device, channels_last=channels_last)
    worst = max((v["rel_err"] for v in check.values()), default=0.0)
    log(f"[{workload.name}]   all {len(check) + 1} impls agree (worst relative error {worst:.1e})")
    w = workload.to(device, channels_last=channels_last)
    tasks = w.batch.num_tasks
    impls = {name: factory(copy.deepcopy(w.model)) for name, factory in w.impls.items()}
    rows = {name: {"impl": name, "family": impl.family} for name, impl in impls.items()}
    for name, impl in impls.items():  # warm-up, then one untimed probe of memory
        for _ in range(warmup):
            impl.zero_grad()
            impl.step(w.batch)
            _sync(device)
        impl.zero_grad()
        with MemoryProbe(device) as mem:
            impl.step(w.batch)
        rows[name].update(peak_mem_mib=mem.bytes / 2**20, memory_method=mem.method)
    timers = {
        name: _timer("impl.zero_grad(); impl.step(batch)", w.name, name, impl=impl, batch=w.batch)
        for name, impl in impls.items()
    }
    for name, measurement in time_round_robin(timers, repeats, min_run_time).items():
        rows[name].update(
            times_ms=[1e3 * t for t in measurement.times],
            median_ms=1e3 * measurement.median,
            iqr_ms=1e3 * measurement.iqr,
            noisy=measurement.has_warnings,  # torch.utils.benchmark: IQR large against the median
        )
    # FLOPs after the timed steps, and never under torch.compile: once compiled code meets FlopCounterMode's
    # dispatch mode it runs as slow as eager from then on.
    counted = w.batch if not flop_tasks or flop_tasks >= tasks else w.batch[:flop_tasks]
    for name, impl in impls.items():
        if name in w.same_flops_as:
            continue
        if counted is not w.batch:  # FLOPs of the first tasks only (--quick): counting costs Python time per op
            impl.zero_grad()
            impl.step(counted)  # "auto" may key its choice on the number of tasks: resolve it before counting
        impl.zero_grad()
        with FlopCounterMode(display=False) as flops:
            impl.step(counted)
        rows[name].update(
            flop_tasks=counted.num_tasks, gflop_per_task=flops.get_total_flops() / counted.num_tasks / 1e9
        )
    for name, twin in w.same_flops_as.items():
        rows[name].update(flop_tasks=rows[twin]["flop_tasks"], gflop_per_task=rows[twin]["gflop_per_task"])
    for name, impl in impls.items():
        row = rows[name]
        row["tasks_per_s"] = tasks / row["median_ms"] * 1e3
        row["gflops"] = row["gflop_per_task"] * row["tasks_per_s"]
        row.update(impl.info())
        log(
            f"[{workload.name}]   {name:16s} {row['median_ms']:10.2f} ms (IQR {row['iqr_ms']:.2f})  {row['tasks_per_s']:9.1f} tasks/s  "
            f"{row['peak_mem_mib']:8.1f} MiB  {row['gflop_per_task']:.3f} GFLOP/task"
        )
    ours = [r for r in rows.values() if r["family"] == "innerloop"]
    best = min(ours, key=lambda r: r["median_ms"])
    auto = rows.get(AUTO, best)
    for row in rows.values():
        row["speedup_innerloop_auto"] = row["median_ms"] / auto["median_ms"]
        row["speedup_innerloop_best"] = row["median_ms"] / best["median_ms"]
    return {
        "name": w.name,
        "description": w.description,
        "tasks": tasks,
        "peak_kind": w.peak_kind,
        "gradient_check": {
            "reference": w.reference,
            "dtype": "float64",
            "tasks": min(check_tasks, tasks),
            "rtol": rtol,
            "errors": check,
        },
        "innerloop_best": best["impl"],
        "results": list(rows.values()),
        "skipped": w.skipped,
    }
