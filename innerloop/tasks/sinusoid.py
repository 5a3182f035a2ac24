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

from .batch import TaskBatch
from .seeding import task_generator


@dataclass(frozen=True)
class SinusoidTasks:
    shots: int = 10
    queries: int = 10
    seed: int = 0
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("shots", "queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"sinusoid {name} must be a positive integer, got {value!r}")

    def task_params(self, generator: torch.Generator) -> tuple[float, float]:
        (a0, a1), (p0, p1) = self.amplitude, self.phase
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        return float(a0 + (a1 - a0) * u[0]), float(p0 + (p1 - p0) * u[1])

    def function(self, amplitude: float, phase: float):
        return lambda x: amplitude * torch.sin(x - phase)

    def sample(self, draw: int, tasks: range | list[int], dtype=torch.float32) -> TaskBatch:
        """Tasks ``tasks`` (indices within the meta-batch) of meta-batch number ``draw``."""
        xs, ys = [], []
        lo, hi = self.x_range
        for j in tasks:
            g = task_generator(self.seed, draw, j)
            amplitude, phase = self.task_params(g)
            x = lo + (hi - lo) * torch.rand(self.shots + self.queries, 1, generator=g, dtype=torch.float64)
            xs.append(x)
            ys.append(self.function(amplitude, phase)(x))
        x, y = torch.stack(xs).to(dtype), torch.stack(ys).to(dtype)
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def sample_with_truth(self, draw: int, j: int):
        """One task and its true function, for plots."""
        amplitude, phase = self.task_params(task_generator(self.seed, draw, j))
        return self.sample(draw, [j]), self.function(amplitude, phase)
