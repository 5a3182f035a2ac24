"""RL²: a recurrent policy whose hidden state is the learning algorithm, meta-trained with PPO on trials.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel (2016), "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning", https://arxiv.org/abs/1611.02779. Each task of a meta-batch plays ``trials``
trials of ``episodes_per_trial`` episodes (:mod:`innerloop.rl.recurrent`); a trial is one episode of the
meta-MDP, so the discounted return and GAE run across its episode boundaries and end at the trial's end::

    max_theta  E_tasks E_trials[ sum_t gamma^t r_t ]      (the outer, "slow" RL)

"Adaptation" is the hidden state: the return of the k-th episode of a trial is RL²'s return after k
episodes of experience. Departures from the paper: the outer optimiser is PPO's clipped objective
(:mod:`innerloop.rl.ppo`; the paper uses TRPO, the Meta-World baselines PPO) with a value head on the GRU
in place of a separate baseline network, whose targets are standardised by each meta-batch's return mean
and std (without it the shared GRU chases the returns' scale and the policy degrades), and the minibatches
of an epoch split each task's trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..algorithms.step import Shard
from ..core.params import copy_flat_, flatten
from ..errors import ConfigError, TrainingDiverged
from ..tasks.seeding import derive_seed, seeded_generator
from .learner import masked_task_mean
from .ppo import clip_fraction, clipped_surrogate, normalize, value_loss
from .recurrent import RecurrentPolicy, Trials, compact, play_trials
from .returns import gae
from .sampler import Episodes, scores


class RL2(nn.Module):
    """RL² with a PPO outer loop, driven by :class:`~innerloop.training.trainer.Trainer` like the other learners.

    Args:
        policy: a :class:`~innerloop.rl.recurrent.RecurrentPolicy` fitting ``family``.
        family: the task family (``innerloop.rl.envs``).
        episodes_per_trial: K, episodes of one task played in sequence with the hidden state kept.
        trials: trials per task per meta-batch (played in parallel).
        clip: epsilon of PPO's clipped objective.
        epochs: passes of PPO over each meta-batch of trials.
        minibatches: minibatches per epoch (each a share of every task's trials; at most ``trials``).
        value_coef: weight c_v of the value loss.
        entropy_coef: weight c_H of the entropy bonus.
        gamma, gae_lambda: discount and GAE parameter, over the whole trial.
        eval_trials: trials per task at validation and evaluation (default ``trials``).
    """

    adapts_by = "its hidden state, kept over the trial"  # Meta-World's protocol header (rl.success)
    value_shift: torch.Tensor  # buffers: the standardisation of the value head's targets
    value_scale: torch.Tensor
    rule = None  # no inner update rule: RL² adapts through its hidden state (asked by Meta-World's protocol)
    divergence_fix = "Lower train.meta_lr or set train.grad_clip."

    def __init__(
        self,
        policy: RecurrentPolicy,
        family,
        episodes_per_trial: int = 2,
        trials: int = 4,
        clip: float = 0.2,
        epochs: int = 10,
        minibatches: int = 4,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        eval_trials: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(policy, RecurrentPolicy):
            raise ConfigError(f"RL² needs a RecurrentPolicy (innerloop.rl.recurrent), got a {type(policy).__name__}")
        for name, value in (("episodes_per_trial", episodes_per_trial), ("trials", trials), ("epochs", epochs)):
            if value < 1:
                raise ConfigError(f"algorithm.{name} must be >= 1, got {value}")
        if not 1 <= minibatches <= trials:
            raise ConfigError(
                f"algorithm.minibatches={minibatches} must lie in 1..algorithm.trials={trials} "
                "(each minibatch holds a share of every task's trials); lower minibatches or raise trials"
            )
        self.policy, self.family = policy, family
        self.distribution = policy.distribution
        self.episodes_per_trial, self.trials, self.eval_trials = episodes_per_trial, trials, eval_trials or trials
        self.clip, self.epochs, self.minibatches = clip, epochs, minibatches
        self.value_coef, self.entropy_coef = value_coef, entropy_coef
        self.gamma, self.gae_lambda = gamma, gae_lambda
        # The value head predicts returns standardised by the last meta-batch's mean and std (buffers: checkpoints
        # carry them), so its targets stay of unit scale whatever the rewards' (the GRU is shared with the policy).
        self.register_buffer("value_shift", torch.zeros((), dtype=torch.float64))
        self.register_buffer("value_scale", torch.ones((), dtype=torch.float64))

    def sample(
        self,
        tasks: torch.Tensor,
        seed: int,
        trials: int | None = None,
        episodes: int | None = None,
        task_ids: Sequence[int] | None = None,
    ) -> Trials:
        """``trials`` trials of ``episodes`` episodes (defaults: the learner's) of each task, rolled out from ``seed``."""
        return play_trials(
            self.policy, self.family, tasks, trials or self.trials, episodes or self.episodes_per_trial, seed, task_ids
        )

    def sequences(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy over whole compacted trials ``[T, N, L]`` from a zero hidden state: ``(outputs, values)``."""
        T, N, L = data["mask"].shape
        x = self.policy.inputs(data["observations"], data["prev_actions"], data["prev_rewards"], data["prev_dones"])
        out, values, _ = self.policy(x.flatten(0, 1))
        return out.reshape(T, N, L, -1), values.reshape(T, N, L)

    def process(self, draw: Trials, shard: Shard = Shard()) -> dict[str, torch.Tensor]:
        """Compacted trials with the old log-probabilities, GAE advantages (normalised over the meta-batch) and
        value targets; sets the value standardisation (``value_shift``, ``value_scale``) to this batch's returns."""
        data = compact(draw)
        with torch.no_grad():
            out, standardised = self.sequences(data)
        dtype = standardised.dtype
        values = standardised * self.value_scale.to(dtype) + self.value_shift.to(dtype)
        mask, rewards = data["mask"].to(dtype), data["rewards"].to(dtype)
        advantages = gae(rewards, values * mask, mask, self.gamma, self.gae_lambda)
        returns = (advantages + values) * mask
        moments = torch.stack([mask.sum(), returns.sum(), returns.pow(2).sum()]).double()
        count, total, squares = shard.reduce(moments).unbind()
        self.value_shift.fill_(total / count.clamp_min(1))
        self.value_scale.fill_((squares / count.clamp_min(1) - self.value_shift.pow(2)).clamp_min(1e-8).sqrt())
        data["returns"] = ((returns - self.value_shift.to(dtype)) / self.value_scale.to(dtype)) * mask
        data["advantages"] = normalize(advantages, mask, shard.reduce)
        data["old_log_prob"] = self.distribution.log_prob(out, data["actions"])
        data["mask"] = mask
        return data

    def ppo_loss(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's loss on (a minibatch of) processed trials: means over each task's real steps, then over tasks."""
        out, values = self.sequences(data)
        mask = data["mask"]
        log_prob = self.distribution.log_prob(out, data["actions"])
        surrogate = masked_task_mean(
            clipped_surrogate(log_prob, data["old_log_prob"], data["advantages"], self.clip), mask
        )
        v_loss = masked_task_mean(value_loss(values, data["returns"]), mask)
        entropy = masked_task_mean(self.distribution.entropy(out), mask)
        loss = -surrogate + self.value_coef * v_loss - self.entropy_coef * entropy
        stats = {
            "surrogate": surrogate,
            "value_loss": v_loss,
            "entropy": entropy,
            "approx_kl": masked_task_mean(data["old_log_prob"] - log_prob, mask),
            "clip_fraction": masked_task_mean(clip_fraction(log_prob, data["old_log_prob"], self.clip), mask),
        }
        return loss, stats

    # -- what a trainer calls -------------------------------------------------------------
    def meta_step(self, tasks: torch.Tensor, optimizer, shard: Shard = Shard()) -> dict[str, float]:
        """Play the meta-batch's trials, then ``epochs`` x ``minibatches`` PPO steps of ``optimizer`` (gradients
        summed over the processes, clipped at ``shard.max_grad_norm``); returns the meta-batch's metrics (the PPO
        statistics averaged over its minibatch steps)."""
        if optimizer is None:
            raise ConfigError("RL² takes optimizer steps on the policy: pass meta_step an optimizer (e.g. Adam)")
        draw = self.sample(tasks, shard.seed, task_ids=shard.task_ids)
        data = self.process(draw, shard)
        params = list(self.parameters())
        totals: dict[str, float] = {}  # the PPO statistics summed over every minibatch step, then averaged
        for epoch in range(self.epochs):  # the same split of the trials on every process
            order = torch.randperm(self.trials, generator=seeded_generator(shard.seed, "minibatches", epoch))
            for part in order.chunk(self.minibatches):
                loss, stats = self.ppo_loss({k: v[:, part] for k, v in data.items()})
                for name, value in stats.items():
                    totals[name] = totals.get(name, 0.0) + float(shard.mean(value.detach()))
                optimizer.zero_grad(set_to_none=True)
                (shard.weight * loss).backward()
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                copy_flat_(grads, shard.reduce(flatten(grads)))
                for p, g in zip(params, grads):
                    p.grad = g
                norm = torch.nn.utils.clip_grad_norm_(params, shard.max_grad_norm or math.inf)
                if not torch.isfinite(norm):
                    raise TrainingDiverged(f"PPO gradient norm {float(norm)}")
                optimizer.step()
        steps = self.epochs * len(torch.arange(self.trials).chunk(self.minibatches))
        metrics = {name: total / steps for name, total in totals.items()}
        metrics |= self.rollout_metrics(draw, shard)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise TrainingDiverged(f"non-finite metrics {metrics}")
        return metrics

    def rollout_metrics(self, draw: Trials, shard: Shard) -> dict[str, float]:
        """Return of the trials' first and last episode, env steps and rollout time (success where reported)."""
        metrics = {
            "return_before": float(shard.mean(draw.episodes[0].returns().double().mean())),
            "return_after": float(shard.mean(draw.valid.returns().double().mean())),
            "env_steps": int(shard.reduce(torch.tensor(float(draw.env_steps), dtype=torch.float64))),
            "rollout_seconds": draw.seconds,
        }
        if draw.episodes[0].success is not None and draw.valid.success is not None:
            metrics["success_before"] = float(shard.mean(draw.episodes[0].success.double().mean()))
            metrics["success_after"] = float(shard.mean(draw.valid.success.double().mean()))
        return metrics

    @property
    def validation_steps(self) -> list[int]:
        """The episodes of a trial validation reports (0: the first, before any experience of the task)."""
        return list(range(self.episodes_per_trial))

    def evaluate_tasks(
        self, source, ids: range, num_tasks: int, steps: Sequence[int], device=None, dtype=None, **protocol
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task returns ``{k: {"return": (len(ids),)}}`` of the ``k``-th episode of trials of ``max(steps) + 1``
        episodes on tasks ``ids`` of ``source.fixed(num_tasks)``; ``protocol``: ``episodes`` (trials per task,
        default ``eval_trials``) and ``seed``."""
        trials = protocol.get("episodes") or self.eval_trials
        seed = protocol.get("seed", derive_seed(source.seed, "rollouts"))
        tasks = source.fixed(num_tasks)[ids.start : ids.stop]
        return self.returns_after(tasks, steps, trials, None, seed, ids)[0]

    def evaluation_rule(self, lrs: Sequence[float] | None) -> None:
        """No update rule: the step sizes of the gradient learners' protocol do not apply to RL²."""
        return None

    def returns_after(self, tasks, steps: Sequence[int], episodes: int, rule, seed: int, task_ids: Sequence[int]):
        """``({k: per-task mean return of episode k}, the trials)``: ``episodes`` trials per task (``rule``: unused)."""
        draw = self.sample(tasks, seed, trials=episodes, episodes=max(steps) + 1, task_ids=task_ids)
        return scores(draw.episodes, steps), draw

    def adapt_and_score(
        self,
        tasks: torch.Tensor,
        adaptation_steps: int,
        adaptation_episodes: int,
        evaluation_episodes: int,
        seed: int,
        rule=None,
        task_ids: Sequence[int] | None = None,
        deterministic: bool = False,
    ) -> Episodes:
        """Meta-World's protocol (``rl.success``): one trial per task of ``adaptation_steps x adaptation_episodes``
        episodes, then ``evaluation_episodes`` scored ones (ending at success) with the hidden state kept
        (``rule``, the gradient learners' step sizes: unused)."""
        adapting = adaptation_steps * adaptation_episodes
        draw = play_trials(
            self.policy,
            self.family,
            tasks,
            1,
            adapting + evaluation_episodes,
            derive_seed(seed, "rl2-trial"),
            task_ids,
            deterministic=deterministic,
            scored_from=adapting,
        )
        scored = draw.episodes[adapting:]
        fields = ("observations", "actions", "rewards", "mask")
        joined = {f: torch.cat([getattr(e, f) for e in scored], 1) for f in fields}
        reported = [e.success for e in scored if e.success is not None]
        success = torch.cat(reported, 1) if len(reported) == len(scored) else None
        return Episodes(**joined, seconds=sum(e.seconds for e in scored), success=success)

    def progress_fields(self, record: dict) -> dict[str, str]:
        """What a progress bar shows of a logged training record: first -> last episode's return, env steps/s."""
        return {
            "return": f"{record['return_before']:.1f}->{record['return_after']:.1f}",
            "env_steps_s": f"{record['env_steps_per_s']:.0f}",
        }


__all__ = ["RL2"]
