"""MAML-TRPO on 2D navigation (Finn et al. 2017, section 5.3): a point agent reaches a goal it must find.

Goals are drawn from U[-0.5, 0.5]^2; each iteration adapts the policy to every task with one
policy-gradient step on ``--episodes`` rollouts, then takes a TRPO step on the post-adaptation
returns. The MAML paper's figures (return after 0 / 1 / 2 / 3 steps: -40.41 / -11.68 / -3.33 / -3.23)
take about 100 iterations (``innerloop train --config maml-trpo-nav2d`` runs the full protocol).

    python examples/maml_trpo_nav2d.py --iterations 100
"""

import argparse

import torch

from innerloop.rl import MAMLTRPO, make_family, make_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=20, help="tasks per meta-batch")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task per step")
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    family = make_family("nav2d")  # goals U[-0.5, 0.5]^2, horizon 100, batched in torch
    learner = MAMLTRPO(make_policy(family), family, inner_lr=0.1, episodes=args.episodes)
    for it in range(args.iterations):
        tasks = family.sample_tasks(args.tasks, torch.Generator().manual_seed(it))
        stats = learner.meta_step(tasks, seed=it)
        print(
            f"iteration {it}: return {stats['return_before']:.2f} before, {stats['return_after']:.2f} after "
            f"one step (KL {stats['kl']:.4f})"
        )

    # Unseen goals: returns after 0..3 policy-gradient steps (no graph kept).
    test = family.sample_tasks(args.eval_tasks, torch.Generator().manual_seed(10**6 + args.seed))
    draw = learner.sample(test, seed=10**6, steps=3)
    returns = [f"{draw.episodes[s].returns().double().mean():.2f}" for s in range(4)]
    print(f"unseen goals: return after 0 / 1 / 2 / 3 steps {' / '.join(returns)}")


if __name__ == "__main__":
    main()
