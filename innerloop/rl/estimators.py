"""Inner-loop policy-gradient objectives: first derivatives alike, second derivatives not.

Each takes per-step log-probabilities ``log_pi [E, H]`` of the sampled actions under the
parameters being adapted, advantages ``A [E, H]`` (constants) and the step ``mask``,
and returns a loss to *minimise* whose gradient is the policy gradient
``-E[sum_t grad log pi(a_t|s_t) A_t]``. They differ in what their *Hessian* estimates,
which is what second-order MAML differentiates through the inner step:

``vpg``   ``-sum_t log pi_t A_t`` — the REINFORCE surrogate of the original MAML code.
          Its Hessian drops the terms from the sampling distribution's dependence on
          theta, so the meta-gradient is biased (Foerster et al. 2018; Rothfuss et al. 2019).
``dice``  ``-sum_t (box(w_{<=t}) - box(w_{<t})) A_t`` with ``w_{<=t} = sum_{k<=t} log pi_k`` and
          ``box(x) = exp(x - stop_grad(x))`` — DiCE (Foerster et al. 2018, "DiCE: The
          Infinitely Differentiable Monte Carlo Estimator") with the baseline form of Mao
          et al. 2019 (Loaded DiCE, Farquhar et al. 2019, with lambda = 1). Unbiased for
          derivatives of every order when ``A_t`` is the reward-to-go minus a baseline,
          gamma = 1; with gamma < 1 it estimates those of the discounted objective.
``lvc``   ``-sum_t (pi_t / stop_grad(pi_t)) A_t`` — ProMP's low variance curvature
          (Rothfuss et al. 2019, "ProMP: Proximal Meta-Policy Search", eq. 6): biased
          Hessian, much lower variance.

All are averaged over the real steps (``sum(mask)``), as the MAML code does, so an
inner learning rate means the same for every horizon.
"""

from __future__ import annotations

import torch


def magic_box(x: torch.Tensor) -> torch.Tensor:
    """1 in value, d box(x) = box(x) dx in derivative (DiCE's operator)."""
    return torch.exp(x - x.detach())


def _mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def vpg(log_pi: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return -_mean(log_pi * advantages, mask)


def dice(log_pi: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    cumulative = torch.cumsum(log_pi * mask, dim=-1)  # w_{<=t}
    return -_mean((magic_box(cumulative) - magic_box(cumulative - log_pi * mask)) * advantages, mask)


def lvc(log_pi: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return -_mean(magic_box(log_pi) * advantages, mask)


ESTIMATORS = {"vpg": vpg, "dice": dice, "lvc": lvc}
