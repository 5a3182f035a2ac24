"""Task families for meta-reinforcement learning: a task distribution plus a batched environment.

A :class:`TaskFamily` samples tasks as rows of a tensor (a goal position, a goal velocity,
a direction, arm probabilities) and builds a :class:`BatchedEnv` that steps ``episodes``
episodes of each of ``T`` tasks at once. Observations, actions and rewards carry a
leading ``[T, E]`` (task, episode) shape, so a policy with per-task adapted parameters
acts on every task in one batched call (``torch.func.vmap`` over the task dimension).

Randomness is per task: the environment of task ``task_ids[t]`` draws from a stream seeded
by ``(seed, task_ids[t])`` alone, so a task plays the same way whichever tasks share its
batch (evaluation does not depend on the batch size, and the ranks of a distributed run
that each hold a shard of a meta-batch play exactly what one process would).

Episodes have a fixed horizon. An environment that terminates early (an Ant that falls)
reports ``terminated``; from then on it repeats its last observation with reward 0 and
the sampler masks those steps out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ...tasks.seeding import seeded_generator


class BatchedEnv(ABC):
    """``E`` episodes of each of ``T`` tasks, stepped together."""

    num_tasks: int
    episodes: int

    @abstractmethod
    def reset(self) -> torch.Tensor:
        """Start every episode; returns observations ``[T, E, observation_dim]`` (float32)."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply ``actions`` (``[T, E, action_dim]`` float, or ``[T, E]`` long for discrete actions).

        Returns ``(observations [T, E, obs_dim], rewards [T, E], terminated [T, E] bool)``.
        """

    def close(self) -> None:  # noqa: B027 (a hook: a no-op unless the environment holds simulators or workers)
        """Release simulators or worker processes (nothing for pure-torch environments)."""


class TaskFamily(ABC):
    """A distribution over tasks and the environment that plays any batch of them."""

    name: str
    observation_dim: int
    action_dim: int  # continuous: size of an action; discrete: number of actions
    discrete: bool = False
    horizon: int
    task_dim: int

    @abstractmethod
    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """``[num_tasks, task_dim]`` task parameters drawn from the family's distribution."""

    @abstractmethod
    def make(self, tasks: torch.Tensor, episodes: int, seed: int, task_ids: Sequence[int] | None = None) -> BatchedEnv:
        """An environment running ``episodes`` episodes of each task.

        Task ``t``'s randomness is seeded by ``(seed, task_ids[t])`` (default ``task_ids = range(T)``).
        """

    def test_tasks(self, num_tasks: int, seed: int) -> torch.Tensor:
        """The fixed held-out tasks of evaluation seed ``seed`` (the same every time)."""
        return self.sample_tasks(num_tasks, seeded_generator(seed, self.name, "test"))

    def action_bounds(self) -> tuple[float, float] | None:
        """Where the environment clips continuous actions, in the policy's units (None: unbounded or discrete)."""
        return None

    def describe_task(self, task: torch.Tensor) -> str:
        return ", ".join(f"{v:.3f}" for v in task.tolist())


def task_streams(seed: int, task_ids: Sequence[int]) -> list[torch.Generator]:
    """One generator per task, seeded by ``(seed, task id)``."""
    return [seeded_generator(seed, int(t)) for t in task_ids]
