"""Why innerloop's batch norm is its own layer: torch's ``F.batch_norm`` under ``vmap`` with second-order
gradients, and what the fused kernel is worth outside ``vmap`` (innerloop/core/batchnorm.py).

    OMP_NUM_THREADS=1 python benchmarks/batchnorm_vmap.py --threads 1

1. Gradient: second-order MAML (one inner SGD step) of a conv + batch norm + linear net, float64, the
   meta-gradient of a meta-batch under ``torch.func.vmap`` with torch's ``F.batch_norm`` and with the
   elementary form innerloop uses under vmap, each against the per-task loop with ``F.batch_norm``; the
   loop itself against central finite differences along random directions.
2. Speed: forward + backward of one batch norm over a Conv-4 activation ``(B, 64, 28, 28)`` in float32, the
   fused kernel against the elementary form (``torch.utils.benchmark``, median and IQR).
"""

from __future__ import annotations

import argparse
import functools
import platform
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.utils.benchmark import Timer

DIMS = [0, 2, 3]


def fused_bn(h, weight, bias):
    return F.batch_norm(h, None, None, weight, bias, training=True)


def elementary_bn(h, weight, bias):
    """innerloop's form under vmap (TransductiveBatchNorm.forward): two-pass statistics over batch and space."""
    mean = h.mean(DIMS, keepdim=True)
    var = (h - mean).pow(2).mean(DIMS, keepdim=True)
    return (h - mean) * torch.rsqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def net(params, x, bn):
    """conv -> batch norm -> tanh -> 2x2 mean pool -> linear: smooth, so finite differences are exact to ~1e-9."""
    h = torch.tanh(bn(F.conv2d(x, params["conv"], padding=1), params["bn_weight"], params["bn_bias"]))
    return F.linear(F.avg_pool2d(h, 2).flatten(1), params["head"])


def query_loss(params, sx, sy, qx, qy, bn, lr):
    """Second-order MAML: one inner SGD step on the support set, the query loss at the adapted weights."""
    g = grad(lambda p: F.cross_entropy(net(p, sx, bn), sy))(params)
    return F.cross_entropy(net({k: params[k] - lr * g[k] for k in params}, qx, bn), qy)


def meta_loss(params, batch, bn, strategy, lr):
    if strategy == "vmap":
        return vmap(functools.partial(query_loss, bn=bn, lr=lr), in_dims=(None, 0, 0, 0, 0))(params, *batch).mean()
    return torch.stack([query_loss(params, *task, bn=bn, lr=lr) for task in zip(*batch)]).mean()


def relative(a: dict, b: dict) -> float:
    diff = sum((a[k] - b[k]).pow(2).sum() for k in a).sqrt()
    return float(diff / sum(b[k].pow(2).sum() for k in b).sqrt())


def gradient_check(tasks: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    ways, shots, queries, channels, size = 5, 1, 3, 8, 8
    params = {
        "conv": 0.3 * torch.randn(channels, 1, 3, 3, **kw),
        "bn_weight": 1 + 0.1 * torch.randn(channels, **kw),
        "bn_bias": 0.1 * torch.randn(channels, **kw),
        "head": 0.3 * torch.randn(ways, channels * (size // 2) ** 2, **kw),
    }
    labels = torch.arange(ways)
    batch = (
        torch.randn(tasks, ways * shots, 1, size, size, **kw),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        torch.randn(tasks, ways * queries, 1, size, size, **kw),
        labels.repeat_interleave(queries).repeat(tasks, 1),
    )
    lr = 0.4
    loop = grad(meta_loss)(params, batch, fused_bn, "loop", lr)
    worst_fd = 0.0
    for _ in range(3):  # the loop's meta-gradient against central differences along random directions
        d = {k: torch.randn(v.shape, **kw) for k, v in params.items()}
        eps = 1e-5
        plus = meta_loss({k: params[k] + eps * d[k] for k in params}, batch, fused_bn, "loop", lr)
        minus = meta_loss({k: params[k] - eps * d[k] for k in params}, batch, fused_bn, "loop", lr)
        fd = float((plus - minus) / (2 * eps))
        exact = float(sum((loop[k] * d[k]).sum() for k in params))
        worst_fd = max(worst_fd, abs(fd - exact) / abs(exact))
    return {
        "loop F.batch_norm vs finite differences": worst_fd,
        "vmap F.batch_norm vs loop": relative(grad(meta_loss)(params, batch, fused_bn, "vmap", lr), loop),
        "vmap elementary vs loop": relative(grad(meta_loss)(params, batch, elementary_bn, "vmap", lr), loop),
    }


def speed(batch: int, min_run_time: float) -> dict[str, tuple[float, float]]:
    h = torch.randn(batch, 64, 28, 28, requires_grad=True)
    weight, bias = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    out = {}
    for name, bn in (("fused F.batch_norm", fused_bn), ("elementary", elementary_bn)):
        timer = Timer(
            "bn(h, weight, bias).sum().backward()",
            globals={"bn": bn, "h": h, "weight": weight, "bias": bias},
            num_threads=torch.get_num_threads(),
        )
        m = timer.blocked_autorange(min_run_time=min_run_time)
        out[name] = (1e3 * m.median, 1e3 * m.iqr)
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="independent draws of the gradient check")
    parser.add_argument("--batch", type=int, default=80, help="examples of the timed activation (5-way, 16 each)")
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} thread(s), "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n"
    )
    print(f"| seed | {' | '.join(gradient_check(1, 0))} |\n| --- |" + " --- |" * 3)
    for seed in range(args.seeds):
        errors = gradient_check(args.tasks, seed)
        print(f"| {seed} | " + " | ".join(f"{e:.1e}" for e in errors.values()) + " |")
    print(f"\nforward + backward, ({args.batch}, 64, 28, 28) float32:\n\n| batch norm | ms (median) | IQR (ms) |")
    print("| --- | --- | --- |")
    timed = speed(args.batch, args.min_run_time)
    for name, (median, iqr) in timed.items():
        print(f"| {name} | {median:.2f} | {iqr:.2f} |")
    ratio = timed["elementary"][0] / timed["fused F.batch_norm"][0]
    print(f"\nthe fused kernel takes 1/{ratio:.2f} of the elementary form's time")


if __name__ == "__main__":
    main()
