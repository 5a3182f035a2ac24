"""Pytrees with a leading particle dimension: stacking, indexing, and mapping a function over particles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..core.engine import vmap_with_constants
from ..errors import ConfigError

STRATEGIES = ("vmap", "loop")


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack pytrees leaf by leaf over a new leading dimension (non-tensor leaves, e.g. None, kept from the first)."""
    flat = [tree_flatten(t) for t in trees]
    spec = flat[0][1]
    columns = zip(*(leaves for leaves, _ in flat))
    out = [torch.stack(col) if isinstance(col[0], torch.Tensor) else col[0] for col in columns]
    return tree_unflatten(out, spec)


def index_tree(tree: Any, index) -> Any:
    """``leaf[index]`` for every tensor leaf of ``tree`` (other leaves unchanged)."""
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([x[index] if isinstance(x, torch.Tensor) else x for x in leaves], spec)


def map_particles(fn: Callable, args: tuple, particles: int, strategy: str) -> Any:
    """``fn(*args_i)`` for every particle ``i`` (tensor leaves of ``args`` carry a leading particle dimension)."""
    if strategy == "vmap":
        return vmap_with_constants(fn, *args)
    if strategy == "loop":
        return stack_trees([fn(*index_tree(args, i)) for i in range(particles)])
    raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
