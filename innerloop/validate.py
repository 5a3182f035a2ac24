"""Argument checks shared by every layer: this module imports nothing of innerloop, so ``tasks``, ``data``,
``core``, ``algorithms`` and ``training`` can all use it. Each message names the argument or config key."""

from __future__ import annotations


def positive_int(name: str, value: object, *, allow_zero: bool = False, error: type[ValueError] = ValueError) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) of at least 1 (0 with ``allow_zero``), else ``error``
    naming ``name``: ``"ways must be a positive integer, got 0"``.

    ``error`` is the exception to raise: ``ValueError`` for the Python API, :class:`~innerloop.errors.ConfigError`
    for config keys (pass the dotted key as ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        bound = "a non-negative" if allow_zero else "a positive"
        raise error(f"{name} must be {bound} integer, got {value!r}")
    return value


def positive_float(
    name: str, value: object, *, allow_zero: bool = False, error: type[ValueError] = ValueError
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a ``bool``) > 0 (>= 0 with ``allow_zero``), else
    ``error`` naming ``name``: ``"C must be a positive number, got 0"``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < float("inf")
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        raise error(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_bounds(
    algorithm: str, options: object, *checks: tuple[str, bool, str], error: type[ValueError] = ValueError
) -> None:
    """Raise ``error`` naming ``algorithm.KEY`` for the first ``(key, out_of_bounds, bound)`` check that fails."""
    for key, bad, bound in checks:
        if bad:
            raise error(f"algorithm.{key} must be {bound} for {algorithm}, got {getattr(options, key)!r}")
