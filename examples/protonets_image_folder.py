"""Prototypical Networks (Snell et al. 2017) on your own images: a ``root/<class>/<image>`` folder.

The classes are split (seeded) into meta-training and held-out test classes; episodes are N-way
K-shot tasks drawn from each. Images are decoded once (Pillow); grayscale folders stay one channel
with ``--mode L``. Ink polarity: the model learns either, but keep it the same in every image.

    python examples/protonets_image_folder.py path/to/root --ways 5 --shots 1 --iterations 2000
"""

import argparse

import torch

from innerloop import ProtoNets
from innerloop.data import EpisodicTasks, fixed_tasks, image_folder
from innerloop.models import Conv4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a folder root/<class>/<image>")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=1, help="episodes per iteration (the paper: 1)")
    parser.add_argument("--image-size", type=int, default=None, help="resize to this side (default: the files' size)")
    parser.add_argument("--mode", default="RGB", choices=["RGB", "L"], help="L: grayscale, one channel")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of the classes held out for testing")
    parser.add_argument("--eval-tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = image_folder(args.root, image_size=args.image_size, mode=args.mode)
    order = torch.randperm(data.num_classes, generator=torch.Generator().manual_seed(args.seed)).tolist()
    held_out = max(args.ways, round(args.test_fraction * data.num_classes))
    if data.num_classes - held_out < args.ways:
        raise SystemExit(
            f"{args.root} has {data.num_classes} classes: too few for {args.ways}-way training and "
            f"{held_out} test classes; add classes or lower --ways"
        )
    train = EpisodicTasks(data.subset(order[held_out:]), args.ways, args.shots, args.queries, args.seed)
    test = EpisodicTasks(data.subset(order[:held_out]), args.ways, args.shots, args.queries, args.seed)
    print(f"{data}: {data.num_classes - held_out} training classes, {held_out} test classes")

    channels, side = data.image_shape[0], data.image_shape[1]
    learner = ProtoNets(Conv4(in_channels=channels, hidden=64, image_size=side))
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for it in range(args.iterations):
        loss, metrics = learner.meta_loss(train.sample(it, range(args.meta_batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == args.iterations - 1:
            print(f"iteration {it}: loss {loss.item():.3f}, accuracy {metrics['accuracy'].item():.3f}")

    accuracy = torch.cat([learner.evaluate(batch)[0]["accuracy"] for batch in fixed_tasks(test, args.eval_tasks, 50)])
    half_width = 1.96 * accuracy.std() / accuracy.numel() ** 0.5
    print(
        f"held-out classes: {args.ways}-way {args.shots}-shot accuracy {100 * accuracy.mean():.2f} "
        f"+- {100 * half_width:.2f}% over {accuracy.numel()} tasks"
    )


if __name__ == "__main__":
    main()
