"""A sequence task family for learned optimizers: a character-level language model of Python's own standard
library source files (text every Python install ships), in the way of Bengio et al. (2003)'s neural n-gram model:
the previous ``context`` bytes, embedded and concatenated, -> an MLP -> the next byte (256 classes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mlp import MLP
from ..tasks.seeding import seeded_generator
from ..validate import positive_int
from .families import _ModuleFamily


def stdlib_sources(files: int = 64, min_bytes: int = 4096) -> list[bytes]:
    """The first ``files`` standard-library modules (sorted by name) of at least ``min_bytes`` bytes."""
    found = []
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        data = path.read_bytes()
        if len(data) >= min_bytes:
            found.append(data)
        if len(found) == files:
            break
    if not found:
        raise FileNotFoundError(f"no standard-library sources of {min_bytes}+ bytes beside {os.__file__}")
    return found


class _CharModel(nn.Module):
    def __init__(self, context: int, embed: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, embed)
        self.mlp = MLP(context * embed, tuple(hidden), 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(x).flatten(-2))


class CharLMTasks(_ModuleFamily):
    """Next-byte prediction on one standard-library source file per task (the task seed picks the file).

    Args:
        context: bytes of context.
        embed: embedding width per byte.
        hidden: the MLP's hidden widths.
        batch_size: windows per batch, drawn uniformly from the task's file.
        files: how many standard-library files the tasks draw from (:func:`stdlib_sources`).
    """

    name = "char-lm"

    def __init__(
        self,
        context: int = 8,
        embed: int = 8,
        hidden: Sequence[int] = (64,),
        batch_size: int = 32,
        files: int = 64,
        dtype=torch.float32,
    ) -> None:
        self.context, self.embed = positive_int("context", context), positive_int("embed", embed)
        self.hidden, self.batch_size = tuple(hidden), positive_int("batch_size", batch_size)
        self.texts = [torch.frombuffer(bytearray(t), dtype=torch.uint8).long() for t in stdlib_sources(files)]
        super().__init__(dtype)

    def build(self):
        return _CharModel(self.context, self.embed, self.hidden)

    def loss(self, params, batch):
        """Cross-entropy of the next byte, in nats."""
        return F.cross_entropy(self.forward(params, batch["x"]), batch["y"])

    def batch(self, seed, index, split):
        """``batch_size`` windows of the task's file: ``x (batch, context)`` bytes, ``y (batch,)`` the next one."""
        text = self.texts[int(torch.randint(len(self.texts), (), generator=seeded_generator(seed, "file")))]
        g = seeded_generator(seed, split, index)
        starts = torch.randint(len(text) - self.context, (self.batch_size,), generator=g)
        windows = text[starts.unsqueeze(1) + torch.arange(self.context + 1)]
        return {"x": windows[:, :-1], "y": windows[:, -1]}

    def describe(self):
        return f"char-lm(context={self.context}, embed={self.embed}, hidden={list(self.hidden)})"
