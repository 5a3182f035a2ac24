"""Does the coordinate-wise LSTM optimizer need its own (smaller) meta-learning rate?

    python benchmarks/lstm_optimizer_rates.py [--iterations 800]

MAML on sinusoids (K=10, meta-batch 25, Adam 1e-3 for the initialization, one inner step),
with plain SGD and with ``LearnedOptimizerLSTM`` whose own weights get Adam rates 1e-3
(the same as the initialization, what `innerloop train` does), 1e-4 and 1e-5. Prints the
median query MSE after 1 and 5 steps on 200 held-out 5-shot tasks, and the wall time.
One thread; seed 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from innerloop import MAML, SGD, LearnedOptimizerLSTM, SinusoidTasks
from innerloop.models import MLP


def run(make_rule, iterations: int, rule_lr: float) -> tuple[dict[int, float], float]:
    torch.manual_seed(0)  # the model's and the rule's initial weights
    learner = MAML(MLP(1, [40, 40], 1), update_rule=make_rule(), inner_steps=1)
    own = {id(p) for p in learner.update_rule.parameters()}
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in learner.parameters() if id(p) not in own]},
            {"params": list(learner.update_rule.parameters()), "lr": rule_lr},
        ],
        lr=1e-3,
    )
    tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    start = time.perf_counter()
    for iteration in range(iterations):
        optimizer.zero_grad()
        learner.meta_backward(tasks.sample(iteration, range(25)))
        optimizer.step()
    wall = time.perf_counter() - start
    held_out = SinusoidTasks(shots=5, queries=50, seed=123).sample(0, range(200))
    return {k: v["loss"].median().item() for k, v in learner.evaluate(held_out, [1, 5]).items()}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=800)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| inner update rule | Adam rate of the rule's weights | median MSE, 1 step | 5 steps | wall (s) |")
    print("| --- | --- | --- | --- | --- |")
    rows = [("SGD(0.01)", lambda: SGD(0.01), 1e-3)] + [
        ("LearnedOptimizerLSTM(0.01)", lambda: LearnedOptimizerLSTM(0.01), lr) for lr in (1e-3, 1e-4, 1e-5)
    ]
    for name, make, rule_lr in rows:
        mse, wall = run(make, args.iterations, rule_lr)
        rate = "-" if name.startswith("SGD") else f"{rule_lr:g}"
        print(f"| {name} | {rate} | {mse[1]:.3f} | {mse[5]:.3f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
