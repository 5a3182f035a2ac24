"""PEARL as Meta-World's ``MetaLearningAgent``, for ``metaworld.evaluation.metalearning_evaluation``.

Posterior sampling in the package's harness (Rakelly et al. 2019, section 4.3): every environment starts
from the prior, its adaptation transitions are folded into its posterior as they arrive, and at the end of
each adaptation episode z is resampled from it; ``adapt`` draws the evaluation z from the final posterior,
each scored episode (``reset``) a new one. innerloop's own reproduction of the protocol is
:func:`innerloop.rl.success.metaworld_evaluation` (which calls :meth:`PEARL.adapt_and_score`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..tasks.seeding import seeded_generator
from .context import GaussianFactors, sample_latent


class PEARLAgent:
    """A trained :class:`~innerloop.rl.pearl.PEARL` in the package's meta-learning harness.

    Args:
        learner: the PEARL learner.
        seed: seeds the latent samples and the adaptation episodes' action noise.
        deterministic: scored episodes act with tanh(mu) (default the learner's ``deterministic_eval``).
    """

    def __init__(self, learner, seed: int = 0, deterministic: bool | None = None) -> None:
        if learner.context_width > learner.obs_dim + learner.action_dim + 1:  # the harness gives no next observation
            raise ConfigError(
                "PEARLAgent: this PEARL reads next observations in its context (algorithm.next_obs_in_context=true), "
                "which Meta-World's harness does not pass; evaluate the run with `innerloop eval RUN` instead"
            )
        self.learner, self.seed = learner, seed
        self.deterministic = learner.deterministic_eval if deterministic is None else deterministic
        self.round = -1
        self.init()

    def init(self) -> None:
        """A new round of goals: every environment's context is empty (the prior)."""
        self.round += 1
        self.generator = seeded_generator(self.seed, "pearl-agent", self.round)
        self.factors: GaussianFactors | None = None
        self.z: torch.Tensor | None = None
        self.actions: torch.Tensor | None = None

    def _start(self, num_envs: int) -> None:
        if self.factors is None:
            self.factors = self.learner._prior((num_envs,))
            self.z = self._sample(torch.ones(num_envs, dtype=torch.bool))

    def _sample(self, rows: torch.Tensor) -> torch.Tensor:
        """Fresh latents from the current posterior for the environments ``rows`` (the others keep theirs)."""
        assert self.factors is not None
        mean, variance = self.factors.gaussian()
        noise = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype)
        fresh = sample_latent(mean, variance, noise)
        return fresh if self.z is None else torch.where(rows[:, None], fresh, self.z)

    def _inputs(self, observations: np.ndarray) -> torch.Tensor:
        obs = torch.as_tensor(observations, dtype=self.learner.train_tasks.dtype)
        self._start(len(obs))
        assert self.z is not None
        return torch.cat([obs, self.z], -1)

    def _scale(self, action: torch.Tensor) -> np.ndarray:
        low, high = self.learner.action_low, self.learner.action_high
        return (low + (action + 1.0) * (high - low) / 2).numpy().astype(np.float64)

    @torch.no_grad()
    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict]:
        """A sampled action of each environment's policy with its current z."""
        inputs = self._inputs(observations)
        noise = torch.randn(len(inputs), self.learner.action_dim, generator=self.generator, dtype=inputs.dtype)
        self.actions = self.learner.policy.sample(inputs, noise)[0]
        return self._scale(self.actions), {}

    @torch.no_grad()
    def step(self, timestep) -> None:
        """Fold the transition into each environment's posterior; resample z where an episode ended."""
        assert self.factors is not None and self.actions is not None
        dtype = self.actions.dtype
        obs = torch.as_tensor(timestep.observation, dtype=dtype)
        reward = torch.as_tensor(timestep.reward, dtype=dtype)[:, None]
        row = torch.cat([obs, self.actions, reward], -1)
        self.factors = self.factors * self.learner.encoder.factors(row[:, None])
        done = torch.as_tensor(np.logical_or(timestep.terminated, timestep.truncated))
        if done.any():
            self.z = self._sample(done)

    def adapt(self) -> None:
        """The evaluation latents: one sample of each environment's final posterior."""
        if self.factors is not None:
            self.z = self._sample(torch.ones(len(self.factors.precision), dtype=torch.bool))

    @torch.no_grad()
    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        """The scored episodes' action (tanh(mu) when deterministic)."""
        inputs = self._inputs(observations)
        if self.deterministic:
            return self._scale(self.learner.policy.mode(inputs))
        noise = torch.randn(len(inputs), self.learner.action_dim, generator=self.generator, dtype=inputs.dtype)
        return self._scale(self.learner.policy.sample(inputs, noise)[0])

    def reset(self, env_mask: np.ndarray) -> None:
        """Environments starting a scored episode draw a new z from their posterior."""
        if self.factors is not None and np.any(env_mask):
            self.z = self._sample(torch.as_tensor(np.asarray(env_mask, dtype=bool)))


__all__ = ["PEARLAgent"]
