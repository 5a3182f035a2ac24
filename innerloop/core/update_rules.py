"""The update rules' former home: ``innerloop.core.update_rules.X`` is :mod:`innerloop.core.rules`'s ``X``."""

from typing import Any

from . import rules as _rules

__all__ = list(_rules.__all__)


def __getattr__(name: str) -> Any:
    """Forward every name to :mod:`innerloop.core.rules` (one list of names, kept there)."""
    return getattr(_rules, name)
