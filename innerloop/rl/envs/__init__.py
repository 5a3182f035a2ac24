"""Task families: 2D navigation and bandits in batched torch, MuJoCo locomotion and Meta-World over ``VectorEnv``."""

from __future__ import annotations

from ...errors import ConfigError
from .bandit import Bandit
from .base import BatchedEnv, TaskFamily
from .metaworld import FAMILIES as METAWORLD_FAMILIES
from .nav2d import Navigation2D
from .vector import VectorEnv, VectorStep

# name -> (module, class); MuJoCo families import gymnasium only when asked for.
FAMILIES = {
    "nav2d": (".nav2d", "Navigation2D"),
    "bandit": (".bandit", "Bandit"),
    "halfcheetah-vel": (".mujoco", "HalfCheetahVelocity"),
    "halfcheetah-dir": (".mujoco", "HalfCheetahDirection"),
    "ant-dir": (".mujoco", "AntDirection"),
    **METAWORLD_FAMILIES,  # ml1-<environment> (ml1-reach, ml1-push, ...), ml10, ml45: innerloop[metaworld]
}


def make_family(name: str, **options) -> TaskFamily:
    """The task family ``name`` (see ``FAMILIES``) built with ``options`` (horizon=..., arms=...)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown task family {name!r}; available: {', '.join(FAMILIES)}")
    import importlib

    module, cls = FAMILIES[name]
    return getattr(importlib.import_module(module, __name__), cls)(**options)


__all__ = ["FAMILIES", "Bandit", "BatchedEnv", "Navigation2D", "TaskFamily", "VectorEnv", "VectorStep", "make_family"]
