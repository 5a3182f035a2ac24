"""PEARL: off-policy meta-RL with a probabilistic context variable (Rakelly et al. 2019, Algorithms 1 and 2).

Rakelly, Zhou, Quillen, Finn & Levine (2019), "Efficient Off-Policy Meta-Reinforcement Learning via
Probabilistic Context Variables", ICML. https://arxiv.org/abs/1903.08254 ; code: katerakelly/oyster.

A fixed set of training tasks, each with an RL replay buffer B_i and an encoder buffer (recent data
only). The encoder ``q_phi(z | c)`` (``rl.context``) infers a task from a context ``c`` and SAC
(``rl.sac``) acts and learns on ``(s, z)``; the objective of one gradient step over a meta-batch is::

    L = L_Q(theta_Q, phi) + L_pi + L_alpha + beta sum_i KL(q_phi(z | c_i) || N(0, I)),   z ~ q_phi(z | c_i)

with ``c_i`` drawn from task i's encoder buffer and the SAC batch from B_i (the paper's sampling scheme:
the context comes from recent on-policy-ish data, the RL batch from the whole buffer). Test time is
posterior sampling: the first episode with ``z`` from the prior, each next one with ``z`` resampled
from the posterior of all the transitions collected so far on the task.

One trainer iteration (``meta_step``): at the first, ``initial_episodes`` with the prior on every
training task; then on ``tasks_per_iteration`` tasks drawn from the iteration's seed: clear the encoder
buffer, collect ``prior_episodes`` with z from the prior (both buffers) and ``posterior_episodes`` with
z from the posterior of encoder-buffer context (RL buffer only); then ``gradient_steps`` steps of the
trainer's optimizer (one Adam over every network: each loss reaches only its own parameters, so this
equals the paper's separate optimizers at a shared rate). The trainer's drawn task batch is not used.
Departures: collection counts whole episodes (the code counts steps); SAC without its value network
(``rl.sac``). The replay buffers and target critics are module buffers: a checkpoint holds them and
resume continues exactly. Under torchrun every rank collects the same data and computes its share of
the meta-batch of each gradient step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from ..algorithms.step import Shard
from ..errors import ConfigError, TrainingDiverged
from ..tasks.seeding import derive_seed, seeded_generator
from ..validate import require_bounds
from .context import ContextEncoder, GaussianFactors, kl_to_unit, sample_latent
from .envs.base import task_streams
from .learner import Adaptation
from .replay import TaskReplay
from .sac import SACSettings, TanhGaussianPolicy, TwinCritic, sac_losses
from .sampler import Episodes, scores


@dataclass
class Played:
    """``E`` episodes of each of ``T`` tasks: transitions ``rows [T, E, H, width]``, ``mask [T, E, H]``."""

    rows: torch.Tensor
    mask: torch.Tensor
    seconds: float
    success: torch.Tensor | None = None

    def episodes(self, obs_dim: int, action_dim: int) -> Episodes:
        """As the sampler's :class:`~innerloop.rl.sampler.Episodes` (observations, actions, rewards, mask)."""
        o, a = obs_dim, action_dim
        rows = self.rows
        return Episodes(rows[..., :o], rows[..., o : o + a], rows[..., o + a], self.mask, self.seconds, self.success)


def check_sac_constants(temperature: float, reward_scale: float, tau: float, kl_weight: float, policy_reg: float):
    """SAC's constants in their ranges (a temperature <= 0 has no log; tau outside (0, 1] does not average): one
    ConfigError line naming the first that is not."""
    require_bounds(
        "pearl",
        SimpleNamespace(**locals()),
        ("temperature", not temperature > 0, "> 0"),
        ("reward_scale", not reward_scale > 0, "> 0"),
        ("tau", not 0 < tau <= 1, "in (0, 1]"),
        ("kl_weight", not kl_weight >= 0, ">= 0"),
        ("policy_reg", not policy_reg >= 0, ">= 0"),
        error=ConfigError,
    )


class PEARL(nn.Module):
    """PEARL on a task family's fixed training tasks, SAC conditioned on the inferred latent.

    Args:
        family: a continuous-action task family (``innerloop.rl.envs``).
        train_tasks: ``[N, task_dim]`` the training tasks, one replay buffer each.
        latent_dim: size of z (paper: 5).
        hidden: hidden widths of the policy and the critics (paper: 300, 300, 300).
        encoder_hidden: hidden widths of the context encoder (paper: 200, 200, 200).
        meta_batch: tasks per gradient step (paper: 16).
        tasks_per_iteration: tasks collected on per iteration (paper: 5).
        initial_episodes: prior episodes per training task before the first gradient step.
        prior_episodes: episodes with z from the prior per collected task and iteration (both buffers).
        posterior_episodes: episodes with z from the posterior per collected task and iteration (RL buffer only).
        gradient_steps: gradient steps per iteration (paper: 2000).
        batch_size: SAC transitions per task per gradient step (paper: 256).
        context_batch_size: context transitions per task per gradient step (paper code: 64 or 100).
        buffer_size: transitions kept in each task's RL buffer.
        kl_weight: beta, the weight of the KL term (paper: 0.1).
        reward_scale: c, multiplies the rewards in the critics' target (paper: 5).
        temperature: alpha, the entropy weight (its initial value when learned; paper: 1, fixed).
        learn_temperature: learn alpha towards the target entropy -action_dim.
        gamma: discount.
        tau: Polyak rate of the target critics.
        policy_reg: weight of the policy's mean and log-std penalty.
        next_obs_in_context: a context transition also holds the next observation.
        eval_episodes: parallel posterior-sampling trials per test task at evaluation.
        deterministic_eval: act with tanh(mu) at evaluation (the authors' code).
    """

    adapts_by = "posterior sampling over its context"  # Meta-World's protocol header (rl.success)
    train_tasks: torch.Tensor
    log_alpha: torch.Tensor
    divergence_fix = "Lower train.meta_lr or algorithm.reward_scale, or set train.grad_clip."

    def __init__(
        self,
        family,
        train_tasks: torch.Tensor,
        latent_dim: int = 5,
        hidden: Sequence[int] = (300, 300, 300),
        encoder_hidden: Sequence[int] = (200, 200, 200),
        meta_batch: int = 16,
        tasks_per_iteration: int = 5,
        initial_episodes: int = 10,
        prior_episodes: int = 2,
        posterior_episodes: int = 3,
        gradient_steps: int = 2000,
        batch_size: int = 256,
        context_batch_size: int = 100,
        buffer_size: int = 100_000,
        kl_weight: float = 0.1,
        reward_scale: float = 5.0,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_reg: float = 1e-3,
        next_obs_in_context: bool = False,
        eval_episodes: int = 20,
        deterministic_eval: bool = True,
    ) -> None:
        super().__init__()
        if family.discrete:
            raise ConfigError(f"PEARL's SAC acts in continuous action spaces; {family.name} has discrete actions")
        counts = dict(latent_dim=latent_dim, meta_batch=meta_batch, tasks_per_iteration=tasks_per_iteration)
        counts |= dict(initial_episodes=initial_episodes, batch_size=batch_size, context_batch_size=context_batch_size)
        counts |= dict(buffer_size=buffer_size, eval_episodes=eval_episodes, train_tasks=len(train_tasks))
        bad = [f"{k}={v!r}" for k, v in counts.items() if not (isinstance(v, int) and v >= 1)]
        rest = dict(prior_episodes=prior_episodes, posterior_episodes=posterior_episodes, gradient_steps=gradient_steps)
        bad += [f"{k}={v!r}" for k, v in rest.items() if not (isinstance(v, int) and v >= 0)]
        if bad or prior_episodes + posterior_episodes < 1:
            raise ConfigError(
                f"PEARL: {', '.join(bad) or 'prior_episodes + posterior_episodes = 0'}: sizes must be positive integers "
                "(prior_episodes, posterior_episodes, gradient_steps >= 0, with some episodes collected per iteration)"
            )
        check_sac_constants(temperature, reward_scale, tau, kl_weight, policy_reg)
        self.family = family
        o, a = family.observation_dim, family.action_dim
        self.obs_dim, self.action_dim, self.latent_dim = o, a, latent_dim
        self.context_width = o + a + 1 + (o if next_obs_in_context else 0)
        self.encoder = ContextEncoder(self.context_width, latent_dim, tuple(encoder_hidden))
        self.policy = TanhGaussianPolicy(o + latent_dim, a, tuple(hidden))
        self.critic = TwinCritic(o + a + latent_dim, tuple(hidden))
        log_alpha = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("log_alpha", log_alpha)
        self.settings = SACSettings(gamma, reward_scale, policy_reg, -float(a))
        self.register_buffer("train_tasks", train_tasks.detach().clone())
        fields = {"obs": o, "action": a, "reward": 1, "next_obs": o, "terminal": 1}
        self.replay = TaskReplay(len(train_tasks), buffer_size, fields)  # B_i
        horizon = family.horizon
        self.context_replay = TaskReplay(len(train_tasks), max(initial_episodes, prior_episodes) * horizon, fields)
        self.meta_batch, self.tasks_per_iteration = meta_batch, tasks_per_iteration
        self.initial_episodes, self.prior_episodes = initial_episodes, prior_episodes
        self.posterior_episodes, self.gradient_steps = posterior_episodes, gradient_steps
        self.batch_size, self.context_batch_size = batch_size, context_batch_size
        self.kl_weight, self.tau = kl_weight, tau
        self.eval_episodes, self.deterministic_eval = eval_episodes, deterministic_eval
        low, high = family.action_bounds() or (-1.0, 1.0)
        self.action_low, self.action_high = low, high

    # -- acting ---------------------------------------------------------------------------
    def _context(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[..., : self.context_width]

    def _prior(self, shape: tuple[int, ...]) -> GaussianFactors:
        like = self.replay.data
        return GaussianFactors(like.new_zeros(*shape, self.latent_dim), like.new_zeros(*shape, self.latent_dim))

    @torch.no_grad()
    def play(self, tasks: torch.Tensor, task_ids: Sequence[int], z: torch.Tensor, seed: int, deterministic: bool):
        """One episode in each of ``z``'s ``[T, E]`` (task, trial) slots with latents ``z [T, E, latent]``."""
        start = time.perf_counter()
        num_tasks, trials = z.shape[:2]
        horizon, dtype = self.family.horizon, self.replay.data.dtype
        noise = None
        if not deterministic:  # each task's action noise from its own stream
            streams = task_streams(derive_seed(seed, "actions"), task_ids)
            noise = torch.stack([torch.randn(horizon, trials, self.action_dim, generator=g) for g in streams])
        env = self.family.make(tasks, trials, seed, task_ids)
        try:
            obs = env.reset().to(dtype)
            alive = torch.ones(num_tasks, trials, dtype=dtype)
            rows, masks = [], []
            for t in range(horizon):
                inputs = torch.cat([obs, z], -1)
                action = self.policy.mode(inputs) if noise is None else self.policy.sample(inputs, noise[:, t])[0]
                scaled = self.action_low + (action + 1.0) * (self.action_high - self.action_low) / 2
                next_obs, reward, terminated = env.step(scaled)
                next_obs = next_obs.to(dtype)
                row = [obs, action, reward.to(dtype)[..., None], next_obs, terminated.to(dtype)[..., None]]
                rows.append(torch.cat(row, -1))
                masks.append(alive)
                alive = alive * (~terminated).to(dtype)
                obs = next_obs
            success = getattr(env, "success", None)
        finally:
            env.close()
        return Played(torch.stack(rows, 2), torch.stack(masks, 2), time.perf_counter() - start, success)

    def _collect(self, ids: list[int], episodes: int, seed: int, posterior: bool, to_context: bool) -> dict:
        """Episodes on training tasks ``ids`` into their buffers; the returns and steps taken."""
        tasks, generator = self.train_tasks[ids], seeded_generator(seed, "latent")
        returns, steps, seconds = [], 0, 0.0
        for k in range(episodes):
            factors = self._prior((len(ids),))
            if posterior and k > 0:  # the authors' collect_data: the first episode from the prior
                with torch.no_grad():
                    context = self.context_replay.sample(ids, self.context_batch_size, generator)
                    factors = self.encoder.factors(self._context(context))
            noise = torch.randn(len(ids), self.latent_dim, generator=generator)
            z = sample_latent(*factors.gaussian(), noise)[:, None]
            played = self.play(tasks, ids, z, derive_seed(seed, k), deterministic=False)
            for i, task in enumerate(ids):
                rows = played.rows[i, 0][played.mask[i, 0] > 0]
                self.replay.add(task, rows)
                if to_context:
                    self.context_replay.add(task, rows)
            returns.append((played.rows[..., self.obs_dim + self.action_dim] * played.mask).sum(-1).mean())
            steps, seconds = steps + int(played.mask.sum()), seconds + played.seconds
        mean = float(torch.stack(returns).mean()) if returns else float("nan")
        return {"return": mean, "steps": steps, "seconds": seconds}

    # -- learning ---------------------------------------------------------------------------
    def gradient_step(self, optimizer, shard: Shard, generator: torch.Generator) -> dict[str, float]:
        """One SAC + encoder step on a meta-batch of training tasks (this process's share of it)."""
        n, a = self.meta_batch, self.action_dim
        tasks = torch.randint(len(self.train_tasks), (n,), generator=generator)
        context = self.context_replay.sample(tasks, self.context_batch_size, generator)
        rows = self.replay.sample(tasks, self.batch_size, generator)
        z_noise = torch.randn(n, self.latent_dim, generator=generator)
        action_noise = torch.randn(2, n, self.batch_size, a, generator=generator)
        mine = list(shard.task_ids) if shard.task_ids is not None else list(range(n))
        mean, variance = self.encoder.posterior(self._context(context[mine]))
        z = sample_latent(mean, variance, z_noise[mine])
        kl = kl_to_unit(mean, variance).sum()  # summed over tasks, as the authors' code
        batch = self.replay.split(rows[mine].reshape(-1, self.replay.width))
        per_row = z[:, None].expand(-1, self.batch_size, -1).reshape(-1, self.latent_dim)
        noise = action_noise[:, mine].reshape(2, -1, a)
        losses = sac_losses(self.policy, self.critic, self.log_alpha, batch, per_row, noise, self.settings)
        loss = shard.weight * (losses["q"] + losses["policy"] + losses["alpha_loss"]) + self.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {k: float(v.detach()) for k, v in losses.items()} | {"kl": float(kl.detach()) / len(mine)}
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        metrics = shard.sum_(grads, metrics)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), shard.max_grad_norm or math.inf)
        if not (torch.isfinite(norm) and all(math.isfinite(v) for v in metrics.values())):
            raise TrainingDiverged(f"non-finite PEARL step (gradient norm {float(norm)}, losses {metrics})")
        optimizer.step()
        self.critic.update_targets(self.tau)
        return metrics | {"grad_norm": float(norm)}

    def meta_step(self, batch=None, optimizer=None, shard: Shard = Shard()) -> dict[str, float]:
        """One iteration: collect on some training tasks, then ``gradient_steps`` gradient steps (module doc)."""
        if optimizer is None:
            raise ConfigError("PEARL.meta_step steps a torch optimizer over its networks: give one")
        generator = seeded_generator(shard.seed, "pearl")
        steps, seconds = 0, 0.0
        if int(self.replay.count.sum()) == 0:
            first = self._collect(
                list(range(len(self.train_tasks))), self.initial_episodes, derive_seed(shard.seed, 0), False, True
            )
            steps, seconds = first["steps"], first["seconds"]
        ids = torch.randperm(len(self.train_tasks), generator=generator)[: self.tasks_per_iteration].tolist()
        if self.prior_episodes:
            for task in ids:
                self.context_replay.clear(task)
        prior = self._collect(ids, self.prior_episodes, derive_seed(shard.seed, "prior"), False, True)
        posterior = self._collect(ids, self.posterior_episodes, derive_seed(shard.seed, "posterior"), True, False)
        records = [self.gradient_step(optimizer, shard, generator) for _ in range(self.gradient_steps)]
        metrics = {k: sum(r[k] for r in records) / len(records) for k in records[0]} if records else {}
        return metrics | {
            "return_prior": prior["return"],
            "return_posterior": posterior["return"],
            "env_steps": steps + prior["steps"] + posterior["steps"],
            "rollout_seconds": seconds + prior["seconds"] + posterior["seconds"],
        }

    # -- evaluation: posterior sampling ---------------------------------------------------------
    @property
    def rule(self) -> None:
        """PEARL adapts by inference, not by an update rule (``rl.eval_lrs`` does not apply)."""
        return None

    def evaluation_rule(self, lrs: Sequence[float] | None) -> None:
        """None: PEARL takes no gradient steps at test time, so the protocol's step sizes are not used."""
        return None

    @property
    def validation_steps(self) -> list[int]:
        """The return of the first episode (z from the prior) and of the next (z from its posterior)."""
        return [0, 1]

    @torch.no_grad()
    def returns_after(self, tasks, steps: Sequence[int], episodes: int, rule, seed: int, task_ids: Sequence[int]):
        """``({k: per-task mean return of episode k}, the draw)``: ``episodes`` posterior-sampling trials per task,
        episode ``k`` with z from the posterior of episodes ``0 .. k-1`` (the prior for ``k = 0``)."""
        tasks = tasks.to(self.train_tasks.dtype)
        factors, played = self._prior((len(tasks), episodes)), []
        streams = task_streams(derive_seed(seed, "latent"), task_ids)
        for k in range(max(steps) + 1):
            noise = torch.stack([torch.randn(episodes, self.latent_dim, generator=g) for g in streams])
            z = sample_latent(*factors.gaussian(), noise)
            p = self.play(tasks, task_ids, z, derive_seed(seed, k), self.deterministic_eval)
            factors = factors * self.encoder.factors(self._context(p.rows), p.mask)
            played.append(p.episodes(self.obs_dim, self.action_dim))
        return scores(played, steps), Adaptation([], played, {}, tasks)

    def evaluate_tasks(
        self, source, ids: range, num_tasks: int, steps: Sequence[int], device=None, dtype=None, **protocol
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task returns ``{k: {"return": (len(ids),)}}`` of tasks ``ids`` of ``source.fixed(num_tasks)``
        (``protocol``: ``episodes``, default ``eval_episodes``; ``seed``, default derived from the source's)."""
        episodes = protocol.get("episodes") or self.eval_episodes
        seed = protocol.get("seed", derive_seed(source.seed, "rollouts"))
        tasks = source.fixed(num_tasks)[ids.start : ids.stop]
        return self.returns_after(tasks, steps, episodes, None, seed, ids)[0]

    @torch.no_grad()
    def adapt_and_score(
        self,
        tasks,
        adaptation_steps,
        adaptation_episodes,
        evaluation_episodes,
        seed,
        rule=None,
        task_ids=None,
        deterministic=False,
    ) -> Episodes:
        """Meta-World's protocol: ``adaptation_steps * adaptation_episodes`` context episodes in sequence
        (posterior sampling), then ``evaluation_episodes`` scored episodes, each with z from the final posterior,
        acting with tanh(mu) where ``deterministic`` or ``deterministic_eval`` (``rule`` is not used)."""
        tasks = tasks.to(self.train_tasks.dtype)
        task_ids = range(len(tasks)) if task_ids is None else task_ids
        streams = task_streams(derive_seed(seed, "latent"), task_ids)
        factors = self._prior((len(tasks), 1))
        for k in range(adaptation_steps * adaptation_episodes):
            z = sample_latent(
                *factors.gaussian(), torch.stack([torch.randn(1, self.latent_dim, generator=g) for g in streams])
            )
            p = self.play(tasks, task_ids, z, derive_seed(seed, k), deterministic=False)
            factors = factors * self.encoder.factors(self._context(p.rows), p.mask)
        mean, variance = factors.gaussian()
        noise = torch.stack([torch.randn(evaluation_episodes, self.latent_dim, generator=g) for g in streams])
        z = sample_latent(mean.expand(-1, evaluation_episodes, -1), variance.expand(-1, evaluation_episodes, -1), noise)
        deterministic = deterministic or self.deterministic_eval
        ends_at_success = hasattr(self.family, "terminate_on_success")  # Meta-World's scored episodes end at success
        if ends_at_success:
            self.family.terminate_on_success = True
        try:
            scored = self.play(tasks, task_ids, z, derive_seed(seed, "scored"), deterministic)
        finally:
            if ends_at_success:
                self.family.terminate_on_success = False
        return scored.episodes(self.obs_dim, self.action_dim)

    def progress_fields(self, record: dict) -> dict[str, str]:
        """Returns of the iteration's prior and posterior episodes, critic loss, env steps per second."""
        return {
            "return": f"{record['return_prior']:.1f}->{record['return_posterior']:.1f}",
            "q": f"{record.get('q', float('nan')):.3g}",
            "env_steps_s": f"{record.get('env_steps_per_s', 0):.0f}",
        }
