"""RL²'s recurrent policy and its trials: a GRU over (s_t, a_{t-1}, r_{t-1}, d_{t-1}), kept across episodes.

Duan et al. (2016), "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", section 2.2 and
Figure 1 (https://arxiv.org/abs/1611.02779)::

    h_t = GRU(h_{t-1}, [s_t, a_{t-1}, r_{t-1}, d_{t-1}]),   a_t ~ pi(. | h_t),   V(h_t)

A *trial* is ``K`` episodes of one task played in sequence: the hidden state and the previous action,
reward and done flag run on from one episode to the next and start from zeros at each trial.
Discrete actions enter one-hot. A step after an early termination does not happen: it leaves the hidden
state and the previous inputs as they were, so a trial is the sequence of its real steps
(:func:`compact`), which is what the policy gradient replays in one ``nn.GRU`` call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..tasks.seeding import derive_seed
from .envs.base import task_streams
from .policies import Categorical, DiagonalGaussian, Policy
from .sampler import Draw, Episodes


class RecurrentPolicy(Policy):
    """A GRU policy with an action head and a value head on its hidden state.

    Args:
        observation_dim: size of an observation.
        action_dim: size of a continuous action, or the number of discrete actions.
        discrete: categorical actions (logits head) instead of a diagonal Gaussian (mean head, log sigma parameter).
        hidden_size: units of the GRU (256 in Duan et al. 2016).
        init_std: initial standard deviation of the Gaussian head.
    """

    def __init__(
        self, observation_dim: int, action_dim: int, discrete: bool = False, hidden_size: int = 256, init_std=1.0
    ) -> None:
        super().__init__()
        self.discrete, self.action_dim, self.hidden_size = discrete, action_dim, hidden_size
        self.distribution = Categorical if discrete else DiagonalGaussian  # type: ignore[misc]
        self.gru = nn.GRU(observation_dim + action_dim + 2, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, action_dim)
        self.value = nn.Linear(hidden_size, 1)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def inputs(self, observations, prev_actions, prev_rewards, prev_dones) -> torch.Tensor:
        """``[..., obs_dim + action_dim + 2]``: the observation, previous action (one-hot if discrete), reward, done."""
        dtype = self.head.weight.dtype
        if self.discrete:
            prev_actions = nn.functional.one_hot(prev_actions.long(), self.action_dim)
        parts = [observations, prev_actions, prev_rewards.unsqueeze(-1), prev_dones.unsqueeze(-1)]
        return torch.cat([p.to(dtype) for p in parts], -1)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor | None = None):
        """``inputs [B, L, in]`` from ``hidden [B, H]`` (None: zeros) -> ``(outputs [B, L, out], values [B, L],
        last hidden [B, H])``; outputs are the raw parameters of the action ``distribution``."""
        features, last = self.gru(inputs, None if hidden is None else hidden.unsqueeze(0).contiguous())
        out = self.head(features)
        if not self.discrete:
            out = torch.cat([out, self.log_std.expand_as(out)], -1)
        return out, self.value(features).squeeze(-1), last.squeeze(0)


@dataclass
class Trials(Draw):
    """``N`` trials of each of ``T`` tasks, each ``K`` episodes of ``H`` steps, played by a recurrent policy."""

    episodes: list[Episodes]  # per episode index k of the trials: [T, N, H, ...] (N trials stand where episodes do)
    outputs: torch.Tensor  # [T, N, K, H, out]: the policy's raw outputs at every step (as acted on)
    tasks: torch.Tensor

    def stacked(self, key: str) -> torch.Tensor:
        """``[T, N, K, H, ...]``: one field of every episode."""
        return torch.stack([getattr(e, key) for e in self.episodes], dim=2)


@torch.no_grad()
def play_trials(
    policy: RecurrentPolicy,
    family,
    tasks: torch.Tensor,
    trials: int,
    episodes: int,
    seed: int,
    task_ids=None,
    deterministic: bool = False,
    scored_from: int | None = None,
) -> Trials:
    """Play ``trials`` trials of ``episodes`` episodes of each task (episode ``k``'s environments seeded by
    ``(seed, k)``, each task's action noise from its own stream: a pure function of parameters, tasks and seed).

    Episodes ``k >= scored_from`` are scored ones: they end at their first success where the family reports
    it (Meta-World's ``terminate_on_success``), and act with the distribution's mode when ``deterministic``
    (which, without ``scored_from``, applies to every episode).
    """
    task_ids = list(range(len(tasks))) if task_ids is None else list(task_ids)
    T, H, dist = len(tasks), family.horizon, policy.distribution
    rows = T * trials
    hidden = torch.zeros(rows, policy.hidden_size, dtype=policy.head.weight.dtype)
    zeros = torch.zeros(rows)
    prev_action = torch.zeros(rows, dtype=torch.long) if policy.discrete else torch.zeros(rows, policy.action_dim)
    prev_reward, prev_done = zeros.clone(), zeros.clone()
    played, outputs, noise = [], [], None
    for k in range(episodes):
        start = time.perf_counter()
        scored = k >= (scored_from or 0)
        if scored_from is not None and hasattr(family, "terminate_on_success"):
            family.terminate_on_success = scored
        env = family.make(tasks, trials, derive_seed(seed, k), task_ids)
        record: dict[str, list[torch.Tensor]] = {"observations": [], "actions": [], "rewards": [], "mask": []}
        try:
            observation = env.reset()
            alive = torch.ones(T, trials)
            for step in range(H):
                x = policy.inputs(observation.reshape(rows, -1), prev_action, prev_reward, prev_done)
                out, _, new_hidden = policy(x.unsqueeze(1), hidden)
                out = out[:, 0]
                if deterministic and scored:
                    action = dist.mode(out)
                else:
                    if noise is None:  # each task's noise for every step of its trials, from its own stream
                        shape = (episodes * H, trials, out.shape[-1])
                        streams = task_streams(derive_seed(seed, "actions"), task_ids)
                        noise = torch.stack([dist.noise(shape, g) for g in streams])
                    action = dist.sample(out, noise[:, k * H + step].flatten(0, 1))
                shaped = action.reshape(T, trials, *action.shape[1:])
                next_observation, reward, terminated = env.step(shaped)
                for key, value in zip(record, (observation, shaped, reward, alive.clone())):
                    record[key].append(value)
                outputs.append(out.reshape(T, trials, -1))
                live = alive.reshape(rows) > 0  # steps after a termination leave the trial's state as it was
                done = (terminated.reshape(rows) | (step == H - 1)).float()
                hidden = torch.where(live[:, None], new_hidden, hidden)
                prev_action = torch.where(live.view(-1, *[1] * (action.dim() - 1)), action, prev_action)
                prev_reward = torch.where(live, reward.reshape(rows).float(), prev_reward)
                prev_done = torch.where(live, done, prev_done)
                alive = alive * (~terminated).float()
                observation = next_observation
            success = getattr(env, "success", None)
        finally:
            env.close()
            if scored_from is not None and hasattr(family, "terminate_on_success"):
                family.terminate_on_success = False
        stacked = {key: torch.stack(v, dim=2) for key, v in record.items()}
        played.append(Episodes(**stacked, seconds=time.perf_counter() - start, success=success))
    out = torch.stack(outputs, dim=2).reshape(T, trials, episodes, H, -1)
    return Trials(played, out, tasks)


def compact(trials: Trials) -> dict[str, torch.Tensor]:
    """Each trial as the sequence of its real steps, ``[T, N, L]`` (``L = K H``, padding after the last real step):
    observations, actions, rewards, mask, and the policy's inputs of the previous step (as :func:`play_trials`)."""
    mask = trials.stacked("mask")  # [T, N, K, H]
    ends = mask * (1 - torch.cat([mask[..., 1:], torch.zeros_like(mask[..., :1])], -1))  # last real step of an episode
    flat = {
        "observations": trials.stacked("observations"),
        "actions": trials.stacked("actions"),
        "rewards": trials.stacked("rewards").float(),
        "mask": mask,
        "ends": ends,
    }
    flat = {k: v.flatten(2, 3) for k, v in flat.items()}  # [T, N, K H, ...]
    order = torch.sort(1 - flat["mask"], dim=-1, stable=True).indices  # real steps first, in order
    out = {}
    for key, value in flat.items():
        index = order.view(*order.shape, *[1] * (value.dim() - 3)).expand_as(value)
        out[key] = value.gather(2, index)

    def previous(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(t[:, :, :1]), t[:, :, :-1]], 2)

    out["prev_actions"], out["prev_rewards"], out["prev_dones"] = (
        previous(out["actions"]),
        previous(out["rewards"]),
        previous(out["ends"]),
    )
    return out


__all__ = ["RecurrentPolicy", "Trials", "compact", "play_trials"]
