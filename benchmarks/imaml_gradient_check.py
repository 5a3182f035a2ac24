"""iMAML's meta-gradient on real Omniglot tasks, against a finite difference, at a trained checkpoint (issue 20).

    .venv/bin/python benchmarks/imaml_gradient_check.py RUN [--tasks 2] [--converged-steps 300]

For each of ``--tasks`` meta-training episodes of RUN's config, in float64: the proximal problem's residual
||grad G(phi)|| after the run's own inner steps and after ``--converged-steps``; the implicit meta-gradient with
the run's settings (its inner steps, CG steps and damping) and with a converged inner solve and CG (50 steps,
no damping); and the central finite difference of L_query(phi*(theta)) along a random unit direction, phi* from
the converged solve. Cosines and directional derivatives say whether the run's meta-gradient points where
the query loss falls. ``--inner-lr`` solves the proximal problem at another rate than the run's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from innerloop.core.params import flatten
from innerloop.core.rules import SGD
from innerloop.training.builders import learner_from_checkpoint
from innerloop.training.checkpoint import find_checkpoint, load_checkpoint
from innerloop.training.task_sources import build_tasks


def settings(learner, steps: int, cg: int, damping: float) -> None:
    """The inner steps, CG steps and CG damping ``implicit_grad`` uses."""
    learner.inner_steps, learner.cg_steps, learner.cg_damping = steps, cg, damping


def query_loss(learner, task, steps: int, params) -> float:
    """L_query(phi*(params)), phi* after ``steps`` inner steps on the task's support set."""
    sx, sy, qx, qy = task
    phi = learner.solve(params, sx, sy, steps)
    return float(learner.task_metrics(learner.functional(phi, qx), qy, phi)["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--converged-steps", type=int, default=300)
    parser.add_argument("--h", type=float, default=1e-4)
    parser.add_argument("--inner-lr", type=float, default=None, help="another inner rate than the run's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(find_checkpoint(args.run))
    learner = learner_from_checkpoint(ckpt).double()
    learner.train()
    if args.inner_lr is not None:
        learner.inner_lr, learner.rule = args.inner_lr, SGD(args.inner_lr)
    batch = build_tasks(ckpt.config, "train").sample(0, range(args.tasks), dtype=torch.float64)
    theta = {n: p.detach() for n, p in learner.model_params().items()}
    own = (learner.inner_steps, learner.cg_steps, learner.cg_damping)
    print(
        f"{args.run} at iteration {ckpt.iteration}: inner_steps {own[0]}, cg_steps {own[1]}, cg_damping {own[2]}, "
        f"lambda {learner.lam}, inner_lr {learner.inner_lr}"
    )
    for i in range(args.tasks):
        task = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        with torch.no_grad():
            settings(learner, *own)
            g_run, m_run = learner.implicit_grad(theta, *task)
            settings(learner, args.converged_steps, 50, 0.0)
            g_conv, m_conv = learner.implicit_grad(theta, *task)

            gen = torch.Generator().manual_seed(i)
            direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in theta.items()}
            norm = flatten(direction).norm()
            direction = {n: d / norm for n, d in direction.items()}
            plus = query_loss(
                learner, task, args.converged_steps, {n: p + args.h * direction[n] for n, p in theta.items()}
            )
            minus = query_loss(
                learner, task, args.converged_steps, {n: p - args.h * direction[n] for n, p in theta.items()}
            )
        fd = (plus - minus) / (2 * args.h)
        flat_run, flat_conv, flat_d = flatten(g_run), flatten(g_conv), flatten(direction)
        cosine = float(flat_run @ flat_conv / (flat_run.norm() * flat_conv.norm()))
        print(
            f"task {i}: residual {float(m_run['inner_residual']):.3g} after {own[0]} steps, "
            f"{float(m_conv['inner_residual']):.3g} after {args.converged_steps}; query loss {float(m_run['loss']):.4f} / "
            f"{float(m_conv['loss']):.4f}; directional derivative: finite difference {fd:.6g}, converged implicit "
            f"{float(flat_conv @ flat_d):.6g}, the run's implicit {float(flat_run @ flat_d):.6g}; "
            f"cosine(run's, converged) {cosine:.3f}; norms {float(flat_run.norm()):.3g} / {float(flat_conv.norm()):.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
