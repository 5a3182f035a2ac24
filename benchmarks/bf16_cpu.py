"""Is bfloat16 a speed route on this machine? fp32 against bf16, side by side, at the sizes that matter here.

    python benchmarks/bf16_cpu.py [--threads N] [--device cpu|cuda]

Times (median of ``--repeats`` after one warm-up, interleaved): a 1024^2 matrix product; a
Conv-4-sized 3x3 convolution (400 maps of 64x14x14, 64 filters) forward and backward, in NCHW
and channels_last; and whole meta-training steps under ``torch.autocast(dtype=bfloat16)``
against float32: a ProtoNets 60-way 5-shot episode and 8 tasks of second-order MAML (Conv-4-64,
5-way 1-shot 15 queries). Prints torch's CPU capability (bf16 needs AVX512-BF16 or AMX to be fast).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from innerloop import MAML, ProtoNets
from innerloop.models import Conv4
from innerloop.tasks.batch import TaskBatch


def median_ms(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def episodes(tasks: int, ways: int, shots: int, queries: int, device) -> TaskBatch:
    g = torch.Generator().manual_seed(0)

    def labels(k: int) -> torch.Tensor:
        return torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)

    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, 28, 28, generator=g),
        labels(shots),
        torch.randn(tasks, ways * queries, 1, 28, 28, generator=g),
        labels(queries),
    ).to(device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    capability = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}: {capability}")
    print("| operation | float32 (ms) | bfloat16 (ms) | bf16 speed-up |")
    print("| --- | --- | --- | --- |")

    def row(name: str, fp32, bf16) -> None:
        a, b = median_ms(fp32, args.repeats, sync), median_ms(bf16, args.repeats, sync)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)

    m = torch.randn(1024, 1024, device=device)
    row("matmul 1024^2", lambda: m @ m, lambda: m.bfloat16() @ m.bfloat16())
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(400, 64, 14, 14, device=device).contiguous(memory_format=layout)
        w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=layout)

        def conv(dtype, x=x, w=w):
            xx, ww = x.to(dtype), w.to(dtype).requires_grad_()
            F.conv2d(xx, ww, padding=1).sum().backward()

        name = "NCHW" if layout is torch.contiguous_format else "channels_last"
        row(f"conv 3x3 64->64 on 400x14x14, fwd+bwd, {name}", lambda: conv(torch.float32), lambda: conv(torch.bfloat16))
    for name, learner, batch in [
        ("ProtoNets step, 60-way 5-shot 5 queries", ProtoNets(Conv4(1, 64)), episodes(1, 60, 5, 5, device)),
        (
            "MAML step, 2nd order, 8 tasks 5-way 1-shot 15 queries",
            MAML(Conv4(1, 64, 5), inner_lr=0.4, strategy="loop"),
            episodes(8, 5, 1, 15, device),
        ),
    ]:
        learner.to(device)

        def step(autocast: bool, learner=learner, batch=batch):
            learner.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                learner.meta_backward(batch)

        row(f"{name} (autocast)", lambda: step(False), lambda: step(True))


if __name__ == "__main__":
    main()
