"""2D navigation, the point robot of the MAML paper (Finn et al. 2017, section 5.3).

A point starts at the origin and must reach a goal drawn uniformly from
``[-0.5, 0.5]^2``. The observation is its position, the move a displacement of at most
0.1 per coordinate, the reward minus the Euclidean distance to the goal after the move;
an episode ends when the point is within 0.01 of the goal in both coordinates or after
100 steps. Written in batched torch: all tasks and all episodes move in one tensor
operation.

Actions are in normalized units, as the policy of the paper's code sees them:
``cbfinn/maml_rl`` runs ``PointEnvRandGoal`` (action space ``[-0.1, 0.1]^2``) inside
rllab's ``normalize``, which maps the policy's action ``a`` to ``0.1 * clip(a, -1, 1)``.
So a Gaussian policy's initial std of 1 is a step noise of 0.1, not ten times the largest
move — which matters: clipping raw actions at 0.1 instead leaves the noise so large
that one adaptation step cannot make the paths precise (benchmarks/RESULTS.md, "Action units").
"""

from __future__ import annotations

import torch

from .base import BatchedEnv, TaskFamily


class Navigation2D(TaskFamily):
    name = "nav2d"
    observation_dim = 2
    action_dim = 2
    task_dim = 2

    def __init__(
        self, horizon: int = 100, goal_range: float = 0.5, max_action: float = 0.1, tolerance: float = 0.01
    ) -> None:
        self.horizon = horizon
        self.goal_range = goal_range
        self.max_action = max_action
        self.tolerance = tolerance

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return (torch.rand(num_tasks, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.goal_range

    def make(self, tasks: torch.Tensor, episodes: int, seed: int, task_ids=None) -> BatchedEnv:
        return _Navigation(tasks, episodes, self.max_action, self.tolerance)

    def action_bounds(self) -> tuple[float, float]:
        return (-1.0, 1.0)  # normalized units, scaled to +-max_action by the environment

    def describe_task(self, task: torch.Tensor) -> str:
        return f"goal ({task[0]:.2f}, {task[1]:.2f})"


class _Navigation(BatchedEnv):
    def __init__(self, goals: torch.Tensor, episodes: int, max_action: float, tolerance: float) -> None:
        self.num_tasks, self.episodes = goals.shape[0], episodes
        self.goals = goals.to(torch.float32)[:, None, :]  # [T, 1, 2], broadcast over episodes
        self.max_action, self.tolerance = max_action, tolerance

    def reset(self) -> torch.Tensor:
        self.position = torch.zeros(self.num_tasks, self.episodes, 2)
        self.done = torch.zeros(self.num_tasks, self.episodes, dtype=torch.bool)
        return self.position.clone()

    def step(self, actions: torch.Tensor):
        moved = self.position + self.max_action * actions.to(torch.float32).clamp(-1.0, 1.0)  # rllab's normalize
        self.position = torch.where(self.done[..., None], self.position, moved)  # a finished episode stays put
        offset = self.position - self.goals
        reward = torch.where(self.done, 0.0, -torch.linalg.vector_norm(offset, dim=-1))
        self.done = self.done | (offset.abs() < self.tolerance).all(-1)
        return self.position.clone(), reward, self.done.clone()
