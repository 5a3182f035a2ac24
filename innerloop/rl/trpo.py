"""The trust-region step of TRPO (Schulman et al. 2015, "Trust Region Policy Optimization", appendix C).

    maximise  g^T s   subject to  1/2 s^T F s <= delta

F is the Hessian of the mean KL divergence between the old and the new policy (the
Fisher information); ``s = F^-1 g`` is found by conjugate gradient from Hessian-vector
products (never forming F), scaled to the edge of the trust region, and a backtracking
line search shrinks it until the surrogate improves and the KL bound holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.linalg import conjugate_gradient
from ..core.params import flatten, unflatten


@dataclass
class TRPOStats:
    loss_before: float
    loss_after: float
    kl: float
    backtracks: int  # line-search halvings taken (max_backtracks + 1: step rejected)
    accepted: bool


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _trust_region_step(
    gradient: torch.Tensor,
    kl: torch.Tensor,
    params: list[torch.nn.Parameter],
    max_kl: float,
    cg_iterations: int,
    cg_damping: float,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The step s = sqrt(2 max_kl / d^T F d) d along the natural gradient d = F^-1 g (conjugate gradient).

    F is the Hessian of ``kl`` (the Fisher matrix at the sampling policy) plus ``cg_damping`` I;
    the graph of the KL gradient is freed when this returns.
    """
    kl_gradient = flatten(torch.autograd.grad(kl, params, create_graph=True))

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        hv = reduce(flatten(torch.autograd.grad(kl_gradient @ v, params, retain_graph=True)))
        return hv + cg_damping * v

    direction = conjugate_gradient(fisher_vector, gradient, cg_iterations)
    curvature = 0.5 * (direction @ fisher_vector(direction))
    return direction * torch.sqrt(max_kl / curvature.clamp_min(1e-12))  # 1/2 s^T F s = max_kl


def trpo_step(
    params: list[torch.nn.Parameter],
    surrogate: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    cg_damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _same,
) -> TRPOStats:
    """One TRPO update of ``params`` in place.

    ``surrogate()`` returns ``(loss, kl)`` at the current values of ``params``: the loss to
    minimise (minus the surrogate advantage) and the mean KL from the policy that sampled
    the data, both differentiable in ``params``. In a distributed run each process returns
    its share and ``reduce`` sums over processes the gradient, every Fisher-vector product
    and the line search's values, so all processes take the same step.
    """
    loss, kl = surrogate()
    gradient = reduce(flatten(torch.autograd.grad(loss, params, retain_graph=True)))
    step = _trust_region_step(gradient, kl, params, max_kl, cg_iterations, cg_damping, reduce)
    start = [p.detach().clone() for p in params]
    loss_before = float(reduce(loss.detach()))
    del loss, kl  # free the graphs before the line search

    with torch.no_grad():
        for backtrack in range(max_backtracks):
            scale = backtrack_ratio**backtrack
            for p, p0, piece in zip(params, start, unflatten(step, params)):
                p.copy_(p0 - scale * piece)
            new_loss, new_kl = (float(reduce(v.detach())) for v in surrogate())
            if new_loss < loss_before and new_kl < max_kl:
                return TRPOStats(loss_before, new_loss, new_kl, backtrack, True)
        for p, p0 in zip(params, start):  # no acceptable step: stay where we were
            p.copy_(p0)
    return TRPOStats(loss_before, loss_before, 0.0, max_backtracks, False)
