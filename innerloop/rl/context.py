"""PEARL's inference network: a permutation-invariant Gaussian posterior over the latent task variable.

Rakelly et al. (2019), "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic Context
Variables", ICML, section 4.1, eq. (3)-(4). https://arxiv.org/abs/1903.08254

Each transition ``c_n = (s, a, r[, s'])`` of a task's context gives a Gaussian factor
``Psi_phi(z | c_n) = N(mu_n, diag(sigma_n^2))``; the posterior is their normalised product::

    q_phi(z | c_1:N) ∝ prod_n Psi_phi(z | c_n),   sigma^2 = 1 / sum_n sigma_n^-2,   mu = sigma^2 sum_n mu_n / sigma_n^2

which does not depend on the order of the transitions. The information bottleneck is
``KL(q_phi(z | c) || N(0, I))``. As in the authors' code, ``sigma_n^2 = softplus(.)`` (at least 1e-7),
and a context without any transition gives the prior ``N(0, I)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MLP

MIN_VARIANCE = 1e-7


class GaussianFactors:
    """Running sums of a product of Gaussians: ``precision = sum_n 1/sigma_n^2``, ``weighted = sum_n mu_n/sigma_n^2``.

    Products of disjoint contexts multiply (the sums add), so a context that grows episode by episode
    is folded in without revisiting old transitions.
    """

    def __init__(self, precision: torch.Tensor, weighted: torch.Tensor) -> None:
        self.precision, self.weighted = precision, weighted

    @classmethod
    def of(cls, means: torch.Tensor, variances: torch.Tensor, mask: torch.Tensor | None = None) -> GaussianFactors:
        """The factors ``[..., N, D]`` (``mask [..., N]``: 1 for a real transition) summed over ``N``."""
        precision = 1.0 / variances.clamp_min(MIN_VARIANCE)
        if mask is not None:
            precision = precision * mask.unsqueeze(-1).to(precision.dtype)
        return cls(precision.sum(-2), (precision * means).sum(-2))

    def __mul__(self, other: GaussianFactors) -> GaussianFactors:
        return GaussianFactors(self.precision + other.precision, self.weighted + other.weighted)

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, variance)`` of the normalised product; rows without a factor are the prior N(0, I)."""
        empty = self.precision <= 0
        variance = torch.where(empty, 1.0, 1.0 / self.precision.masked_fill(empty, 1.0))
        return torch.where(empty, 0.0, variance * self.weighted), variance


def product_of_gaussians(
    means: torch.Tensor, variances: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance ``[..., D]`` of the normalised product of the factors ``[..., N, D]`` (eq. 4)."""
    return GaussianFactors.of(means, variances, mask).gaussian()


def kl_to_unit(mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag(variance)) || N(0, I))`` over the last axis."""
    return 0.5 * (variance + mean.pow(2) - 1.0 - variance.log()).sum(-1)


def sample_latent(mean: torch.Tensor, variance: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``z = mean + sigma * noise`` (reparameterised, differentiable in mean and variance)."""
    return mean + variance.sqrt() * noise.to(mean.dtype)


class ContextEncoder(nn.Module):
    """``c_n -> (mu_n, sigma_n^2)``: an MLP on each transition (the authors' code: 3 x 200 ReLU, latent 5).

    Args:
        in_features: width of one context transition (observation, action, reward[, next observation]).
        latent_dim: size of z.
        hidden: hidden layer widths.
    """

    def __init__(self, in_features: int, latent_dim: int = 5, hidden: tuple[int, ...] | list[int] = (200, 200, 200)):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = MLP(in_features, tuple(hidden), 2 * latent_dim)

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-transition factors ``(means, variances)``, each ``[..., N, latent_dim]``."""
        means, raw = self.net(context).chunk(2, dim=-1)
        return means, F.softplus(raw).clamp_min(MIN_VARIANCE)

    def factors(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> GaussianFactors:
        """The summed factors of ``context [..., N, in_features]`` (``mask [..., N]``)."""
        means, variances = self(context)
        return GaussianFactors.of(means, variances, mask)

    def posterior(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_phi(z | context)``: mean and variance ``[..., latent_dim]``."""
        return self.factors(context, mask).gaussian()
