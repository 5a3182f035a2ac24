"""Declarative task-distribution shifts: a test task source moved away from training along one named axis.

A shift is ``name=value`` (``amplitude=5:10``, ``rotation=90``, ``goal=0.5:1``) and changes only what it
names: a sinusoid source keeps each task's random stream and maps it into the new range (a task's phase and
inputs are those of the unshifted task), an image shift transforms the sampled images and leaves the labels,
a meta-RL shift redraws the task parameters (goals, target velocities) from the same generator. ``ways``,
``shots`` and ``split`` change the evaluation protocol instead (``training.shift_eval`` applies them).
The protocols follow the out-of-distribution evaluations of Finn et al. 2017 (sinusoid amplitude and input
range) and Lake et al. 2015 / Vinyals et al. 2016 (Omniglot alphabets unseen in training).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from .batch import TaskBatch
from .seeding import seeded_generator

# name -> (value syntax, what it does); SOURCE shifts wrap a task source, PROTOCOL shifts change the evaluation
SHIFTS: dict[str, tuple[str, str]] = {
    "amplitude": ("LO:HI", "sinusoid: amplitudes A ~ U[LO, HI] (training 0.1:5); phases and inputs unchanged"),
    "phase": ("LO:HI", "sinusoid: phases ~ U[LO, HI] (training 0:pi); amplitudes and inputs unchanged"),
    "x_range": ("LO:HI", "sinusoid: inputs x ~ U[LO, HI] (training -5:5); amplitudes and phases unchanged"),
    "rotation": ("DEG", "images: every image of a task rotated by 90, 180 or 270 degrees counter-clockwise"),
    "noise": ("STD", "images: Gaussian pixel noise of standard deviation STD on support and query images"),
    "goal": ("LO:HI", "nav2d: goals in [-HI, HI]^2 outside [-LO, LO]^2 (training: [-0.5, 0.5]^2)"),
    "velocity": ("LO:HI", "halfcheetah-vel: target velocities ~ U[LO, HI] (training 0:2)"),
    "ways": ("N", "classification: N-way test tasks (a learner without a fixed-size head)"),
    "shots": ("K", "K support examples (per class) instead of eval.shots"),
    "split": (
        "NAME",
        "image datasets: test tasks from split NAME (omniglot: evaluation, alphabets unseen in background)",
    ),
}
PROTOCOL = ("ways", "shots", "split")
RANGES = ("amplitude", "phase", "x_range", "goal", "velocity")


def shift_help() -> str:
    """One line per shift: ``name=SYNTAX: what it does``."""
    return "; ".join(f"{name}={syntax}: {what}" for name, (syntax, what) in SHIFTS.items())


@dataclass(frozen=True)
class Shift:
    """One declared shift: ``name`` (a key of ``SHIFTS``) and its value (a ``(lo, hi)`` range, a number or a name)."""

    name: str
    value: Any

    @property
    def label(self) -> str:
        """``name=value`` as written (``amplitude=5:10``)."""
        v = self.value
        text = f"{v[0]:g}:{v[1]:g}" if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)
        return f"{self.name}={text}"

    @property
    def size(self) -> float:
        """The x coordinate of a figure against shift size: a range's upper end, a number itself (NaN for a split)."""
        v = self.value
        return float(v[1]) if isinstance(v, tuple) else float(v) if isinstance(v, (int, float)) else math.nan


def parse_shift(text: str) -> Shift:
    """``"amplitude=5:10"`` -> ``Shift("amplitude", (5.0, 10.0))``; a bad spec is one ValueError naming the syntax."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or name not in SHIFTS:
        raise ValueError(f"--shift {text!r}: expected NAME=VALUE with NAME one of {', '.join(SHIFTS)} ({shift_help()})")
    syntax = SHIFTS[name][0]
    try:
        if name in RANGES:
            lo, hi = (float(p) for p in raw.split(":"))
            if not lo < hi:
                raise ValueError
            value: Any = (lo, hi)
        elif name in ("ways", "shots"):
            value = int(raw)
            if value < 1:
                raise ValueError
        elif name == "split":
            value = raw.strip()
            if not value:
                raise ValueError
        else:
            value = float(raw)
            if (name == "rotation" and value not in (90.0, 180.0, 270.0)) or (name == "noise" and not value > 0):
                raise ValueError
    except ValueError:
        raise ValueError(f"--shift {text!r}: {name} takes {name}={syntax} ({SHIFTS[name][1]})") from None
    return Shift(name, value)


def shift_source(source, shift: Shift):
    """``source`` (a test task source) moved by ``shift``; a shift that does not fit it is one ValueError."""
    name, value = shift.name, shift.value
    if name in PROTOCOL:
        raise ValueError(f"--shift {shift.label} changes the evaluation protocol, not a task source (shift_eval)")
    if name in ("amplitude", "phase", "x_range"):
        fields = {f.name for f in dataclasses.fields(source)} if dataclasses.is_dataclass(source) else set()
        if name not in fields:
            raise ValueError(f"--shift {shift.label} applies to sinusoid tasks, not {type(source).__name__}")
        return dataclasses.replace(cast(Any, source), **{name: value})  # keeps the seed: each task's stream
    if name in ("rotation", "noise"):
        if not hasattr(source, "image_shape"):
            raise ValueError(f"--shift {shift.label} applies to image tasks, not {type(source).__name__}")
        return ImageShift(source, name, float(value))
    family = getattr(source, "family", None)
    attribute = {"goal": "goal_range", "velocity": "velocity_range"}[name]
    if family is None or not hasattr(family, attribute):
        what = "nav2d" if name == "goal" else "halfcheetah-vel"
        raise ValueError(f"--shift {shift.label} applies to {what} tasks, not {getattr(family, 'name', source)!r}")
    shifted = copy.copy(source)
    shifted.family = ShiftedFamily(family, name, value)
    return shifted


class ImageShift:
    """An image task source whose sampled images are rotated (``rotation``, degrees) or noised (``noise``, std).

    Labels, classes and images drawn are the source's; the noise of task ``j`` of draw ``i`` comes from
    ``(seed, "noise", i, j)`` alone, so it does not depend on the tasks sampled with it.

    Args:
        source: the image task source shifted.
        kind: ``"rotation"`` or ``"noise"``.
        value: the rotation in degrees, or the noise's standard deviation.
    """

    def __init__(self, source, kind: str, value: float) -> None:
        self.source, self.kind, self.value = source, kind, value

    def sample(self, draw: int, tasks, dtype: torch.dtype = torch.float32) -> TaskBatch:
        """``source.sample(draw, tasks)`` with its support and query images shifted."""
        b = self.source.sample(draw, tasks, dtype)
        ids = [int(j) for j in tasks]
        return TaskBatch(
            self._shift(b.support_x, draw, ids, 0), b.support_y, self._shift(b.query_x, draw, ids, 1), b.query_y
        )

    def _shift(self, x: torch.Tensor, draw: int, ids: list[int], part: int) -> torch.Tensor:
        if self.kind == "rotation":
            return torch.rot90(x, int(self.value) // 90, dims=(-2, -1))
        seed = getattr(self.source, "seed", 0)
        noise = torch.stack(
            [torch.randn(x.shape[1:], generator=seeded_generator(seed, "noise", draw, j, part)) for j in ids]
        )
        return x + self.value * noise.to(x)

    def with_seed(self, seed: int) -> ImageShift:
        """The same shift of the source reseeded (``tasks.fixed_tasks(seed=...)``)."""
        return ImageShift(self.source.with_seed(seed), self.kind, self.value)

    def __getattr__(self, name: str):  # ways, shots, num_classes, image_shape, ...: the source's
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


class ShiftedFamily:
    """A meta-RL task family whose tasks are drawn from a shifted distribution; everything else is ``base``'s.

    ``velocity``: targets ``lo + (hi - lo) u`` from the draw ``u`` the base family makes. ``goal``: goals uniform
    on ``[-hi, hi]^2`` outside ``[-lo, lo]^2`` (rejection from the same generator).

    Args:
        base: the meta-RL task family shifted.
        kind: ``"velocity"`` or ``"goal"``.
        bounds: ``(lo, hi)``, the shifted range.
    """

    def __init__(self, base, kind: str, bounds: tuple[float, float]) -> None:
        self.base, self.kind, self.bounds = base, kind, bounds

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """``[num_tasks, task_dim]`` shifted task parameters."""
        lo, hi = self.bounds
        if self.kind == "velocity":
            return lo + (hi - lo) * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64)
        kept: list[torch.Tensor] = []
        while sum(map(len, kept)) < num_tasks:
            goals = (torch.rand(2 * num_tasks, 2, generator=generator, dtype=torch.float64) * 2 - 1) * hi
            kept.append(goals[goals.abs().amax(-1) >= lo])
        return torch.cat(kept)[:num_tasks]

    def test_tasks(self, num_tasks: int, seed: int) -> torch.Tensor:
        """The base family's held-out tasks of ``seed``, drawn from the shifted distribution."""
        return type(self.base).test_tasks(self, num_tasks, seed)

    def __getattr__(self, name: str):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
