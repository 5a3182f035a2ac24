"""Returns, the linear feature baseline and generalized advantage estimation (GAE).

All functions take batched episodes ``[..., E, H]`` (any leading task dimensions) with a
``mask`` that is 1 on steps that happened and 0 after an early termination.
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_{k >= t} gamma^(k - t) r_k, per step."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(observations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The features of Duan et al. (2016)'s linear baseline: [s, s^2, t, t^2, t^3, 1], t = step / 100."""
    horizon = observations.shape[-2]
    t = torch.arange(horizon, dtype=observations.dtype, device=observations.device) / 100.0
    t = t.expand(observations.shape[:-1]).unsqueeze(-1)
    ones = torch.ones_like(t)
    features = torch.cat([observations, observations.pow(2), t, t.pow(2), t.pow(3), ones], dim=-1)
    return features * mask.unsqueeze(-1)


def linear_baseline(
    observations: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, reg: float = 1e-5
) -> torch.Tensor:
    """Value estimates ``[T, E, H]`` from a ridge regression of the returns on the features, fit per task.

    Duan et al. (2016), "Benchmarking Deep Reinforcement Learning for Continuous Control",
    the baseline the MAML paper uses: fit on the episodes it then scores (one linear
    system per task, solved together in float64 with ``torch.linalg``).
    """
    returns = discounted_returns(rewards, mask, gamma)
    x = baseline_features(observations.double(), mask.double()).flatten(-3, -2)  # [T, E*H, F]
    y = returns.double().flatten(-2)  # [T, E*H]
    gram = x.transpose(-1, -2) @ x
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
    weights = torch.linalg.solve(gram + reg * scale * eye, (x.transpose(-1, -2) @ y.unsqueeze(-1)))
    values = (x @ weights).squeeze(-1).reshape(returns.shape)
    return values.to(rewards.dtype) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """A_t = sum_k (gamma lambda)^k delta_{t+k},  delta_t = r_t + gamma V(s_{t+1}) - V(s_t)  (Schulman et al. 2016)."""
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1) * torch.cat(
        [mask[..., 1:], torch.zeros_like(mask[..., :1])], dim=-1
    )
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = deltas[..., t] + gamma * lam * running * mask[..., t]
        out[..., t] = running
    return out * mask


def normalize_per_task(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over each task's real steps (leading dimension: tasks)."""
    dims = tuple(range(1, advantages.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (advantages * mask).sum(dims, keepdim=True) / count
    var = ((advantages - mean).pow(2) * mask).sum(dims, keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask
