"""Task families: 2D navigation and bandits in batched torch, MuJoCo locomotion over gymnasium."""

from __future__ import annotations

from ...errors import ConfigError
from .bandit import Bandit
from .base import BatchedEnv, TaskFamily
from .nav2d import Navigation2D

# name -> (module, class); MuJoCo families import gymnasium only when asked for.
FAMILIES = {
    "nav2d": (".nav2d", "Navigation2D"),
    "bandit": (".bandit", "Bandit"),
    "halfcheetah-vel": (".mujoco", "HalfCheetahVelocity"),
    "halfcheetah-dir": (".mujoco", "HalfCheetahDirection"),
    "ant-dir": (".mujoco", "AntDirection"),
}


def make_family(name: str, **options) -> TaskFamily:
    """The task family ``name`` (see ``FAMILIES``) built with ``options`` (horizon=..., arms=...)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown task family {name!r}; available: {', '.join(FAMILIES)}")
    import importlib

    module, cls = FAMILIES[name]
    return getattr(importlib.import_module(module, __name__), cls)(**options)


__all__ = ["FAMILIES", "Bandit", "BatchedEnv", "Navigation2D", "TaskFamily", "make_family"]
