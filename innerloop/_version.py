"""The package version (one place: the root package and the CLI read it; ``pyproject.toml`` states it too)."""

__version__ = "0.1.0"
