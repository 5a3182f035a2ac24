"""Per-task replay buffers held as module buffers, so a checkpoint (``state_dict``) carries the data.

Each task of a fixed training set has a ring buffer of ``capacity`` transitions, stored as rows
``[observation, action, reward, next observation, terminal]`` of one ``[tasks, capacity, width]`` tensor
beside a count of the transitions each task has received. Batches are drawn uniformly with
replacement (as rlkit's ``random_batch``) from a caller's generator: sampling is a function of the
buffers and the seed, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError


class TaskReplay(nn.Module):
    """Ring buffers of ``capacity`` transitions for each of ``num_tasks`` tasks.

    Args:
        num_tasks: tasks, each with its own buffer.
        capacity: transitions kept per task (the oldest are overwritten).
        fields: name -> width of the parts of a transition, in storage order.
    """

    data: torch.Tensor  # [num_tasks, capacity, width]
    count: torch.Tensor  # [num_tasks] transitions received (long)

    def __init__(self, num_tasks: int, capacity: int, fields: dict[str, int]) -> None:
        super().__init__()
        if num_tasks < 1 or capacity < 1:
            raise ConfigError(f"a replay buffer needs >= 1 task and >= 1 transition, got {num_tasks} and {capacity}")
        self.capacity = capacity
        self.fields = dict(fields)
        self.register_buffer("data", torch.zeros(num_tasks, capacity, sum(fields.values())))
        self.register_buffer("count", torch.zeros(num_tasks, dtype=torch.long))

    @property
    def width(self) -> int:
        """Numbers in one transition."""
        return int(self.data.shape[-1])

    def sizes(self) -> torch.Tensor:
        """Transitions each task holds, ``[num_tasks]``."""
        return self.count.clamp(max=self.capacity)

    def add(self, task: int, rows: torch.Tensor) -> None:
        """Append transitions ``rows [n, width]`` to task ``task``'s buffer."""
        if rows.dim() != 2 or rows.shape[1] != self.width:
            raise InputError(f"TaskReplay.add: rows of shape {tuple(rows.shape)}, expected [n, {self.width}]")
        n = len(rows)
        if n == 0:
            return
        rows = rows[-self.capacity :]  # more than fit: only the newest are kept
        start = int(self.count[task]) + n - len(rows)
        slots = (start + torch.arange(len(rows))) % self.capacity
        self.data[task, slots] = rows.to(self.data.dtype)
        self.count[task] += n

    def clear(self, task: int) -> None:
        """Empty task ``task``'s buffer."""
        self.count[task] = 0

    def sample(self, tasks: Sequence[int] | torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``[len(tasks), batch, width]`` transitions drawn uniformly with replacement from each task's buffer."""
        tasks = torch.as_tensor(tasks, dtype=torch.long)
        sizes = self.sizes()[tasks]
        if (sizes == 0).any():
            empty = tasks[sizes == 0].tolist()
            raise InputError(f"TaskReplay.sample: the buffers of tasks {empty[:5]} are empty; collect data first")
        draws = torch.rand(len(tasks), batch, generator=generator, dtype=torch.float64)
        slots = (draws * sizes[:, None]).long().clamp(max=self.capacity - 1)
        return self.data[tasks[:, None], slots]

    def split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Transitions ``[..., width]`` as ``{field: [..., field width]}`` (reward and terminal: ``[...]``)."""
        parts = dict(zip(self.fields, rows.split(list(self.fields.values()), dim=-1)))
        return {
            k: v.squeeze(-1) if self.fields[k] == 1 and k in ("reward", "terminal") else v for k, v in parts.items()
        }
