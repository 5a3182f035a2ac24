"""ProMP: Proximal Meta-Policy Search.

Rothfuss, Lee, Clavera, Asfour & Abbeel (2019), "ProMP: Proximal Meta-Policy Search",
ICLR. https://arxiv.org/abs/1810.06784

The inner step uses the low variance curvature estimator (``estimator="lvc"``, eq. 6).
The outer step replaces TRPO by several first-order steps (Adam) on a clipped surrogate
with a KL penalty on the pre-update policies (eq. 9)::

    J(theta) = 1/T sum_i  E_{D'_i}[ min(r_i A'_i, clip(r_i, 1 - eps, 1 + eps) A'_i) ]
               - eta * 1/T sum_i sum_k E_{D_i,k}[ KL(pi_{theta'_{i,k}, old} || pi_{theta'_{i,k}}) ],
    r_i = pi_{theta'_i(theta)}(a|s) / pi_{theta'_i, old}(a|s)

where ``theta'_{i,k}`` are the parameters before inner step k (k = 0: theta itself). The
penalty weight eta adapts: halved when the KL falls below target / 1.5, doubled above
target * 1.5 (section 5 of the paper; ``adaptive_kl=True``, this class's default); or it
stays fixed (``adaptive_kl=False``, as the authors' released run script sets
``adaptive_inner_kl_penalty``, jonasrothfuss/ProMP; the promp-halfcheetah-vel preset).
"""

from __future__ import annotations

import torch
from torch.func import vmap

from ..core.params import copy_flat_, flatten
from .learner import MetaPolicyLearner, Shard, masked_task_mean


class ProMP(MetaPolicyLearner):
    """Proximal Meta-Policy Search.

    Args (beyond :class:`MetaPolicyLearner`'s; its estimator defaults to ``"lvc"`` here):
        clip: epsilon of the clipped objective (0.3 in the paper).
        outer_steps: Adam steps per meta-batch of episodes (5).
        inner_kl_target: the KL the adaptive penalty aims at (0.01).
        inner_kl_coef: initial eta (5e-4).
        adaptive_kl: whether eta adapts to ``inner_kl_target`` (False: eta stays ``inner_kl_coef``).
    """

    inner_kl_coef: torch.Tensor  # a buffer

    def __init__(
        self,
        policy,
        family,
        clip: float = 0.3,
        outer_steps: int = 5,
        inner_kl_target: float = 0.01,
        inner_kl_coef: float = 5e-4,
        adaptive_kl: bool = True,
        **kwargs,
    ) -> None:
        kwargs.setdefault("estimator", "lvc")
        super().__init__(policy, family, **kwargs)
        self.clip, self.outer_steps, self.inner_kl_target = clip, outer_steps, inner_kl_target
        self.adaptive_kl = adaptive_kl
        # eta is state of the meta-optimization: a buffer, so checkpoints carry it and resuming is exact.
        self.register_buffer("inner_kl_coef", torch.full((self.inner_steps,), float(inner_kl_coef)))

    def outer_step(
        self, tasks: torch.Tensor, seed: int, optimizer: torch.optim.Optimizer | None, shard: Shard
    ) -> dict[str, float]:
        if optimizer is None:
            raise ValueError("ProMP takes optimizer steps on the policy: pass meta_step an optimizer (e.g. Adam)")
        draw = self.sample(tasks, seed, task_ids=shard.task_ids)
        valid = self.process(draw.valid)
        with torch.no_grad():
            old_path = self.adapt(self.params(), draw.inner, first_order=True, trajectory=True)
            old_inner = [vmap(self.forward)(p, d["observations"]) for p, d in zip(old_path, draw.inner)]
            old = vmap(self.forward)(old_path[-1], valid["observations"])
        old_log_prob = self.distribution.log_prob(old, valid["actions"])

        for _ in range(self.outer_steps):
            path = self.adapt(self.params(), draw.inner, trajectory=True)
            new = vmap(self.forward)(path[-1], valid["observations"])
            ratio = torch.exp(self.distribution.log_prob(new, valid["actions"]) - old_log_prob)
            advantages = valid["advantages"]
            clipped = torch.minimum(ratio * advantages, ratio.clamp(1 - self.clip, 1 + self.clip) * advantages)
            objective = masked_task_mean(clipped, valid["mask"])
            inner_kl = torch.stack(
                [
                    masked_task_mean(self.distribution.kl(o, vmap(self.forward)(p, d["observations"])), d["mask"])
                    for o, p, d in zip(old_inner, path, draw.inner)
                ]
            )
            loss = -objective + (self.inner_kl_coef * inner_kl).sum()
            optimizer.zero_grad(set_to_none=True)
            (shard.weight * loss).backward()
            grads = [p.grad for p in self.parameters() if p.grad is not None]  # policy and rule meta-parameters
            copy_flat_(grads, shard.reduce(flatten(grads)))  # the meta-batch's gradient
            optimizer.step()

        with torch.no_grad():  # eta adapts to the (meta-batch) KL of the last step
            kl = shard.mean(inner_kl)
            if self.adaptive_kl:
                low, high = kl < self.inner_kl_target / 1.5, kl > self.inner_kl_target * 1.5
                eta = self.inner_kl_coef
                self.inner_kl_coef.copy_(torch.where(low, eta / 2, torch.where(high, eta * 2, eta)))
        return {
            **self.rollout_metrics(draw, shard),
            "objective": float(shard.mean(objective)),
            "inner_kl": float(kl.mean()),
        }
