"""Proximal policy optimization: the clipped surrogate, the value loss, and advantages normalised over a batch.

Schulman, Wolski, Dhariwal, Radford & Klimov (2017), "Proximal Policy Optimization Algorithms", eq. 7 and 9
(https://arxiv.org/abs/1707.06347)::

    L^CLIP = E_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ],   r_t = pi(a_t|s_t) / pi_old(a_t|s_t)
    L      = -L^CLIP + c_v E_t[(V(s_t) - R_t)^2] - c_H E_t[H(pi(.|s_t))]

with ``A_t`` from GAE (:func:`innerloop.rl.returns.gae`) and ``R_t = A_t + V_old(s_t)``. Per-step terms are
returned unreduced; the caller takes the mean it needs (RL²: over each task's real steps, then over tasks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """``min(r A, clip(r, 1 - clip, 1 + clip) A)`` per step (to be maximised)."""
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def clip_fraction(log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip: float) -> torch.Tensor:
    """1 where the ratio lies outside ``[1 - clip, 1 + clip]`` (a diagnostic), per step."""
    return ((torch.exp(log_prob - old_log_prob) - 1).abs() > clip).to(log_prob.dtype)


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """``(V - R)^2`` per step."""
    return (values - returns).pow(2)


def normalize(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Zero mean, unit standard deviation over every real step of the batch; ``reduce`` sums the moments over
    the processes holding its shards (an all-reduce), so each process normalises with the whole batch's."""
    moments = torch.stack([mask.sum(), (advantages * mask).sum(), (advantages.pow(2) * mask).sum()]).double()
    count, total, squares = reduce(moments).unbind()
    mean = total / count.clamp_min(1)
    std = (squares / count.clamp_min(1) - mean.pow(2)).clamp_min(0).sqrt()
    return ((advantages - mean) / (std + eps)).to(advantages.dtype) * mask


__all__ = ["clip_fraction", "clipped_surrogate", "normalize", "value_loss"]
