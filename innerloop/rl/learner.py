"""What MAML-TRPO and ProMP share: a meta-learned policy initialization and its inner loop.

The inner loop of meta-RL (Finn et al. 2017, section 3.3; Algorithm 3) samples episodes
with the current parameters, scores them with a per-task linear baseline and GAE, and
takes a policy-gradient step of the learner's update rule (SGD: ``u = -alpha_k g``)::

    theta'_{k+1} = theta'_k + rule(grad L_inner(theta'_k; D_k), ...),   D_k ~ pi_{theta'_k},  theta'_0 = theta

where ``L_inner`` is one of the estimators of :mod:`innerloop.rl.estimators`. Every step
needs fresh episodes from the policy it produced, so sampling alternates with adapting
(:meth:`MetaPolicyLearner.sample`), without a graph; the outer algorithm then replays the
recorded episodes through :meth:`MetaPolicyLearner.adapt`, which keeps the graph of each
inner gradient (second order) unless ``first_order``. Both run the supervised learners' engine
(:func:`innerloop.core.engine.adapt_params`, update-rule state included), with one batch of episodes
per step; tasks are batched with ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..algorithms.step import Shard
from ..core.engine import adapt_params, functional_model, inner_step, map_over_tasks, vmap_with_constants
from ..core.params import Params, head_names
from ..core.rules import SGD, State, UpdateRule
from ..errors import ConfigError, TrainingDiverged
from ..tasks.seeding import derive_seed
from .estimators import ESTIMATORS
from .policies import Policy
from .returns import gae, linear_baseline, normalize_per_task
from .sampler import Draw, Episodes, rollout, scores

StepData = dict[str, torch.Tensor]  # observations, actions, advantages, mask: leading task dimension


def _task(tree, i: int):
    """Task ``i`` of a pytree of tensors with a leading task dimension."""
    return tree_map(lambda t: t[i], tree)


@dataclass
class Adaptation(Draw):
    """What one meta-training (or evaluation) draw produced for a batch of tasks."""

    inner: list[StepData]  # per inner step, the episodes it adapted on (processed)
    episodes: list[Episodes]  # every rollout: one per inner step, then the adapted policy's
    adapted: Params  # the adapted parameters, leading task dimension, no graph
    tasks: torch.Tensor  # the tasks' parameters


class MetaPolicyLearner(nn.Module):
    """A policy whose initialization is meta-learned for fast policy-gradient adaptation.

    Args:
        policy: a policy module (``innerloop.rl.policies``) fitting ``family``.
        family: the task family (``innerloop.rl.envs``).
        inner_lr: alpha, or a list of per-step rates (default 0.1), of the SGD inner step.
        inner_steps: adaptation steps at meta-training time (each samples new episodes).
        episodes: episodes per task per step (the MAML paper's "fast batch size", 20).
        estimator: the inner objective: ``"vpg"`` (REINFORCE, the default), ``"dice"`` or ``"lvc"``.
        first_order: treat inner gradients as constants in the outer gradient.
        gamma, gae_lambda: discount and GAE parameter of the advantages.
        eval_episodes: episodes per task per step at validation (default ``episodes``).
        update_rule: an :class:`~innerloop.core.rules.UpdateRule` instead of SGD(inner_lr) (e.g. ``MetaSGDRates()``);
            its meta-parameters are learned with the policy's (``update_rule.*``).
        strategy: ``"vmap"`` (default) or ``"loop"``: how the tasks' inner loops are mapped (same numbers).
    """

    def __init__(
        self,
        policy: Policy,
        family,
        inner_lr=None,
        inner_steps: int = 1,
        episodes: int = 20,
        estimator: str = "vpg",
        first_order: bool = False,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        eval_episodes: int | None = None,
        update_rule: UpdateRule | None = None,
        strategy: str = "vmap",
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if inner_steps < 1:
            raise ValueError(f"meta-RL adapts with at least one inner step, got inner_steps={inner_steps}")
        self.policy = policy
        self.family = family
        if strategy not in ("vmap", "loop"):
            raise ValueError(f"strategy must be 'vmap' or 'loop', got {strategy!r}")
        self.strategy = strategy
        if update_rule is not None and inner_lr is not None:
            raise ValueError(f"give inner_lr={inner_lr!r} or update_rule=, not both: the rule has its own rate")
        self.update_rule = SGD(0.1 if inner_lr is None else inner_lr) if update_rule is None else update_rule
        like = next(iter(policy.parameters()))
        shapes = {n: p.shape for n, p in policy.named_parameters()}
        self.update_rule.bind(shapes, inner_steps, like, head=head_names(policy))
        self.inner_steps, self.episodes = inner_steps, episodes
        self.eval_episodes = eval_episodes or episodes  # per task per step at validation
        self.estimator = estimator
        self.first_order = first_order
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.forward = functional_model(policy)
        self.distribution = policy.distribution

    def params(self) -> Params:
        """The policy's parameters, ``name -> tensor`` (theta, the meta-learned initialization)."""
        return dict(self.policy.named_parameters())

    @property
    def rule(self) -> UpdateRule:
        """The inner loop's update rule (``update_rule``)."""
        return self.update_rule

    def rule_meta(self) -> Params:
        """The update rule's meta-parameters, ``name -> tensor`` (empty for SGD)."""
        return self.update_rule.meta()

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
        """log pi_params(a | s) of the recorded actions of one task (or a batch, by broadcasting)."""
        return self.distribution.log_prob(self.forward(params, data["observations"]), data["actions"])

    def inner_loss(self, params: Params, data: StepData, estimator: str | None = None) -> torch.Tensor:
        """L_inner of one task (no task dimension), with the learner's estimator unless another is named."""
        return ESTIMATORS[estimator or self.estimator](self.log_prob(params, data), data["advantages"], data["mask"])

    # -- the inner loop ------------------------------------------------------------------
    def _objective(self, estimator: str | None):
        def objective(params: Params, data: StepData) -> torch.Tensor:
            return self.inner_loss(params, data, estimator)

        return objective

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
        objective, meta = self._objective(estimator), self.rule_meta()

        def one_task(steps: list[StepData]):
            return adapt_params(
                objective, self.update_rule, theta, {}, steps, len(steps), True, first_order, trajectory, meta=meta
            )

        return map_over_tasks(one_task, (inner,), len(inner[0]["mask"]), self.strategy)

    def _sample_step(self, rule: UpdateRule, fast: Params, state: State, data: StepData, step: int, first: bool):
        """One graph-free inner step of every task (``first``: the rule's state starts here)."""
        objective, meta = self._objective(None), rule.meta()

        def one_task(p: Params, s: State, d: StepData):
            return inner_step(objective, rule, p, {}, rule.init_state(p) if first else s, d, step, True, meta)

        with torch.no_grad():
            if self.strategy == "vmap":
                return vmap_with_constants(one_task, fast, state, data)
            tasks = len(data["mask"])
            states = [None] * tasks if first else state
            outs = [one_task(_task(fast, i), states[i], _task(data, i)) for i in range(tasks)]
            return tree_map(lambda *ts: torch.stack(ts), *[p for p, _ in outs]), [s for _, s in outs]

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
        inner, played, state = [], [], None
        for k in range(steps + 1):
            played.append(
                rollout(
                    self.family, tasks, self, fast, episodes, derive_seed(seed, k), per_task=True, task_ids=task_ids
                )
            )
            if k == steps:
                break
            inner.append(self.process(played[-1]))
            fast, state = self._sample_step(rule, fast, state, inner[-1], k, first=k == 0)
        return Adaptation(inner, played, fast, tasks)

    # -- what a trainer calls (innerloop.algorithms.step) -------------------------------
    divergence_fix = "Lower algorithm.inner_lr, train.meta_lr or rl.max_kl."

    def meta_step(
        self, tasks: torch.Tensor, optimizer=None, shard: Shard = Shard(), seed: int | None = None
    ) -> dict[str, float]:
        """One meta-update from episodes of ``tasks`` (rolled out from ``seed``, default ``shard.seed``);
        returns metrics (means over the meta-batch). Raises :class:`TrainingDiverged` on a non-finite result."""
        metrics = self.outer_step(tasks, shard.seed if seed is None else seed, optimizer, shard)
        bad = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]
        if bad or not all(math.isfinite(v) for v in metrics.values()):
            raise TrainingDiverged(f"non-finite {bad[:3] or 'metrics'}")
        return metrics

    def outer_step(self, tasks: torch.Tensor, seed: int, optimizer, shard: Shard) -> dict[str, float]:
        """The outer algorithm's update of theta from a draw of episodes on ``tasks`` (MAML-TRPO, ProMP)."""
        raise NotImplementedError

    @property
    def validation_steps(self) -> list[int]:
        """A validation reports the return before adaptation and after the meta-trained steps."""
        return [0, self.inner_steps]

    def evaluate_tasks(
        self, source, ids: range, num_tasks: int, steps: Sequence[int], device=None, dtype=None, **protocol
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task returns ``{step: {"return": (len(ids),)}}`` of tasks ``ids`` of ``source.fixed(num_tasks)``.

        ``protocol``: ``episodes`` (default ``eval_episodes``), ``lrs`` (default the inner loop's rates) and
        ``seed`` (default derived from the source's); each task has its own random stream, so the result of a
        task does not depend on the other tasks evaluated with it.
        """
        episodes = protocol.get("episodes") or self.eval_episodes
        rule = self.evaluation_rule(protocol.get("lrs"))
        seed = protocol.get("seed", derive_seed(source.seed, "rollouts"))
        tasks = source.fixed(num_tasks)[ids.start : ids.stop]
        return self.returns_after(tasks, steps, episodes, rule, seed, ids)[0]

    def evaluation_rule(self, lrs: Sequence[float] | None) -> UpdateRule:
        """The inner loop's rule, or plain SGD at the protocol's ``lrs`` (one per step) in place of its SGD rates.

        A learned rule is never silently replaced by SGD: ``lrs`` with one is refused.
        """
        if not lrs:
            return self.rule
        if type(self.rule) is not SGD:
            raise ConfigError(
                f"evaluation step sizes {list(lrs)} replace an SGD inner loop, but this learner adapts with "
                f"{type(self.rule).__name__}; evaluate without them (rl.eval_lrs=null) to use the learned rule"
            )
        return SGD(list(lrs))

    def returns_after(self, tasks, steps: Sequence[int], episodes: int, rule, seed: int, task_ids: Sequence[int]):
        """``({step: per-task mean return}, the draw)`` after each number of policy-gradient ``steps`` on ``tasks``."""
        draw = self.sample(tasks, seed, steps=max(steps), episodes=episodes, rule=rule, task_ids=task_ids)
        return scores(draw.episodes, steps), draw

    def progress_fields(self, record: dict) -> dict[str, str]:
        """What a progress bar shows of a logged training record."""
        return {
            "return": f"{record['return_before']:.1f}->{record['return_after']:.1f}",
            "env_steps_s": f"{record['env_steps_per_s']:.0f}",
        }

    def rollout_metrics(self, draw: Adaptation, shard: Shard) -> dict[str, float]:
        metrics = {
            "return_before": float(shard.mean(draw.episodes[0].returns().double().mean())),
            "return_after": float(shard.mean(draw.valid.returns().double().mean())),
            "env_steps": int(shard.reduce(torch.tensor(float(draw.env_steps), dtype=torch.float64))),
            "rollout_seconds": draw.seconds,
        }
        before, after = draw.episodes[0].success, draw.valid.success
        if before is not None and after is not None:  # families that report success (Meta-World): beside the returns
            metrics["success_before"] = float(shard.mean(before.double().mean()))
            metrics["success_after"] = float(shard.mean(after.double().mean()))
        return metrics


def masked_task_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each task's real steps, then over tasks (leading dimension: tasks)."""
    dims = tuple(range(1, values.dim()))
    return ((values * mask).sum(dims) / mask.sum(dims).clamp_min(1)).mean()
