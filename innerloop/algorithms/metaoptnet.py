"""Heads that solve a convex problem on the support embeddings: ridge regression (R2D2) and the multi-class SVM
(MetaOptNet), on the embedding + head base (:mod:`~innerloop.algorithms.metric`).

Bertinetto, Henriques, Torr & Vedaldi (2019), "Meta-learning with differentiable closed-form solvers", ICLR.
Lee, Maji, Ravichandran & Soatto (2019), "Meta-Learning with Differentiable Convex Optimization", CVPR.

Ridge (R2D2, through the Woodbury identity: an S x S solve; the (D x D) primal when S > D)::

    W = Z^T (Z Z^T + lambda I)^-1 Y,      logits = alpha Z_Q W + beta

SVM (the Crammer & Singer dual as Lee et al. solve it, with K = Z Z^T and W = Z^T A)::

    min_A  1/2 tr(A^T K A) - tr(Y^T A)    s.t.  A <= C Y,  A 1 = 0,       logits = alpha Z_Q W

solved by accelerated projected gradient (each row of ``C Y - A`` lies on the simplex of radius C: an exact sort
projection, Duchi et al. 2008; momentum restarts, O'Donoghue & Candes 2015) for a fixed number of steps, and
differentiated implicitly: on the face of the solution ``dA = -(P K P)^+ P dK A`` (P projects onto the directions
that keep the active bounds and the row sums), so the backward solves ``P K P u = P dL/dA`` by conjugate gradient
(:mod:`~innerloop.core.linalg`) and ``dL/dK = -u A^T``. Chosen over a QP library: qpth is unmaintained and factors a
dense (S N) x (S N) system per task, cvxpylayers brings cvxpy and runs neither batched tensors nor ``vmap``; the
simplex structure makes the forward exact and cheap and the backward one CG solve of S x S matrix products, both
free of data-dependent control flow (``vmap``, the loop and leading task dimensions alike).

Departures: lambda is learned as ``log lambda`` (always positive); the scalar bias beta of R2D2 is kept, although
a softmax cross-entropy ignores it; R2D2's 1/sqrt(S) scaling of Z and Y is folded into lambda; the SVM's ``ridge``
(0: the paper's problem) adds ``ridge * I`` to K. Design notes: docs/learners.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.linalg import conjugate_gradient
from ..errors import InputError
from ..validate import positive_float, positive_int
from .metric import EmbeddingHeadLearner, Head


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _scalar(module: nn.Module, name: str, value: float, learn: bool) -> None:
    """A 0-d meta-learned parameter, or a buffer (fixed, but it follows ``.to()`` and the state dict)."""
    t = torch.tensor(float(value))
    if learn:
        module.register_parameter(name, nn.Parameter(t))
    else:
        module.register_buffer(name, t)


# --------------------------------------------------------------------------- ridge regression
def ridge_weights(support_z: torch.Tensor, support_onehot: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``W = Z^T (Z Z^T + lam I)^-1 Y`` ``(..., D, N)`` for ``Z (..., S, D)``, ``Y (..., S, N)``: the S x S (Woodbury)
    solve when S <= D, else the equal primal ``(Z^T Z + lam I)^-1 Z^T Y`` (D x D); chosen from the shapes."""
    s, d = support_z.shape[-2:]
    zt = support_z.transpose(-1, -2)
    if s <= d:
        return zt @ torch.linalg.solve(support_z @ zt + lam * _eye(s, support_z), support_onehot)
    return torch.linalg.solve(zt @ support_z + lam * _eye(d, support_z), zt @ support_onehot)


def with_intercept(z: torch.Tensor) -> torch.Tensor:
    """``[z, 1]``: a constant feature, so the regression fits a (penalised) bias per class as R2D2's code does."""
    return torch.cat([z, torch.ones_like(z[..., :1])], -1)


class RidgeHead(Head):
    """R2D2's head: ridge regression onto one-hot labels, then ``alpha * scores + beta``.

    Args:
        lam: the initial (or fixed) ridge weight lambda > 0.
        learn_lam: meta-learn lambda (as ``log lambda``).
        scale, bias: the initial alpha and beta of the logits; ``learn_scale`` meta-learns both.
        intercept: append a constant feature to the embeddings (a bias per class in the regression).
    """

    log_lam: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        lam: float = 50.0,
        learn_lam: bool = True,
        scale: float = 1.0,
        learn_scale: bool = True,
        bias: float = 0.0,
        intercept: bool = True,
    ) -> None:
        super().__init__()
        lam = positive_float("lam", lam)
        _scalar(self, "log_lam", math.log(lam), learn_lam)
        _scalar(self, "scale", positive_float("scale", scale), learn_scale)
        _scalar(self, "bias", bias, learn_scale)
        self.intercept = intercept

    @property
    def lam(self) -> torch.Tensor:
        """lambda = exp(log lambda)."""
        return self.log_lam.exp()

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
        """The ridge weights ``(..., D[+1], N)``."""
        z = with_intercept(support_z) if self.intercept else support_z
        return ridge_weights(z, support_onehot, self.lam)

    def logits(self, state: torch.Tensor, query_z: torch.Tensor) -> torch.Tensor:
        """``alpha * z W + beta``."""
        z = with_intercept(query_z) if self.intercept else query_z
        return self.scale * (z @ state) + self.bias


# --------------------------------------------------------------------------- the Crammer-Singer SVM dual
def project_to_simplex(v: torch.Tensor, radius: float) -> torch.Tensor:
    """The Euclidean projection of each row of ``v (..., N)`` onto ``{b >= 0, sum(b) = radius}`` (Duchi et al. 2008,
    fig. 1): a sort and a cumulative sum, no data-dependent branch."""
    u = v.sort(-1, descending=True).values
    excess = u.cumsum(-1) - radius
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - excess / k > 0).sum(-1, keepdim=True)  # >= 1: the largest entry always qualifies
    theta = excess.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def project_dual(a: torch.Tensor, bound: torch.Tensor, c: float) -> torch.Tensor:
    """Onto the feasible set ``{A <= bound = C Y, A 1 = 0}``: each row of ``bound - A`` onto the radius-C simplex."""
    return bound - project_to_simplex(bound - a, c)


def solve_svm_dual(kernel: torch.Tensor, onehot: torch.Tensor, c: float, iterations: int) -> torch.Tensor:
    """``A (..., S, N)`` minimising ``1/2 tr(A^T K A) - tr(Y^T A)`` on the feasible set, by ``iterations`` steps of
    accelerated projected gradient (step 1 / lambda_max(K), gradient-based momentum restart) from ``A = 0``."""
    lipschitz = torch.linalg.eigvalsh(kernel)[..., -1:].unsqueeze(-1)  # (..., 1, 1)
    step = 1 / lipschitz.clamp(min=torch.finfo(kernel.dtype).tiny ** 0.5)
    bound = c * onehot
    x = torch.zeros_like(onehot)
    y, t = x, torch.ones_like(step)
    for _ in range(iterations):
        new = project_dual(y - step * (kernel @ y - onehot), bound, c)
        restart = ((y - new) * (new - x)).sum((-2, -1), keepdim=True) > 0  # the step points back: drop momentum
        t_next = (1 + (1 + 4 * t * t).sqrt()) / 2
        y = new + torch.where(restart, 0.0, (t - 1) / t_next) * (new - x)
        x, t = new, torch.where(restart, 1.0, t_next)
    return x


def face_projection(v: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """P: zero the coordinates at their bound and remove the row mean over the free ones (keeps ``A 1 = 0``)."""
    count = free.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(free, v - (v * free).sum(-1, keepdim=True) / count, 0.0)


def svm_dual_backward(
    kernel: torch.Tensor, onehot: torch.Tensor, alpha: torch.Tensor, c: float, grad: torch.Tensor, cg_steps: int
) -> torch.Tensor:
    """``dL/dK = -u A^T`` with ``P K P u = P dL/dA`` solved by CG on the face of the solution ``A``; ``grad`` is
    ``dL/dA``, and a coordinate is free (off its bound ``C Y``) where ``A < C Y``."""
    free = c * onehot - alpha > 0
    shape = alpha.shape
    # The identity (scaled like K) off the face: the same solution on the face, and a positive definite system
    # whatever rounding leaves of P dL/dA off it.
    off = kernel.diagonal(0, -2, -1).mean(-1)[..., None, None].clamp(min=torch.finfo(kernel.dtype).tiny)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        v = v.unflatten(-1, shape[-2:])
        m = face_projection(v, free)
        return (face_projection(kernel @ m, free) + off * (v - m)).flatten(-2)

    steps = min(cg_steps, shape[-2] * (shape[-1] - 1))  # the face has at most S (N - 1) dimensions
    u = conjugate_gradient(matvec, face_projection(grad, free).flatten(-2), iterations=max(steps, 1), tol=None)
    return -u.unflatten(-1, shape[-2:]) @ alpha.transpose(-1, -2)


class SVMDual(torch.autograd.Function):
    """``A*(K)`` of :func:`solve_svm_dual` with the implicit backward of :func:`svm_dual_backward` (runs under vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(kernel, onehot, c, iterations, cg_steps):
        """The dual solution (no graph through the solver)."""
        return solve_svm_dual(kernel, onehot, c, iterations)

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Keep K, Y and the solution for the backward."""
        kernel, onehot, c, _, cg_steps = inputs
        ctx.save_for_backward(kernel, onehot, output)
        ctx.c, ctx.cg_steps = c, cg_steps

    @staticmethod
    def backward(ctx, grad):
        """``dL/dK`` only: Y, C and the step counts are constants."""
        kernel, onehot, alpha = ctx.saved_tensors
        return svm_dual_backward(kernel, onehot, alpha, ctx.c, grad, ctx.cg_steps), None, None, None, None


def svm_kkt_residual(kernel: torch.Tensor, onehot: torch.Tensor, alpha: torch.Tensor, c: float) -> torch.Tensor:
    """``max |A - proj(A - (K A - Y))|`` per task: 0 exactly at the solution (the projected-gradient fixed point)."""
    moved = project_dual(alpha - (kernel @ alpha - onehot), c * onehot, c)
    return (alpha - moved).abs().amax((-2, -1))


class SVMHead(Head):
    """MetaOptNet's head: the Crammer-Singer multi-class SVM fit on the support embeddings, logits ``alpha z W``.

    Args:
        C: the SVM's cost (the paper's C = 0.1).
        iterations: accelerated projected-gradient steps on the dual per task (the accuracy of the solution and
            hence of its implicit gradient; :func:`svm_kkt_residual` measures it).
        cg_steps: conjugate-gradient steps of the implicit backward (at most S (N - 1) are used).
        ridge: added to the kernel's diagonal (0: the paper's problem); needed when the support set outnumbers the
            embedding dimension, where ``Z Z^T`` is singular and the dual solution not unique.
        scale: the initial alpha; ``learn_scale`` meta-learns it.
    """

    scale: torch.Tensor

    def __init__(
        self,
        C: float = 0.1,
        iterations: int = 300,
        cg_steps: int = 50,
        ridge: float = 0.0,
        scale: float = 1.0,
        learn_scale: bool = True,
    ) -> None:
        super().__init__()
        self.C = positive_float("C", C)
        self.iterations = positive_int("iterations", iterations)
        self.cg_steps = positive_int("cg_steps", cg_steps)
        self.ridge = positive_float("ridge", ridge, allow_zero=True)
        _scalar(self, "scale", positive_float("scale", scale), learn_scale)

    def kernel(self, support_z: torch.Tensor) -> torch.Tensor:
        """``Z Z^T + ridge I`` ``(..., S, S)``; refused when singular for every embedding (S > D without ridge)."""
        s, d = support_z.shape[-2:]
        if s > d and self.ridge == 0:
            raise InputError(
                f"the SVM dual has {s} support examples in a {d}-dimensional embedding, so Z Z^T is singular and "
                "its solution not unique; set ridge > 0 (algorithm.ridge), or use fewer ways x shots or wider embeddings"
            )
        gram = support_z @ support_z.transpose(-1, -2)
        return gram + self.ridge * _eye(s, support_z) if self.ridge else gram

    def dual(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
        """The dual solution ``A (..., S, N)``, differentiable (implicitly) in the embeddings."""
        return SVMDual.apply(self.kernel(support_z), support_onehot, self.C, self.iterations, self.cg_steps)

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
        """The class weights ``W = Z^T A`` ``(..., D, N)``."""
        return support_z.transpose(-1, -2) @ self.dual(support_z, support_onehot)

    def logits(self, state: torch.Tensor, query_z: torch.Tensor) -> torch.Tensor:
        """``alpha * z W``."""
        return self.scale * (query_z @ state)


# --------------------------------------------------------------------------- learners
class R2D2(EmbeddingHeadLearner):
    """R2D2: a meta-learned embedding with a ridge-regression head (:class:`RidgeHead`; its arguments).

    ``adapt(support_x, support_y)`` returns the ridge weights ``(D[+1], ways)``, ``predict(W, x)`` the logits;
    ``strategy`` and ``flatten_tasks`` as in :class:`~innerloop.algorithms.metric.EmbeddingHeadLearner`.

    Args:
        model: the embedding network (its parameters are meta-learned).
        lam: the initial (or fixed) ridge weight lambda (positive).
        learn_lam: meta-learn lambda (as ``log lambda``).
        scale: the initial alpha multiplying the logits.
        learn_scale: meta-learn alpha and the logits' bias beta.
        intercept: append a constant feature to the embeddings (a bias per class in the regression).
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 50.0,
        learn_lam: bool = True,
        scale: float = 1.0,
        learn_scale: bool = True,
        intercept: bool = True,
        strategy: str = "auto",
        flatten_tasks: bool | None = None,
    ) -> None:
        head = RidgeHead(lam, learn_lam, scale, learn_scale, intercept=intercept)
        super().__init__(model, head, strategy=strategy, flatten_tasks=flatten_tasks)


class MetaOptNetSVM(EmbeddingHeadLearner):
    """MetaOptNet-SVM: a meta-learned embedding with a multi-class SVM head (:class:`SVMHead`; its arguments).

    ``adapt(support_x, support_y)`` returns the SVM weights ``(D, ways)``, ``predict(W, x)`` the logits;
    ``strategy`` and ``flatten_tasks`` as in :class:`~innerloop.algorithms.metric.EmbeddingHeadLearner`.

    Args:
        model: the embedding network (its parameters are meta-learned).
        C: the SVM's cost (the upper bound on the dual variables of the true classes).
        iterations: accelerated projected-gradient steps on the dual per task.
        cg_steps: conjugate-gradient steps of the implicit backward.
        ridge: added to the kernel's diagonal; needed when the support set outnumbers the embedding dimension.
        scale: the initial alpha multiplying the logits.
        learn_scale: meta-learn alpha.
    """

    def __init__(
        self,
        model: nn.Module,
        C: float = 0.1,
        iterations: int = 300,
        cg_steps: int = 50,
        ridge: float = 0.0,
        scale: float = 1.0,
        learn_scale: bool = True,
        strategy: str = "auto",
        flatten_tasks: bool | None = None,
    ) -> None:
        head = SVMHead(C, iterations, cg_steps, ridge, scale, learn_scale)
        super().__init__(model, head, strategy=strategy, flatten_tasks=flatten_tasks)
