"""Errors innerloop raises for bad input. Each message names the problem and the fix.

The CLI prints these as one clean line (no traceback); the Python API raises them.
"""

from __future__ import annotations


class InnerloopError(Exception):
    """Base class of the user-facing errors.

    ``exit_code`` is the CLI's exit status for it: 2 for a user's mistake (the default: a bad
    config, a missing dataset, a corrupt checkpoint), 1 for a runtime failure (subclasses set 1).
    """

    exit_code = 2


class ConfigError(InnerloopError, ValueError):
    """A configuration, preset, option or override is invalid."""


class CheckpointError(InnerloopError):
    """A checkpoint is missing, corrupt, or made for another model or configuration."""


class TrainingDiverged(InnerloopError, FloatingPointError):
    """The meta-loss, a meta-gradient or the validation of every task became NaN or infinite (a runtime failure)."""

    exit_code = 1

    @classmethod
    def at(cls, iteration: int, what: str, last_checkpoint: object, fix: str) -> TrainingDiverged:
        """``training diverged at iteration {iteration}: {what}; {the last good checkpoint or none}. {fix}``"""
        where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        return cls(f"training diverged at iteration {iteration}: {what}; {where}. {fix}")


class DatasetError(InnerloopError, FileNotFoundError):
    """A dataset is missing, has the wrong layout, or fails its checksum."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file is there but unreadable, incomplete or not what it should be (also a ``ValueError``)."""


class DistributedError(InnerloopError, RuntimeError):
    """A process group cannot be formed or has fallen out of step."""


class PeerLost(DistributedError):
    """A collective failed because another rank died or stopped answering (a runtime failure)."""

    exit_code = 1


class StorageError(InnerloopError, OSError):
    """Writing a run's files failed (a full disk, a quota): a runtime failure; the message names what is intact."""

    exit_code = 1


class TrainingInterrupted(InnerloopError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint of the last finished iteration."""


class InputError(InnerloopError, ValueError):
    """Tensors given to a learner or a ``TaskBatch`` have the wrong shape, dtype or values (innerloop.tasks.checks)."""
