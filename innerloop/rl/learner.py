"""What MAML-TRPO and ProMP share: a meta-learned policy initialization and its inner loop.

The inner loop of meta-RL (Finn et al. 2017, section 3.3; Algorithm 3) samples episodes
with the current parameters, scores them with a per-task linear baseline and GAE, and
takes a policy-gradient step::

    theta'_{k+1} = theta'_k - alpha_k * grad L_inner(theta'_k; D_k),   D_k ~ pi_{theta'_k},  theta'_0 = theta

where ``L_inner`` is one of the estimators of :mod:`innerloop.rl.estimators`. Every step
needs fresh episodes from the policy it produced, so sampling alternates with adapting
(:meth:`MetaPolicyLearner.sample`), without a graph; the outer algorithm then replays the
recorded episodes through :meth:`MetaPolicyLearner.adapt`, which keeps the graph of each
inner gradient (second order) unless ``first_order``. Tasks are batched with
``torch.func.vmap``: every task's inner loop runs in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from ..core.engine import functional_model
from ..core.params import Params
from ..core.update_rules import SGD
from ..tasks.seeding import derive_seed
from .estimators import ESTIMATORS
from .policies import Policy
from .returns import gae, linear_baseline, normalize_per_task
from .sampler import Episodes, rollout

StepData = dict[str, torch.Tensor]  # observations, actions, advantages, mask: leading task dimension


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class Shard:
    """This process's part of a meta-batch (a single process holds all of it).

    ``task_ids`` name the tasks (and their random streams), ``weight`` is the shard's
    share of the meta-batch, and ``reduce`` sums a tensor over the processes (an
    all-reduce). Objectives are local means times ``weight``; reducing their gradients,
    Fisher-vector products and values gives those of the whole meta-batch on every rank.
    """

    task_ids: Sequence[int] | None = None
    weight: float = 1.0
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity

    def mean(self, local_mean: torch.Tensor) -> torch.Tensor:
        """The meta-batch mean of a detached per-shard mean."""
        return self.reduce(local_mean.detach() * self.weight)


@dataclass
class Adaptation:
    """What one meta-training (or evaluation) draw produced for a batch of tasks."""

    inner: list[StepData]  # per inner step, the episodes it adapted on (processed)
    episodes: list[Episodes]  # every rollout: one per inner step, then the adapted policy's
    adapted: Params  # the adapted parameters, leading task dimension, no graph
    tasks: torch.Tensor  # the tasks' parameters

    @property
    def valid(self) -> Episodes:
        return self.episodes[-1]

    @property
    def env_steps(self) -> int:
        return sum(e.steps for e in self.episodes)

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.episodes)


class MetaPolicyLearner(nn.Module):
    """A policy whose initialization is meta-learned for fast policy-gradient adaptation.

    Args:
        policy: a policy module (``innerloop.rl.policies``) fitting ``family``.
        family: the task family (``innerloop.rl.envs``).
        inner_lr: alpha, or a list of per-step rates.
        inner_steps: adaptation steps at meta-training time (each samples new episodes).
        episodes: episodes per task per step (the MAML paper's "fast batch size", 20).
        estimator: the inner objective: ``"vpg"`` (REINFORCE, the default), ``"dice"`` or ``"lvc"``.
        first_order: treat inner gradients as constants in the outer gradient.
        gamma, gae_lambda: discount and GAE parameter of the advantages.
    """

    def __init__(
        self,
        policy: Policy,
        family,
        inner_lr=0.1,
        inner_steps: int = 1,
        episodes: int = 20,
        estimator: str = "vpg",
        first_order: bool = False,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if inner_steps < 1:
            raise ValueError(f"meta-RL adapts with at least one inner step, got inner_steps={inner_steps}")
        self.policy = policy
        self.family = family
        self.rule = SGD(inner_lr)
        self.inner_steps, self.episodes = inner_steps, episodes
        self.estimator = estimator
        self.first_order = first_order
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.forward = functional_model(policy)
        self.distribution = policy.distribution

    def params(self) -> Params:
        return dict(self.policy.named_parameters())

    # -- data -------------------------------------------------------------------------
    def process(self, episodes: Episodes) -> StepData:
        """Advantages from a linear baseline fit to each task's episodes, GAE, normalised per task."""
        values = linear_baseline(episodes.observations, episodes.rewards, episodes.mask, self.gamma)
        advantages = gae(episodes.rewards, values, episodes.mask, self.gamma, self.gae_lambda)
        dtype = next(self.policy.parameters()).dtype
        return {
            "observations": episodes.observations.to(dtype),
            "actions": episodes.actions.to(dtype) if episodes.actions.is_floating_point() else episodes.actions,
            "advantages": normalize_per_task(advantages, episodes.mask).to(dtype),
            "mask": episodes.mask.to(dtype),
        }

    def log_prob(self, params: Params, data: StepData) -> torch.Tensor:
        return self.distribution.log_prob(self.forward(params, data["observations"]), data["actions"])

    def inner_loss(self, params: Params, data: StepData, estimator: str | None = None) -> torch.Tensor:
        """L_inner of one task (no task dimension), with the learner's estimator unless another is named."""
        return ESTIMATORS[estimator or self.estimator](self.log_prob(params, data), data["advantages"], data["mask"])

    # -- the inner loop ------------------------------------------------------------------
    def _step(
        self, params: Params, data: StepData, step: int, rule, first_order: bool, estimator: str | None = None
    ) -> Params:
        grads = grad(self.inner_loss)(params, data, estimator)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        return rule(params, grads, step)

    def adapt(
        self,
        theta: Params,
        inner: list[StepData],
        first_order: bool | None = None,
        trajectory: bool = False,
        estimator: str | None = None,
    ):
        """Per-task adapted parameters (leading task dimension) from shared ``theta`` over the recorded steps.

        With ``trajectory=True`` returns the list of parameters before each step and after the last.
        ``estimator`` overrides the learner's inner objective: all give the same adapted values and
        differ only in the second derivatives the outer step sees.
        """
        first_order = self.first_order if first_order is None else first_order

        def one_task(steps: list[StepData]):
            fast, path = theta, [theta]
            for k, data in enumerate(steps):
                fast = self._step(fast, data, k, self.rule, first_order, estimator)
                path.append(fast)
            return path if trajectory else fast

        return vmap(one_task)(inner)

    def sample(
        self,
        tasks: torch.Tensor,
        seed: int,
        steps: int | None = None,
        episodes: int | None = None,
        rule=None,
        task_ids: Sequence[int] | None = None,
    ) -> Adaptation:
        """Alternate rollouts and (graph-free) inner steps on ``tasks``; the last rollout uses the adapted policy.

        ``task_ids`` name the tasks' random streams (default: their positions).
        """
        steps = self.inner_steps if steps is None else steps
        episodes = episodes or self.episodes
        rule = rule or self.rule
        fast = {n: p.detach().expand(len(tasks), *p.shape) for n, p in self.params().items()}
        inner, played = [], []
        for k in range(steps + 1):
            played.append(
                rollout(
                    self.family, tasks, self, fast, episodes, derive_seed(seed, k), per_task=True, task_ids=task_ids
                )
            )
            if k == steps:
                break
            inner.append(self.process(played[-1]))
            with torch.no_grad():
                fast = vmap(lambda p, d, k=k: self._step(p, d, k, rule, True))(fast, inner[-1])
        return Adaptation(inner, played, fast, tasks)

    def meta_step(self, tasks: torch.Tensor, seed: int, optimizer=None, shard: Shard = Shard()) -> dict[str, float]:
        """One meta-update from episodes of ``tasks``; returns metrics (means over the meta-batch)."""
        raise NotImplementedError

    def rollout_metrics(self, draw: Adaptation, shard: Shard) -> dict[str, float]:
        return {
            "return_before": float(shard.mean(draw.episodes[0].returns().double().mean())),
            "return_after": float(shard.mean(draw.valid.returns().double().mean())),
            "env_steps": int(shard.reduce(torch.tensor(float(draw.env_steps), dtype=torch.float64))),
            "rollout_seconds": draw.seconds,
        }


def masked_task_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each task's real steps, then over tasks (leading dimension: tasks)."""
    dims = tuple(range(1, values.dim()))
    return ((values * mask).sum(dims) / mask.sum(dims).clamp_min(1)).mean()
