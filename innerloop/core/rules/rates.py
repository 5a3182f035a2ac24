"""Gradient-step rules: SGD, Meta-SGD rates, MAML++ per-layer per-step rates, Meta-Curvature, and ``scale``.

Each returns the update ``u`` of ``theta' = theta + u``; the learned ones hold their rates or
matrices as ``nn.Parameter`` s (keys as before issue 19: ``rates.<name>``, ``mode_matrices.<name>.<mode>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..params import slot
from .base import UpdateRule


class Scale(UpdateRule):
    """``u = factor * g``: a fixed scaling of the incoming updates (``chain(scale(0.5), SGD(0.1))``).

    Args:
        factor: the constant multiplying every update.
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, grads, state, params, step, loss):
        """``factor * g`` for every tensor."""
        return {n: self.factor * g for n, g in grads.items()}, state

    def describe(self) -> str:
        """``scale(...)``."""
        return f"scale({self.factor})"


scale = Scale


class SGD(UpdateRule):
    """Plain gradient descent (MAML): u = -alpha_k * g.

    ``lr`` is one fixed rate, or a schedule of rates per step (the last one repeats for
    later steps), such as the MAML paper's meta-RL evaluation: 0.1, then 0.05.

    Args:
        lr: alpha, a positive rate or a list of rates, one per step.
    """

    def __init__(self, lr: float | Sequence[float]) -> None:
        super().__init__()
        rates = [float(lr)] if isinstance(lr, (int, float)) else [float(r) for r in lr]
        if not rates or not all(r > 0 for r in rates):
            raise ValueError(f"inner learning rates must be positive (and at least one given), got {lr}")
        self.rates = rates
        self.lr = rates[0]

    def forward(self, grads, state, params, step, loss):
        """-alpha_step * grad for every adapted tensor."""
        lr = self.rates[min(step, len(self.rates) - 1)]
        return {n: -(lr * g) for n, g in grads.items()}, state

    def describe(self) -> str:
        """``SGD(lr=...)``."""
        return f"SGD(lr={self.lr if len(self.rates) == 1 else self.rates})"


class MetaSGDRates(UpdateRule):
    """Meta-SGD (Li et al. 2017): u = -alpha ∘ g, alpha a learned tensor per parameter.

    ``alpha`` has the shape of the parameter it scales (one rate per coordinate, which
    also learns the update direction since rates may turn negative), initialised to
    ``init_lr`` or, as in the paper, uniformly in ``init_range``.

    Args:
        init_lr: the initial value of every rate.
        init_range: ``(low, high)``: draw the initial rates uniformly instead.
    """

    def __init__(self, init_lr: float = 0.01, init_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.init_range = init_range
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        """One learned rate tensor per adapted parameter, of that parameter's shape."""
        for name, shape in shapes.items():
            if self.init_range is None:
                alpha = torch.full(shape, self.init_lr, dtype=like.dtype, device=like.device)
            else:
                lo, hi = self.init_range
                alpha = torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(lo, hi)
            self.rates[slot(name)] = nn.Parameter(alpha)

    def forward(self, grads, state, params, step, loss):
        """-alpha ∘ grad."""
        return {n: -(self.rates[slot(n)] * g) for n, g in grads.items()}, state


class PerLayerPerStepRates(UpdateRule):
    """MAML++ LSLR (Antoniou et al. 2019): one learned scalar rate per parameter tensor per step.

    u_l = -alpha_{l,b} * g_l at step b. At evaluation with more steps than were trained, the
    last step's rate is reused.

    Args:
        init_lr: the initial value of every rate.
    """

    def __init__(self, init_lr: float = 0.01) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        """One learned scalar rate per adapted tensor and per trained step."""
        for name in shapes:
            self.rates[slot(name)] = nn.Parameter(
                torch.full((steps,), self.init_lr, dtype=like.dtype, device=like.device)
            )

    def forward(self, grads, state, params, step, loss):
        """-alpha_{l, step} * grad_l (the last trained step's rate beyond them)."""
        out = {}
        for n, g in grads.items():
            rates = self.rates[slot(n)]
            out[n] = -(rates[min(step, rates.shape[0] - 1)] * g)
        return out, state


class MetaCurvature(UpdateRule):
    """Meta-Curvature (Park & Oliva 2019, "Meta-Curvature", NeurIPS; https://arxiv.org/abs/1902.03356).

    A learned preconditioner per parameter tensor, factored over its modes: the gradient
    G of a weight with shape (C_out, C_in, k x k) is multiplied along each mode by a learned
    matrix, MC(G) = G x_1 M_o x_2 M_i x_3 M_f (eq. 8 of the paper), and u = -alpha * MC(G).
    Matrices start as identities, so an untrained rule is plain SGD with rate alpha.

    Args:
        lr: alpha, the fixed step size in front of the preconditioned gradient.
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = float(lr)
        self.mode_matrices = nn.ModuleDict()

    @staticmethod
    def modes(shape: tuple[int, ...]) -> tuple[int, ...]:
        """Mode sizes: conv kernels' spatial dimensions fold into one mode."""
        return tuple(shape) if len(shape) <= 2 else (shape[0], shape[1], math.prod(shape[2:]))

    def setup(self, shapes, steps, like):
        """One identity-initialised matrix per mode of every adapted tensor."""
        for name, shape in shapes.items():
            if len(shape) == 0:
                raise ValueError(f"MetaCurvature cannot precondition the scalar parameter {name!r}; do not adapt it")
            self.mode_matrices[slot(name)] = nn.ParameterList(
                nn.Parameter(torch.eye(size, dtype=like.dtype, device=like.device)) for size in self.modes(shape)
            )

    def forward(self, grads, state, params, step, loss):
        """-alpha * MC(grad), the gradient multiplied along each mode by its matrix."""
        out = {}
        for name, grad in grads.items():
            g = grad.reshape(self.modes(grad.shape))
            for mode, matrix in enumerate(self.mode_matrices[slot(name)]):
                g = torch.movedim(torch.tensordot(g, matrix, dims=([mode], [1])), -1, mode)  # G x_mode M
            out[name] = -(self.lr * g.reshape(grad.shape))
        return out, state

    def describe(self) -> str:
        """``MetaCurvature(lr=...)``."""
        return f"MetaCurvature(lr={self.lr})"
