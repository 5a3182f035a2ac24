"""Sinusoid regression, the few-shot regression family of the MAML paper (section 5.1).

Each task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0] and phase
phi ~ U[0, pi]; inputs x ~ U[-5, 5]. A task gives K support points and a query set.

Sampling is indexed: task ``j`` of draw ``i`` is generated from a generator seeded
by ``(seed, i, j)`` alone. Any subset of a meta-batch can therefore be produced
independently (one process, or each rank of a distributed job its own slice) and the
union is the same tasks, and a resumed run needs no sampler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..validate import positive_int
from .batch import TaskBatch
from .seeding import task_generator


@dataclass(frozen=True)
class SinusoidTasks:
    """Sinusoid regression tasks y = A sin(x - phi) (MAML paper, section 5.1), drawn by index.

    Args:
        shots: K, support points per task.
        queries: query points per task.
        seed: the family's seed; task ``j`` of draw ``i`` depends on ``(seed, i, j)`` alone.
        amplitude: the range of A (uniform).
        phase: the range of phi (uniform).
        x_range: the range of the inputs x (uniform).
    """

    shots: int = 10
    queries: int = 10
    seed: int = 0
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("shots", "queries"):
            positive_int(f"sinusoid {name}", getattr(self, name))

    def _uniforms(self, draw: int, tasks) -> torch.Tensor:
        """Per task: [u_amplitude, u_phase, u_x_1 .. u_x_{K+Q}] from that task's own stream."""
        n = 2 + self.shots + self.queries
        return torch.stack(
            [torch.rand(n, generator=task_generator(self.seed, draw, j), dtype=torch.float64) for j in tasks]
        )

    def sample(self, draw: int, tasks: range | list[int], dtype=torch.float32) -> TaskBatch:
        """Tasks ``tasks`` (indices within the meta-batch) of meta-batch number ``draw``."""
        u = self._uniforms(draw, tasks)
        (a0, a1), (p0, p1), (lo, hi) = self.amplitude, self.phase, self.x_range
        amplitude = a0 + (a1 - a0) * u[:, 0:1, None]
        phase = p0 + (p1 - p0) * u[:, 1:2, None]
        x = lo + (hi - lo) * u[:, 2:, None]
        y = amplitude * torch.sin(x - phase)
        x, y = x.to(dtype), y.to(dtype)
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def task_parameters(self, draw: int, tasks: range | list[int]) -> dict[str, torch.Tensor]:
        """The true ``amplitude`` and ``phase`` ``(T,)`` (float64) of the tasks ``sample(draw, tasks)`` draws."""
        u = self._uniforms(draw, tasks)
        (a0, a1), (p0, p1) = self.amplitude, self.phase
        return {"amplitude": a0 + (a1 - a0) * u[:, 0], "phase": p0 + (p1 - p0) * u[:, 1]}

    def sample_with_truth(self, draw: int, j: int):
        """One task and its true function, for plots."""
        (a0, a1), (p0, p1) = self.amplitude, self.phase
        u = self._uniforms(draw, [j])[0]
        amplitude, phase = float(a0 + (a1 - a0) * u[0]), float(p0 + (p1 - p0) * u[1])
        return self.sample(draw, [j]), lambda x: amplitude * torch.sin(x - phase)
