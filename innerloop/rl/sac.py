"""Soft actor-critic conditioned on a latent task variable, the RL learner inside PEARL.

Haarnoja et al. (2018), "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement Learning
with a Stochastic Actor", ICML. https://arxiv.org/abs/1801.01290 ; twin critics and a learned
temperature: Haarnoja et al. (2018b), "Soft Actor-Critic Algorithms and Applications".

With a tanh-squashed Gaussian policy ``a = tanh(u)``, ``u ~ N(mu(s, z), sigma(s, z)^2)`` and twin critics::

    L_Q  = sum_j E[(Q_j(s, a, z) - y)^2],   y = c r + gamma (1 - d) (min_j Qbar_j(s', a', z) - alpha log pi(a' | s', z))
    L_pi = E[alpha log pi(a~ | s, z) - min_j Q_j(s, a~, z)] + lambda (mu^2 + log sigma^2)
    L_alpha = -E[log alpha (log pi(a~ | s, z) + H_target)]   (only with a learned temperature)

with ``a' ~ pi(. | s', z)``, ``a~ ~ pi(. | s, z)``, reward scale ``c`` and Polyak-averaged target critics
``Qbar``. PEARL's paper uses SAC with a state-value network, a fixed temperature 1 and reward scale 5;
here the target is the twin target critics' (no value network), the temperature fixed or learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models import MLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class TanhGaussianPolicy(nn.Module):
    """``pi(a | s, z)``: a Gaussian on ``u`` squashed by tanh into ``[-1, 1]^action_dim``.

    Args:
        in_features: observation size plus latent size.
        action_dim: size of an action.
        hidden: hidden layer widths (the authors' code: 3 x 300).
    """

    def __init__(self, in_features: int, action_dim: int, hidden: tuple[int, ...] | list[int] = (300, 300, 300)):
        super().__init__()
        self.net = MLP(in_features, tuple(hidden), 2 * action_dim)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log sigma)`` of the pre-tanh Gaussian, log sigma clamped to [-20, 2]."""
        mean, log_std = self.net(inputs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, inputs: torch.Tensor, noise: torch.Tensor):
        """``(action, log pi(action), mu, log sigma)`` with ``u = mu + sigma * noise`` (reparameterised)."""
        mean, log_std = self(inputs)
        u = mean + log_std.exp() * noise.to(mean.dtype)
        log_prob = (-0.5 * noise.to(mean.dtype).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u) / du| = log(1 - tanh(u)^2), in the stable form 2 (log 2 - u - softplus(-2u))
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob, mean, log_std

    def mode(self, inputs: torch.Tensor) -> torch.Tensor:
        """The deterministic action ``tanh(mu)``."""
        return torch.tanh(self(inputs)[0])


class TwinCritic(nn.Module):
    """Two critics ``Q_1, Q_2(s, a, z)`` and their Polyak-averaged targets (buffers, outside any optimizer).

    Args:
        in_features: observation, action and latent sizes together.
        hidden: hidden layer widths.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] | list[int] = (300, 300, 300)):
        super().__init__()
        self.q1, self.q2 = MLP(in_features, tuple(hidden), 1), MLP(in_features, tuple(hidden), 1)
        self._targets = [(name, f"target_{name.replace('.', '_')}") for name, _ in self.named_parameters()]
        for name, buffer in self._targets:
            self.register_buffer(buffer, self.get_parameter(name).detach().clone())

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_1, Q_2)`` of ``inputs [..., in_features]``, each ``[...]``."""
        return self.q1(inputs).squeeze(-1), self.q2(inputs).squeeze(-1)

    def _call(self, inputs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        q1 = functional_call(self.q1, {k[3:]: v for k, v in params.items() if k.startswith("q1.")}, (inputs,))
        q2 = functional_call(self.q2, {k[3:]: v for k, v in params.items() if k.startswith("q2.")}, (inputs,))
        return torch.minimum(q1, q2).squeeze(-1)

    def target_min(self, inputs: torch.Tensor) -> torch.Tensor:
        """``min_j Qbar_j``: the target critics."""
        return self._call(inputs, {name: self.get_buffer(buffer) for name, buffer in self._targets})

    def frozen_min(self, inputs: torch.Tensor) -> torch.Tensor:
        """``min_j Q_j`` with the critics' parameters held constant (the policy's loss moves only the policy)."""
        return self._call(inputs, {name: p.detach() for name, p in self.named_parameters()})

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """``Qbar <- (1 - tau) Qbar + tau Q``."""
        for name, buffer in self._targets:
            self.get_buffer(buffer).lerp_(self.get_parameter(name), tau)


@dataclass(frozen=True)
class SACSettings:
    """The constants of the losses."""

    gamma: float = 0.99  # discount
    reward_scale: float = 5.0  # c, multiplies rewards (PEARL: 5 with temperature 1)
    policy_reg: float = 1e-3  # lambda, weight of the mean and log-std penalty (the authors' code: 1e-3)
    target_entropy: float = 0.0  # H_target of a learned temperature (-action_dim by convention)


def sac_losses(
    policy: TanhGaussianPolicy,
    critic: TwinCritic,
    log_alpha: torch.Tensor,
    batch: dict[str, torch.Tensor],
    z: torch.Tensor,
    noise: torch.Tensor,
    settings: SACSettings,
) -> dict[str, torch.Tensor]:
    """``{"q", "policy", "alpha_loss", "temperature", "q_mean", "entropy"}`` on ``batch`` (``obs, action, reward, next_obs, terminal``,
    rows ``[N, .]``) with latents ``z [N, latent]``; ``noise [2, N, action_dim]`` draws the two sampled actions.

    Gradients: L_Q reaches the critics and ``z`` (PEARL trains its encoder through the critic), L_pi only the
    policy (``z`` and the critics held constant), L_alpha only ``log_alpha`` (zero when it is not learned).
    """
    alpha = log_alpha.exp().detach()
    frozen_z = z.detach()
    q1, q2 = critic(torch.cat([batch["obs"], batch["action"], z], -1))
    with torch.no_grad():
        next_action, next_log_prob, _, _ = policy.sample(torch.cat([batch["next_obs"], frozen_z], -1), noise[0])
        next_q = critic.target_min(torch.cat([batch["next_obs"], next_action, frozen_z], -1))
        target = settings.reward_scale * batch["reward"] + settings.gamma * (1.0 - batch["terminal"]) * (
            next_q - alpha * next_log_prob
        )
    q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    action, log_prob, mean, log_std = policy.sample(torch.cat([batch["obs"], frozen_z], -1), noise[1])
    q_new = critic.frozen_min(torch.cat([batch["obs"], action, frozen_z], -1))
    regular = settings.policy_reg * (mean.pow(2).mean() + log_std.pow(2).mean())
    policy_loss = (alpha * log_prob - q_new).mean() + regular
    alpha_loss = -(log_alpha * (log_prob.detach() + settings.target_entropy)).mean()
    if not log_alpha.requires_grad:
        alpha_loss = alpha_loss.detach() * 0.0
    return {
        "q": q_loss,
        "policy": policy_loss,
        "alpha_loss": alpha_loss,
        "temperature": alpha,
        "q_mean": q1.detach().mean(),
        "entropy": -log_prob.detach().mean(),
    }
