"""Multi-armed Bernoulli bandits: the smallest task family, for fast tests and learning checks.

A task is a vector of ``arms`` success probabilities; a structured family makes one arm
(drawn per task) clearly better than the rest, so a meta-learned policy can learn to find
it from a few pulls. Every step the agent pulls an arm and receives a Bernoulli reward.
The observation is constant (a single 1), so a policy is a learned preference over arms.
Each episode lasts ``horizon`` pulls.
"""

from __future__ import annotations

import torch

from .base import BatchedEnv, TaskFamily, task_streams


class Bandit(TaskFamily):
    name = "bandit"
    observation_dim = 1
    discrete = True

    def __init__(self, arms: int = 5, horizon: int = 10, best: float = 0.9, others: float = 0.1) -> None:
        if arms < 2:
            raise ValueError(f"a bandit needs at least 2 arms, got {arms}")
        self.action_dim = self.task_dim = arms
        self.horizon = horizon
        self.best, self.others = best, others

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Probabilities ``others`` everywhere and ``best`` on one uniformly drawn arm."""
        winner = torch.randint(self.action_dim, (num_tasks,), generator=generator)
        probs = torch.full((num_tasks, self.action_dim), self.others, dtype=torch.float64)
        probs[torch.arange(num_tasks), winner] = self.best
        return probs

    def make(self, tasks: torch.Tensor, episodes: int, seed: int, task_ids=None) -> BatchedEnv:
        return _Bandit(tasks, episodes, task_streams(seed, range(len(tasks)) if task_ids is None else task_ids))

    def describe_task(self, task: torch.Tensor) -> str:
        return f"best arm {int(task.argmax())}"


class _Bandit(BatchedEnv):
    def __init__(self, probs: torch.Tensor, episodes: int, streams: list[torch.Generator]) -> None:
        self.num_tasks, self.episodes = probs.shape[0], episodes
        self.probs = probs.to(torch.float32)
        self.streams = streams
        self.observation = torch.ones(self.num_tasks, episodes, 1)

    def reset(self) -> torch.Tensor:
        return self.observation.clone()

    def step(self, actions: torch.Tensor):
        p = torch.gather(self.probs, 1, actions.long())  # [T, E]: success probability of each pulled arm
        uniform = torch.stack([torch.rand(self.episodes, generator=g) for g in self.streams])
        reward = (uniform < p).to(torch.float32)
        return self.observation.clone(), reward, torch.zeros(reward.shape, dtype=torch.bool)
