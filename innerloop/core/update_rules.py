"""Inner-loop update rules: swappable values, in the way of optax.

An update rule maps ``(params, grads, step) -> new params`` for the adapted
parameters of one task. Rules that learn something (per-parameter rates, per-step
rates, later learned optimizers) hold those meta-parameters as ``nn.Parameter`` s and
are meta-trained together with the model's initialization, because the learner
registers the rule as a sub-module.

Rules are built lazily: ``setup(shapes, steps)`` is called once by the learner with
the shapes of the adapted parameters and the number of training inner steps, so a
rule value can be created before the model it will serve.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .params import Params, slot


class UpdateRule(nn.Module):
    """Base class. Subclasses implement :meth:`forward` without mutating anything."""

    def setup(self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor) -> None:
        """Create the rule's meta-parameters for these adapted parameters (default: none)."""

    def forward(self, params: Params, grads: Params, step: int) -> Params:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class SGD(UpdateRule):
    """Plain gradient descent with a fixed rate (MAML): theta' = theta - alpha * g."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"inner learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def forward(self, params: Params, grads: Params, step: int) -> Params:
        return {n: p - self.lr * grads[n] for n, p in params.items()}

    def describe(self) -> str:
        return f"SGD(lr={self.lr})"


class MetaSGDRates(UpdateRule):
    """Meta-SGD (Li et al. 2017): theta' = theta - alpha ∘ g, alpha a learned tensor per parameter.

    ``alpha`` has the shape of the parameter it scales (one rate per coordinate, which
    also learns the update direction since rates may turn negative), initialised to
    ``init_lr`` or, as in the paper, uniformly in ``init_range``.
    """

    def __init__(self, init_lr: float = 0.01, init_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.init_range = init_range
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        for name, shape in shapes.items():
            if self.init_range is None:
                alpha = torch.full(shape, self.init_lr, dtype=like.dtype, device=like.device)
            else:
                lo, hi = self.init_range
                alpha = torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(lo, hi)
            self.rates[slot(name)] = nn.Parameter(alpha)

    def forward(self, params, grads, step):
        return {n: p - self.rates[slot(n)] * grads[n] for n, p in params.items()}


class PerLayerPerStepRates(UpdateRule):
    """MAML++ LSLR (Antoniou et al. 2019): one learned scalar rate per parameter tensor per step.

    theta'_{b+1} = theta'_b - alpha_{l,b} * g_l. At evaluation with more steps than were
    trained, the last step's rate is reused.
    """

    def __init__(self, init_lr: float = 0.01) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        for name in shapes:
            self.rates[slot(name)] = nn.Parameter(
                torch.full((steps,), self.init_lr, dtype=like.dtype, device=like.device)
            )

    def forward(self, params, grads, step):
        out = {}
        for n, p in params.items():
            rates = self.rates[slot(n)]
            out[n] = p - rates[min(step, rates.shape[0] - 1)] * grads[n]
        return out


RULES = {"sgd": SGD, "metasgd": MetaSGDRates, "lslr": PerLayerPerStepRates}
