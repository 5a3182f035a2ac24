"""ANIL (Raghu et al. 2020) on Omniglot 5-way 1-shot: only the Conv-4 head adapts, the body is meta-learned.

Omniglot is read from ``--root``, else ``$INNERLOOP_DATA``, else ``../shared/data`` next to the
repository (``innerloop.data.omniglot``; ``--download`` fetches the official archives). Vinyals
et al.'s character split with rotations as classes.

    python examples/omniglot_anil.py --iterations 2000
"""

import argparse

import torch

from innerloop import ANIL
from innerloop.data import EpisodicTasks, fixed_tasks, omniglot
from innerloop.models import Conv4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="inner steps on the head")
    parser.add_argument("--eval-tasks", type=int, default=200)
    parser.add_argument("--root", default=None, help="data folder holding omniglot/")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--strategy", default="auto", choices=["auto", "vmap", "loop"], help="how tasks are batched")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = EpisodicTasks(
        omniglot(args.root, "vinyals-train", download=args.download), args.ways, args.shots, 15, args.seed
    )
    test = EpisodicTasks(
        omniglot(args.root, "vinyals-test", download=args.download), args.ways, args.shots, 15, args.seed
    )

    model = Conv4(in_channels=1, hidden=64, out_features=args.ways)  # Sequential: the last layer is the head
    learner = ANIL(model, inner_lr=0.4, inner_steps=args.steps, strategy=args.strategy)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for it in range(args.iterations):
        loss, metrics = learner.meta_loss(train.sample(it, range(args.meta_batch)))  # body features once per task
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == args.iterations - 1:
            print(f"iteration {it}: query loss {loss.item():.3f}, accuracy {metrics['accuracy'].item():.3f}")

    accuracy = []
    for batch in fixed_tasks(test, args.eval_tasks, 50):  # the same test tasks on every run
        accuracy.append(learner.evaluate(batch, [args.steps])[args.steps]["accuracy"])
    accuracy = torch.cat(accuracy)
    half_width = 1.96 * accuracy.std() / accuracy.numel() ** 0.5
    print(
        f"test: {args.ways}-way {args.shots}-shot accuracy {100 * accuracy.mean():.2f} +- {100 * half_width:.2f}% "
        f"over {accuracy.numel()} tasks after {args.steps} head steps"
    )


if __name__ == "__main__":
    main()
