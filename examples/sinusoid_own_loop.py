"""MAML on sinusoid regression (Finn et al. 2017, section 5.1) in your own training loop.

The loop a learn2learn user writes, line for line: one handle per task (``learner.clone()``),
``task.adapt(loss)`` on any scalar loss, then the query loss backward. The batched path,
``learner.meta_loss(batch)``, computes the same meta-gradient with all tasks under vmap (faster):
see README, "Coming from learn2learn / higher".

    python examples/sinusoid_own_loop.py --iterations 2000
"""

import argparse

import torch
import torch.nn.functional as F

from innerloop import MAML, SinusoidTasks
from innerloop.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1, help="inner steps")
    parser.add_argument("--proximal", type=float, default=0.0, help="weight of ||phi - theta||^2 in the inner loss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    learner = MAML(MLP(1, [40, 40], 1), inner_lr=0.01, first_order=False)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    tasks = SinusoidTasks(shots=10, queries=10, seed=args.seed)

    for it in range(args.iterations):
        batch = tasks.sample(it, range(args.meta_batch))
        opt.zero_grad()
        total = 0.0
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
            task = learner.clone()
            for _ in range(args.steps):
                loss = F.mse_loss(task(sx), sy)
                if args.proximal:  # any scalar works: here a pull towards the initialization
                    loss = loss + args.proximal * sum(
                        ((task.params[n] - task.initial_params[n]) ** 2).sum() for n in task.adapted_names
                    )
                task.adapt(loss)
            query_loss = F.mse_loss(task(qx), qy)
            (query_loss / args.meta_batch).backward()
            total += query_loss.item() / args.meta_batch
        opt.step()
        if it % 100 == 0 or it == args.iterations - 1:
            print(f"iteration {it}: query MSE after {args.steps} step(s) {total:.3f}")

    # 100 unseen tasks: query MSE before and after 10 steps on each support set (model untouched).
    mse, new = {0: [], 10: []}, tasks.sample(10**6, range(100))
    for sx, sy, qx, qy in zip(new.support_x, new.support_y, new.query_x, new.query_y):
        task = learner.clone(first_order=True)  # test time: no second-order graph needed
        mse[0].append(F.mse_loss(task(qx), qy).item())
        for _ in range(10):
            task.adapt(F.mse_loss(task(sx), sy))
        mse[10].append(F.mse_loss(task(qx), qy).item())
    print(
        f"unseen tasks: mean query MSE {sum(mse[0]) / 100:.3f} before adaptation, {sum(mse[10]) / 100:.3f} after 10 steps"
    )


if __name__ == "__main__":
    main()
