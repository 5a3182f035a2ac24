"""MAML for reinforcement learning with a TRPO meta-optimizer.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML, section 3.3 and Algorithm 3. https://arxiv.org/abs/1703.03400

For each task T_i of a meta-batch: sample episodes D_i with pi_theta, adapt with a policy
gradient step (repeated ``inner_steps`` times, each on new episodes)::

    theta'_i = theta - alpha * grad_theta L_inner(theta; D_i)

sample D'_i with pi_theta'_i, and update theta with TRPO on the meta-objective, the
importance-weighted advantage of the adapted policies under a KL trust region::

    min_theta  -1/T sum_i E_{D'_i}[ pi_{theta'_i(theta)}(a|s) / pi_old_i(a|s) * A'_i ]
    s.t.       1/T sum_i E_{D'_i}[ KL(pi_old_i || pi_{theta'_i(theta)}) ] <= delta   (delta = 0.01)

Both the objective and the KL differentiate through the inner step (second order),
including the Fisher-vector products TRPO's conjugate gradient needs.

The objective's gradient carries the chosen estimator's second-order terms (DiCE's with
``estimator="dice"``); the KL's Fisher-vector products always go through the plain REINFORCE
inner step, and REINFORCE (``"vpg"``, the paper's) is the default objective: why, in
docs/meta-rl.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import vmap

from ..core.params import Params
from .learner import Adaptation, MetaPolicyLearner, Shard, masked_task_mean
from .trpo import trpo_step


class MAMLTRPO(MetaPolicyLearner):
    """MAML with a vanilla policy-gradient inner loop and a TRPO outer loop.

    Args (beyond :class:`MetaPolicyLearner`'s):
        max_kl: delta, the trust region of the outer step.
        cg_iterations, cg_damping: conjugate gradient on the Fisher-vector products.
        backtrack_ratio, max_backtracks: the line search.
    """

    def __init__(
        self,
        policy,
        family,
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-5,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        **kwargs,
    ) -> None:
        super().__init__(policy, family, **kwargs)
        self.trust_region: dict[str, Any] = dict(
            max_kl=max_kl,
            cg_iterations=cg_iterations,
            cg_damping=cg_damping,
            backtrack_ratio=backtrack_ratio,
            max_backtracks=max_backtracks,
        )

    def objectives(
        self, draw: Adaptation, weight: float = 1.0
    ) -> Callable[[Params], tuple[torch.Tensor, torch.Tensor]]:
        """``(loss, kl)`` as functions of theta on the recorded episodes of ``draw`` (times ``weight``)."""
        valid = self.process(draw.valid)
        with torch.no_grad():
            old = vmap(self.forward)(draw.adapted, valid["observations"])  # pi_old_i on D'_i
        old_log_prob = self.distribution.log_prob(old, valid["actions"])

        def at(theta: Params) -> tuple[torch.Tensor, torch.Tensor]:
            new = vmap(self.forward)(self.adapt(theta, draw.inner), valid["observations"])
            ratio = torch.exp(self.distribution.log_prob(new, valid["actions"]) - old_log_prob)
            loss = -masked_task_mean(ratio * valid["advantages"], valid["mask"])
            if self.estimator != "vpg" and not self.first_order:  # see the module doc: the KL of the actual map
                new = vmap(self.forward)(self.adapt(theta, draw.inner, estimator="vpg"), valid["observations"])
            kl = masked_task_mean(self.distribution.kl(old, new), valid["mask"])
            return weight * loss, weight * kl

        return at

    def outer_step(self, tasks: torch.Tensor, seed: int, optimizer, shard: Shard) -> dict[str, float]:
        draw = self.sample(tasks, seed, task_ids=shard.task_ids)
        objectives = self.objectives(draw, shard.weight)  # this shard's part of the meta-batch means
        stats = trpo_step(
            list(self.parameters()), lambda: objectives(self.params()), reduce=shard.reduce, **self.trust_region
        )
        return {
            **self.rollout_metrics(draw, shard),
            "surrogate_improvement": stats.loss_before - stats.loss_after,
            "kl": stats.kl,
            "backtracks": stats.backtracks,
        }
