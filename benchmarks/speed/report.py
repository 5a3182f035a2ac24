"""The report: the machine's description, a text table and a markdown table for benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform

import torch


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(report: dict) -> str:
    m, p = report["machine"], report["peak"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s)"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + (
            f", 1-min load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end"
            if m.get("load_average_start") and m.get("load_average_end")
            else ""
        )
        + "  ",
        f"torch {report['torch']}, device {report['device']}, date {report['date']}"
        + (" (--quick: reduced sizes, see benchmarks/speed/README.md)" if report["quick"] else "")
        + "  ",
        f"Measured peak (fp32, same run, best of start/end): matmul {p['matmul']:.1f} GFLOP/s ({p['matmul_shape']}), "
        f"conv {p['conv']:.1f} GFLOP/s ({p['conv_shape']})",
        "",
        "| workload | implementation | ms / step (median) | IQR (ms) | tasks/s | innerloop auto is x faster | peak memory (MiB) "
        "| GFLOP / task | GFLOP/s | % of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in report["workloads"]:
        peak = p[w["peak_kind"]]
        for r in w["results"]:
            impl = r["impl"] + (f" (chose {', '.join(sorted(set(r['chosen'].values())))})" if r.get("chosen") else "")
            lines.append(
                f"| `{w['name']}` | {impl} | {r['median_ms']:.2f} | {r['iqr_ms']:.2f} | {r['tasks_per_s']:.1f} | "
                f"{r['speedup_innerloop_auto']:.2f} | {r['peak_mem_mib']:.1f} | {r['gflop_per_task']:.3g} | "
                f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f}% ({w['peak_kind']}) |"
            )
        for name, why in w["skipped"].items():
            lines.append(f"| `{w['name']}` | {name} | - | - | - | - | - | - | - | {why} |")
    lines.append("")
    lines.append(
        "Gradient agreement (float64, against the plain loop; worst relative error over impls): "
        + "; ".join(
            f"`{w['name']}` {max((e['rel_err'] for e in w['gradient_check']['errors'].values()), default=0):.1e}"
            for w in report["workloads"]
        )
    )
    return "\n".join(lines)


def text_table(report: dict) -> str:
    out = [
        f"{'workload':28s} {'implementation':18s} {'ms/step':>10s} {'tasks/s':>9s} {'x auto':>7s} {'MiB':>8s} "
        f"{'GFLOP/task':>10s} {'GFLOP/s':>8s} {'%peak':>6s}"
    ]
    for w in report["workloads"]:
        peak = report["peak"][w["peak_kind"]]
        for r in w["results"]:
            out.append(
                f"{w['name']:28s} {r['impl']:18s} {r['median_ms']:10.2f} {r['tasks_per_s']:9.1f} "
                f"{r['speedup_innerloop_auto']:7.2f} {r['peak_mem_mib']:8.1f} {r['gflop_per_task']:10.3g} "
                f"{r['gflops']:8.1f} {100 * r['gflops'] / peak:5.0f}%"
            )
        for name, why in w["skipped"].items():
            out.append(f"{w['name']:28s} {name:18s} skipped: {why}")
    return "\n".join(out)
