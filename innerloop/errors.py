"""Errors innerloop raises for bad input. Each message names the problem and the fix.

The CLI prints these as one clean line (no traceback); the Python API raises them.
"""


class InnerloopError(Exception):
    """Base class of the user-facing errors."""


class ConfigError(InnerloopError, ValueError):
    """A configuration, preset, option or override is invalid."""


class CheckpointError(InnerloopError):
    """A checkpoint is missing, corrupt, or made for another model or configuration."""


class TrainingDiverged(InnerloopError, FloatingPointError):
    """The meta-loss or a meta-gradient became NaN or infinite."""


class DatasetError(InnerloopError, FileNotFoundError):
    """A dataset is missing, has the wrong layout, or fails its checksum."""


class DistributedError(InnerloopError, RuntimeError):
    """A process group cannot be formed or has fallen out of step."""


class TrainingInterrupted(InnerloopError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint of the last finished iteration."""
