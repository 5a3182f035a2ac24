"""Deterministic per-task random streams."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, platforms and processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def split_seed(train_seed: int, eval_seed: int, split: str) -> int:
    """The task seed of ``split``: ``train_seed`` itself for train, one derived from it for val, and one
    derived from ``eval_seed`` for test (the test tasks do not change with the training seed)."""
    if split == "train":
        return train_seed
    if split == "val":
        return derive_seed(train_seed, "val")
    if split == "test":
        return derive_seed(eval_seed, "test")
    raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def task_generator(seed: int, draw: int, task: int) -> torch.Generator:
    """The generator of task ``task`` in meta-batch ``draw`` of a run seeded ``seed``."""
    return seeded_generator(seed, draw, task)
