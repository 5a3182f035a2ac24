"""Rollouts: every episode of every task of a batch, stepped together.

``rollout`` plays a :class:`~innerloop.rl.envs.TaskFamily`'s batched environment with a
policy whose parameters are either shared by all tasks (the meta-learned initialization)
or carry a leading task dimension (each task's adapted parameters, applied with
``torch.func.vmap``). The action noise of each task comes from its own stream, seeded by
``(seed, task id)``, so a rollout is a pure function of ``(parameters, tasks, seed)``
(training resumes bit for bit) and a task plays the same episodes whatever else is in
its batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import vmap

from ..core.params import Params
from ..tasks.seeding import derive_seed
from .envs.base import task_streams


@dataclass
class Episodes:
    """``E`` episodes of each of ``T`` tasks, ``H`` steps long."""

    observations: torch.Tensor  # [T, E, H, obs_dim]
    actions: torch.Tensor  # [T, E, H, act_dim] (continuous) or [T, E, H] (discrete)
    rewards: torch.Tensor  # [T, E, H]
    mask: torch.Tensor  # [T, E, H]: 1 where the step happened (0 after an early termination)
    seconds: float = 0.0  # wall time of the rollout
    success: torch.Tensor | None = None  # [T, E]: 1 where the episode reported success at some step (Meta-World)

    @property
    def steps(self) -> int:
        """Environment steps taken."""
        return int(self.mask.sum())

    def returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, ``[T, E]``."""
        return (self.rewards * self.mask).sum(-1)


class Draw:
    """What a draw of several rollouts (``episodes``: one per inner step, or per episode of a trial) reports."""

    episodes: list[Episodes]

    @property
    def valid(self) -> Episodes:
        """The last rollout: the adapted policy's, or a trial's last episode."""
        return self.episodes[-1]

    @property
    def env_steps(self) -> int:
        """Environment steps of every rollout."""
        return sum(e.steps for e in self.episodes)

    @property
    def seconds(self) -> float:
        """Wall time of every rollout."""
        return sum(e.seconds for e in self.episodes)


def scores(episodes: Sequence[Episodes], steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
    """``{k: {"return": [T]}}``: each task's mean return of rollout ``k`` of ``episodes`` for ``k`` in ``steps``, with
    ``"success"`` (the fraction of its episodes that succeeded) where the family reports it (Meta-World)."""
    results = {s: {"return": episodes[s].returns().mean(-1)} for s in steps}
    for s in steps:
        if (success := episodes[s].success) is not None:
            results[s]["success"] = success.double().mean(-1)
    return results


@torch.no_grad()
def rollout(
    family,
    tasks: torch.Tensor,
    policy_fn,
    params: Params,
    episodes: int,
    seed: int,
    per_task: bool = False,
    deterministic: bool = False,
    task_ids: Sequence[int] | None = None,
) -> Episodes:
    """Play ``episodes`` episodes of each task in ``tasks`` for the family's horizon.

    ``policy_fn(params, observations)`` returns the policy's raw outputs (distribution
    parameters); ``per_task=True`` means ``params`` has a leading task dimension.
    ``deterministic`` acts with the distribution's mode instead of sampling. ``task_ids``
    name the tasks' random streams (default ``range(len(tasks))``).
    """
    start = time.perf_counter()
    distribution = policy_fn.distribution
    dtype = next(iter(params.values())).dtype
    task_ids = range(len(tasks)) if task_ids is None else task_ids
    act = vmap(policy_fn) if per_task else policy_fn
    env = family.make(tasks, episodes, seed, task_ids)
    try:
        observation = env.reset()
        alive = torch.ones(observation.shape[:2])
        trajectory: dict[str, list[torch.Tensor]] = {"observations": [], "actions": [], "rewards": [], "mask": []}
        noise = None
        for step in range(family.horizon):
            out = act(params, observation.to(dtype))
            if deterministic:
                action = distribution.mode(out)
            else:
                if noise is None:  # each task's noise for the whole rollout, from its own stream
                    shape = (family.horizon, *out.shape[1:])
                    noise = torch.stack(
                        [distribution.noise(shape, g) for g in task_streams(derive_seed(seed, "actions"), task_ids)]
                    )
                action = distribution.sample(out, noise[:, step])
            next_observation, reward, terminated = env.step(action)
            for key, value in zip(trajectory, (observation, action, reward, alive)):
                trajectory[key].append(value)
            alive = alive * (~terminated).float()
            observation = next_observation
        success = getattr(env, "success", None)  # families whose environments report it
    finally:
        env.close()
    stacked = {k: torch.stack(v, dim=2) for k, v in trajectory.items()}
    return Episodes(**stacked, seconds=time.perf_counter() - start, success=success)
