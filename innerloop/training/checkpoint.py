"""Atomic checkpoints: weights in safetensors, config and optimizer/RNG state beside them.

Layout of a run directory::

    RUN/checkpoints/step-00000500/{weights.safetensors, state.pt, config.yaml}
    RUN/checkpoints/latest            # name of the newest complete checkpoint

A checkpoint is written into a temporary directory, flushed to disk, renamed into
place, and only then does ``latest`` (itself replaced atomically) point at it. A kill
at any moment therefore leaves ``latest`` naming a complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from .config import Config, from_dict, to_dict, to_yaml

WEIGHTS, STATE, CONFIG, LATEST = "weights.safetensors", "state.pt", "config.yaml", "latest"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def save_checkpoint(run_dir: str | Path, iteration: int, learner, optimizer, config: Config, extra: dict | None = None, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{iteration:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in learner.state_dict().items()}
        save_file(weights, tmp / WEIGHTS, metadata={"iteration": str(iteration)})
        state = {
            "iteration": iteration,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": to_dict(config),
            **(extra or {}),
        }
        torch.save(state, tmp / STATE)
        (tmp / CONFIG).write_text(to_yaml(config))
        for f in tmp.iterdir():
            _fsync(f)
        final = root / name
        if final.exists():  # a re-save of the same iteration (e.g. after a resume)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST, name)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    latest = (root / LATEST).read_text().strip()
    for old in done[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # debris of an interrupted write
        shutil.rmtree(stale, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory for a run directory, a checkpoints/ directory or a checkpoint itself."""
    path = Path(path)
    if (path / WEIGHTS).exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.exists():
            target = root / latest.read_text().strip()
            if (target / WEIGHTS).exists():
                return target
    return None


@dataclass
class Checkpoint:
    path: Path
    config: Config
    weights: dict
    state: dict

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])


def load_checkpoint(path: str | Path) -> Checkpoint:
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"no checkpoint found at {path}: expected a run directory (with checkpoints/latest) or a checkpoint "
            f"directory containing {WEIGHTS}. Check the path, or train first with `innerloop train`."
        )
    try:
        weights = load_file(found / WEIGHTS)
        state = torch.load(found / STATE, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {found} is corrupt or incomplete ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Delete it (an older one in the same folder may still be good) or retrain."
        ) from None
    try:
        config = from_dict(state["config"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"checkpoint {found} holds an unreadable config ({err}); it was not written by this version of innerloop") from None
    return Checkpoint(found, config, weights, state)


# Options that do not change what a run computes, so they may differ on resume.
HARMLESS = {"algorithm.strategy", "algorithm.checkpoint_steps", "algorithm.compile", "task.root", "task.download", "rl.workers", "rl.eval_episodes", "rl.eval_lrs"}


def config_differences(config: Config, other: Config, sections=("algorithm", "model", "task", "rl")) -> list[str]:
    ours, theirs = to_dict(config), to_dict(other)
    return [
        f"{s}.{k}: checkpoint {theirs[s].get(k)!r} vs now {v!r}"
        for s in sections for k, v in ours[s].items() if theirs[s].get(k) != v and f"{s}.{k}" not in HARMLESS
    ]


def restore_learner(learner, checkpoint: Checkpoint, config: Config | None = None) -> None:
    """Load weights into ``learner``, refusing a checkpoint made for another model or config."""
    diffs = config_differences(config, checkpoint.config) if config is not None else []
    if diffs:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was made for a different configuration ({'; '.join(diffs)}). "
            "Use the same config to resume, or start a new run directory (--out)."
        )
    expected = learner.state_dict()
    missing = sorted(set(expected) - set(checkpoint.weights))
    unexpected = sorted(set(checkpoint.weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(checkpoint.weights) if expected[k].shape != checkpoint.weights[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {[(k, tuple(checkpoint.weights[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}. "
            "It was made for another model; evaluate it with its own config."
        )
    learner.load_state_dict(checkpoint.weights)
