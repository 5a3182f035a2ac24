"""Stochastic policies called functionally, so per-task adapted parameters batch under ``vmap``.

A policy module maps observations to the parameters of an action distribution (its raw
output); the distribution itself is a small stateless object with ``log_prob``,
``noise`` and ``sample`` (a sample is a function of the outputs and noise drawn ahead),
``kl`` and ``mode`` on those outputs. Keeping the two apart is what lets the
sampler call ``vmap(functional_call(policy))`` with a different parameter set per task
and the losses recompute log-probabilities under any parameters.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import torch
from torch import nn

from ..models import MLP


class ActionDistribution(Protocol):
    """What a policy's ``distribution`` provides, on the policy's raw outputs ``out`` (a class of static methods)."""

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...
    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor: ...
    def sample(self, out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...
    def mode(self, out: torch.Tensor) -> torch.Tensor: ...
    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor: ...
    def entropy(self, out: torch.Tensor) -> torch.Tensor: ...


class DiagonalGaussian:
    """N(mu, diag(sigma^2)) over continuous actions; the raw output is ``[mu, log sigma]`` on the last axis."""

    @staticmethod
    def split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std

    @classmethod
    def log_prob(cls, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = cls.split(out)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @staticmethod
    def noise(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise for outputs of ``shape`` (drawn ahead, a whole rollout at once)."""
        return torch.randn(*shape[:-1], shape[-1] // 2, generator=generator)

    @classmethod
    def sample(cls, out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = cls.split(out)
        return mean + torch.exp(log_std) * noise.to(mean.dtype)

    @classmethod
    def mode(cls, out: torch.Tensor) -> torch.Tensor:
        return cls.split(out)[0]

    @classmethod
    def kl(cls, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """KL(p || q) of two diagonal Gaussians given by their raw outputs."""
        mean_p, log_std_p = cls.split(p)
        mean_q, log_std_q = cls.split(q)
        var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
        return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)

    @classmethod
    def entropy(cls, out: torch.Tensor) -> torch.Tensor:
        return (cls.split(out)[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class Categorical:
    """A distribution over ``n`` discrete actions; the raw output is the logits."""

    @staticmethod
    def log_prob(out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(out, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def noise(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Gumbel noise, one per action: argmax(logits + noise) is a sample (the Gumbel-max trick)."""
        uniform = torch.rand(*shape, generator=generator).clamp(1e-12, 1 - 1e-7)
        return -torch.log(-torch.log(uniform))

    @staticmethod
    def sample(out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (torch.log_softmax(out, -1) + noise.to(out.dtype)).argmax(-1)

    @staticmethod
    def mode(out: torch.Tensor) -> torch.Tensor:
        return out.argmax(-1)

    @staticmethod
    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    @staticmethod
    def entropy(out: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(out, -1)
        return -(log_p.exp() * log_p).sum(-1)


class Policy(nn.Module):
    """A policy: ``forward`` maps observations to the raw outputs of its action ``distribution``."""

    distribution: ClassVar[ActionDistribution]


class GaussianMLPPolicy(Policy):
    """mu(s) an MLP (the MAML paper: 2 x 100 hidden units, ReLU), log sigma a state-independent parameter."""

    distribution = DiagonalGaussian

    def __init__(
        self, observation_dim: int, action_dim: int, hidden=(100, 100), init_std: float = 1.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.mean = MLP(observation_dim, hidden, action_dim, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        mean = self.mean(observations)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


class CategoricalMLPPolicy(Policy):
    """Logits from an MLP (with ``hidden=()`` and a constant observation: a learned preference per action)."""

    distribution = Categorical

    def __init__(self, observation_dim: int, num_actions: int, hidden=(100, 100), activation: str = "relu") -> None:
        super().__init__()
        self.logits = MLP(observation_dim, hidden, num_actions, activation)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.logits(observations)


def make_policy(family, hidden=(100, 100), init_std: float = 1.0, activation: str = "relu") -> Policy:
    """The policy that fits ``family``'s observations and actions (``activation``: relu | tanh)."""
    if family.discrete:
        return CategoricalMLPPolicy(family.observation_dim, family.action_dim, hidden, activation)
    return GaussianMLPPolicy(family.observation_dim, family.action_dim, hidden, init_std, activation)
