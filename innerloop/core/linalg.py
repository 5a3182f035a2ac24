"""Linear solves from matrix-vector products alone (the matrix is never formed).

Conjugate gradient (Hestenes & Stiefel 1952; Nocedal & Wright, "Numerical Optimization",
algorithm 5.2) solves ``(A + damping I) x = b`` for symmetric positive definite ``A``:
TRPO's natural gradient ``F^-1 g`` from Fisher-vector products, and iMAML's implicit
meta-gradient ``(I + H / lambda)^-1 g`` from Hessian-vector products of the support loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inner product over the last dimension (a 0-d tensor for vectors, one per row for batches)."""
    return u @ v if u.dim() == 1 else (u * v).sum(-1)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int = 10,
    tol: float | None = 1e-10,
    damping: float = 0.0,
    negative_curvature: bool = False,
) -> torch.Tensor:
    """Approximately solve ``(A + damping I) x = b`` from ``x = 0``, for ``A`` symmetric positive definite.

    Args:
        matvec: ``v -> A v``, shape-preserving (a closure over Hessian- or Fisher-vector products).
        b: the right-hand side, ``(n,)`` or a batch ``(..., n)`` of independent systems; ``matvec``
            then takes and returns ``(..., n)`` and each system has its own step sizes.
        iterations: at most this many matrix-vector products (``n`` solve exactly in exact arithmetic).
        tol: stop once the squared residual ``||b - A x||^2`` is below ``tol`` (rllab's ``residual_tol``;
            in a batch, a system that reaches it stops moving and the loop ends when all have).
            ``None`` always runs ``iterations`` steps, with no data-dependent branch (``vmap``, ``torch.compile``);
            a system whose squared residual falls below ``eps^2`` times its initial one stops moving.
        damping: Tikhonov term added to ``A`` (``A v + damping v``), e.g. iMAML's ``lambda`` with ``A = H``
            and ``b = lambda g`` for ``(I + H / lambda) x = g``.
        negative_curvature: for an ``A`` that may be indefinite (a Newton system): a system stops at the first
            direction ``p`` with ``p' A p <= 0`` and keeps its current ``x``, or ``b`` if that is the first
            direction (truncated CG, Steihaug 1983), so ``x' b > 0``: a descent direction for ``b = -gradient``.

    >>> x = conjugate_gradient(lambda v: a @ v, b, iterations=20)
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = _dot(r, r)
    floor = rr * torch.finfo(b.dtype).eps ** 2  # tol=None: solved to rounding (further steps would divide 0 by 0)
    stopped = torch.zeros_like(rr, dtype=torch.bool)  # negative_curvature: the systems that met one
    for i in range(iterations):
        done = (rr < tol if tol is not None else rr <= floor) | stopped
        if tol is not None and bool(done.all()):
            break
        ap = matvec(p)
        if damping:
            ap = ap + damping * p
        if negative_curvature:
            bent = (_dot(p, ap) <= 0) & ~done
            x = torch.where(bent.unsqueeze(-1), b, x) if i == 0 else x
            stopped, done = stopped | bent, done | bent
        alpha = torch.where(done, 0.0, rr / _dot(p, ap))  # a finished system takes no more steps (and no 0/0)
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * ap
        rr_next = _dot(r, r)
        beta = torch.where(done, 0.0, rr_next / rr)
        p = r + beta.unsqueeze(-1) * p
        rr = rr_next
    return x
