"""Deterministic per-task random streams."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, platforms and processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def task_generator(seed: int, draw: int, task: int) -> torch.Generator:
    """The generator of task ``task`` in meta-batch ``draw`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, draw, task))
