"""Few-shot episode sampling speed (CPU by default).

    python benchmarks/sampling_speed.py [--seconds 5] [--device cpu] [--threads N]

1. Omniglot (Vinyals train split, 4112 rotated classes, 28x28), 5-way 1-shot 15-query,
   meta-batches of 32 tasks. Uses the real data if ``omniglot(None, "vinyals-train")`` finds it
   (``$INNERLOOP_DATA``, ``../shared/data``, ...), else synthetic data of the same shape.
2. mini-ImageNet-sized synthetic data (64 classes x 600 random 84x84x3 uint8 images, 813 MB),
   5-way 5-shot 15-query, meta-batches of 4 tasks.

Prints episodes (tasks) per second and milliseconds per meta-batch: the whole ``sample`` call
(index sampling + gather + rotation + float conversion) and the index sampling alone.

Beside each, the training side: the episodes per second that innerloop's cheapest
meta-training step consumes on the same batches (ProtoNets, Conv-4 embedding: one forward
and backward pass per image, no inner loop; 64 filters for Omniglot, 32 for mini-ImageNet as
in the papers), timed the same way. Sampling keeps up when its rate is above that one; the
ratio says by how much. (The loader builds batches in the training process, between steps;
the ratio is also the fraction of a step that sampling adds: 1 / ratio.)
"""

from __future__ import annotations

import argparse
import time

import torch

from innerloop.algorithms import ProtoNets
from innerloop.data import EpisodicTasks, ImageDataset, omniglot
from innerloop.models import Conv4


def timed(fn, seconds: float, sync=lambda: None) -> tuple[float, int]:
    fn(0)  # warm-up
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(n + 1)
        n += 1
    sync()
    return (time.perf_counter() - start) / n, n


def report(name: str, src: EpisodicTasks, batch: int, seconds: float, filters: int) -> None:
    tasks = range(batch)
    sync = torch.cuda.synchronize if src.device.type == "cuda" else (lambda: None)
    per_batch, n = timed(lambda d: src.sample(d, tasks), seconds, sync)
    per_plan, _ = timed(lambda d: src._plans(d, tasks), seconds / 4)
    b = src.sample(0, tasks)
    mb = sum(t.numel() * t.element_size() for t in (b.support_x, b.query_x)) / 2**20
    print(f"{name}\n  {src}\n  batch {batch} tasks, {mb:.1f} MiB of float images per batch, {n} batches timed")
    print(
        f"  {batch / per_batch:10.0f} episodes/s   {1 / per_batch:8.1f} meta-batches/s   "
        f"{per_batch * 1e3:7.2f} ms/meta-batch   (index sampling alone: {per_plan * 1e3:.2f} ms)"
    )
    learner = ProtoNets(Conv4(b.support_x.shape[-3], filters, image_size=b.support_x.shape[-1])).to(src.device)

    def train_step(_):
        learner.zero_grad(set_to_none=True)
        learner.meta_backward(b)

    per_step, steps = timed(train_step, seconds, sync)
    print(
        f"  training (ProtoNets, Conv-4-{filters}, forward + backward): {batch / per_step:.0f} episodes/s, "
        f"{per_step * 1e3:.1f} ms/meta-batch over {steps} steps -> sampling is {per_step / per_batch:.0f}x faster"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="timing length per benchmark")
    p.add_argument("--device", default=None, help="where images are stored and batches built (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device or 'cpu'}")

    try:
        t = time.perf_counter()
        train = omniglot(None, "vinyals-train")
        print(f"loaded {train} in {time.perf_counter() - t:.2f} s")
    except (FileNotFoundError, OSError) as e:
        print(f"Omniglot not found ({str(e)[:80]}...); using synthetic data of the same shape")
        g = torch.Generator().manual_seed(0)
        images = (torch.rand(1028 * 20, 1, 28, 28, generator=g) < 0.1).to(torch.uint8) * 255
        train = ImageDataset(
            images,
            torch.arange(1028).repeat_interleave(20),
            [f"c{i}" for i in range(1028)],
            rotations=((0, 90, 180, 270),) * 1028,
            name="synthetic omniglot",
        )
    report(
        "Omniglot 5-way 1-shot 15-query, 28x28",
        EpisodicTasks(train, 5, 1, 15, device=args.device),
        32,
        args.seconds,
        filters=64,
    )

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64 * 600, 3, 84, 84), dtype=torch.uint8, generator=g)
    mini = ImageDataset(
        images,
        torch.arange(64).repeat_interleave(600),
        [f"n{i:08d}" for i in range(64)],
        name="synthetic mini-ImageNet",
    )
    report(
        "mini-ImageNet-sized 5-way 5-shot 15-query, 3x84x84",
        EpisodicTasks(mini, 5, 5, 15, device=args.device),
        4,
        args.seconds,
        filters=32,
    )


if __name__ == "__main__":
    main()
