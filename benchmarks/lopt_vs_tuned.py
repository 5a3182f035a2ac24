"""A learned optimizer meta-trained by Persistent ES against tuned Adam and tuned SGD-momentum (issue 21).

    .venv/bin/python benchmarks/lopt_vs_tuned.py [--family sine-mlp-40] [--rule adam-correction|lopt-mlp]
        [--iterations 200] [--steps 100] [--truncation 10] [--eval-tasks 20]

Tunes ``torch.optim.Adam`` and ``torch.optim.SGD(momentum=0.9)`` over a log grid of learning rates (1e-4 .. 1,
9 values) on 8 tasks of the family, builds the rule at the tuned Adam's rate (``AdamCorrection`` then starts as
that Adam), meta-trains it with ``PersistentES`` (8 antithetic pairs, the ``mean`` objective over runs of
``--steps`` inner steps, truncations of ``--truncation``), then reports the loss after ``--steps`` steps (train stream, batch ``steps``) on ``--eval-tasks`` held-out tasks:
mean and 95% CI.
"""

from __future__ import annotations

import argparse
import time

import torch

from innerloop.core.rules import AdamCorrection, MLPOptimizer
from innerloop.stats import summarize
from innerloop.tasks.seeding import derive_seed
from innerloop.unroll import MetaTraining, PersistentES, Unroll, meta_split

GRID = [10**e for e in torch.linspace(-4, 0, 9).tolist()]
RULES = {"adam-correction": AdamCorrection, "lopt-mlp": MLPOptimizer}  # built at the tuned Adam's rate


def torch_optim_final(family, seeds, steps, make) -> torch.Tensor:
    """Loss after ``steps`` steps of a ``torch.optim`` optimizer, per task."""
    out = []
    for seed in seeds:
        params = {k: v.clone().requires_grad_(True) for k, v in family.init(seed).items()}
        opt = make(list(params.values()))
        for t in range(steps):
            opt.zero_grad()
            family.loss(params, family.batch(seed, t, "train")).backward()
            opt.step()
        with torch.no_grad():
            out.append(family.loss(params, family.batch(seed, steps, "train")))
    return torch.stack(out).detach()


def tuned(family, tune_seeds, eval_seeds, steps, make) -> tuple[float, torch.Tensor]:
    """The grid rate with the lowest mean final loss on ``tune_seeds`` (non-finite: worst), and its eval losses."""
    scores = []
    for lr in GRID:
        v = torch_optim_final(family, tune_seeds, steps, lambda p, lr=lr: make(p, lr))
        scores.append(float(v.mean()) if torch.isfinite(v).all() else float("inf"))
    best = GRID[min(range(len(GRID)), key=scores.__getitem__)]
    return best, torch_optim_final(family, eval_seeds, steps, lambda p: make(p, best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sine-mlp-40")
    parser.add_argument("--rule", default="adam-correction", choices=list(RULES))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--truncation", type=int, default=10)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    split = meta_split()
    families = {**split["meta-train"], **split["meta-test"]}
    family, _ = families[args.family]
    tune_seeds = [derive_seed(args.seed, "tune", i) for i in range(8)]
    eval_seed = derive_seed(args.seed, "held-out")
    eval_seeds = [derive_seed(eval_seed, "task", i, 0) for i in range(args.eval_tasks)]  # Unroll.task_seeds
    adam_lr, adam = tuned(family, tune_seeds, eval_seeds, args.steps, lambda p, lr: torch.optim.Adam(p, lr=lr))
    rule = RULES[args.rule](lr=adam_lr)  # adam-correction starts as the tuned Adam
    unroll = Unroll(family, rule, args.steps, args.truncation, "mean")
    run = MetaTraining(PersistentES(unroll, tasks=8, sigma=0.01), lr=3e-3, seed=args.seed)
    start = time.perf_counter()
    for i in range(args.iterations):
        metrics = run.step()
        if (i + 1) % max(1, args.iterations // 5) == 0:
            print(f"meta-iteration {i + 1}: meta_loss {metrics['meta_loss']:.4f}", flush=True)
    train_s = time.perf_counter() - start

    evaluation = Unroll(family, rule, args.steps, args.steps, "final")
    assert evaluation.task_seeds(eval_seed, args.eval_tasks, 0) == eval_seeds
    with torch.no_grad():
        learned = evaluation.run(run.export(), evaluation.start(eval_seed, args.eval_tasks))[0]
        initial = evaluation.run(rule.meta(), evaluation.start(eval_seed, args.eval_tasks))[0]
    sgd_lr, sgd = tuned(
        family, tune_seeds, eval_seeds, args.steps, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)
    )
    print(f"family {family.describe()}, {args.steps} inner steps, meta-training {train_s:.0f} s")
    print("| optimizer | loss after N steps, mean | 95% CI |")
    print("| --- | --- | --- |")
    rows = [
        (f"{args.rule}, PES-trained {args.iterations} it.", learned),
        (f"{args.rule} untrained", initial),
        (f"Adam, tuned lr={adam_lr:.2g}", adam),
        (f"SGD-momentum 0.9, tuned lr={sgd_lr:.2g}", sgd),
    ]
    for name, values in rows:
        s = summarize(values)
        print(f"| {name} | {s['mean']:.4f} | +-{s['ci95']:.4f} |")
    paired = summarize(learned.double() - adam.double())
    wins = int((learned < adam).sum())
    print(f"paired, learned - tuned Adam per task: {paired['mean']:.4f} +-{paired['ci95']:.4f} (95% CI); ", end="")
    print(f"learned lower on {wins} of {len(adam)} tasks")


if __name__ == "__main__":
    main()
