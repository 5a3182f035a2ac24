"""Atomic checkpoints: weights in safetensors, config and optimizer/RNG state beside them.

Layout of a run directory::

    RUN/checkpoints/step-00000500/{weights.safetensors, state.pt, config.yaml}
    RUN/checkpoints/latest            # name of the newest complete checkpoint

A checkpoint is written into a temporary directory, flushed to disk, renamed into
place, and only then does ``latest`` (itself replaced atomically) point at it. A kill
at any moment therefore leaves ``latest`` naming a complete checkpoint.

Nothing already saved is deleted unless newer work provably replaces it: a folder in the
way of a new checkpoint is moved aside (``checkpoints/replaced-step-*``), and pruning to
``keep`` checkpoints removes only those older than ``keep`` checkpoints known to be intact
(written by this process, or checked when resuming). Files and folders follow the umask.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .. import registry
from ..errors import CheckpointError, ConfigError, StorageError
from .config import Config, from_dict, is_rl, to_dict, to_yaml

WEIGHTS, STATE, CONFIG, LATEST = "weights.safetensors", "state.pt", "config.yaml", "latest"
STEP = re.compile(r"step-(\d{8,})")  # the name of a complete checkpoint folder
RUN_FILES = ("metrics.jsonl", "config.yaml", "checkpoints")  # what makes a folder hold a run
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and flush to disk (mode 0666 & ~umask); a full disk raises OSError(ENOSPC) here."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: written beside it, flushed, renamed over it (metrics, ``latest``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_bytes(tmp, text.encode())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync(path.parent)


def step_of(path: Path) -> int | None:
    """The iteration a checkpoint folder is named after (``step-00000500`` -> 500), else None."""
    match = STEP.fullmatch(path.name)
    return int(match[1]) if match else None


def _order(path: Path) -> int:
    """Sort key of checkpoint folders: the step (-1 for a folder named after none, which sorts oldest)."""
    step = step_of(path)
    return -1 if step is None else step


def checkpoint_dirs(root: Path) -> list[Path]:
    """The complete checkpoint folders in ``root`` (``RUN/checkpoints``), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) is not None and p.is_dir()), key=_order)


def _move_aside(path: Path, prefix: str = "replaced-") -> Path:
    """Rename ``path`` to a fresh ``prefix<name>-<UTC time>`` beside it; returns the new path."""
    target = path.with_name(f"{prefix}{path.name}-{_stamp()}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{prefix}{path.name}-{_stamp()}-{n}")
    os.rename(path, target)
    return target


def run_contents(run_dir: str | Path) -> list[str]:
    """What in ``run_dir`` belongs to a run (metrics, config, checkpoints); empty when it holds none."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def set_aside_run(run_dir: str | Path) -> Path:
    """Move everything in ``run_dir`` (but earlier ``replaced-*`` folders) into a new ``run_dir/replaced-<UTC time>/``."""
    run_dir = Path(run_dir)
    target = run_dir / f"replaced-{_stamp()}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"replaced-{_stamp()}-{n}"
    target.mkdir()
    for entry in run_dir.iterdir():
        if not entry.name.startswith("replaced-"):
            os.rename(entry, target / entry.name)
    return target


def _storage_error(err: OSError, path: Path, intact: Path | None) -> StorageError:
    where = (
        f"checkpoint step {step_of(intact)} is intact ({intact})"
        if intact is not None
        else "no checkpoint was written yet"
    )
    return StorageError(
        f"{FULL.get(err.errno or 0, err.strerror)} writing {path}; {where}. Free some space, then add --resume to the same command to continue"
    )


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    learner,
    optimizer,
    config: Config,
    extra: dict | None = None,
    keep: int = 2,
    intact: Iterable[Path] = (),
) -> Path:
    """Write ``RUN/checkpoints/step-<iteration>`` atomically and point ``latest`` at it.

    ``intact``: checkpoints known to be complete (those this process wrote, the one it resumed
    from); only they count towards the ``keep`` newest that pruning leaves. A full disk raises
    :class:`StorageError` naming the newest of them, which is left as it was.
    """
    root = Path(run_dir) / "checkpoints"
    intact = [Path(p) for p in intact if Path(p).is_dir()]
    if not intact and (root / LATEST).exists():  # a caller that tracks nothing: trust ``latest``
        named = find_checkpoint(root)
        intact = [named] if named is not None else []
    newest_good = max(intact, key=_order, default=None)
    name = f"step-{iteration:08d}"
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        os.mkdir(tmp)  # 0777 & ~umask (tempfile.mkdtemp would make it 0700)
    except OSError as err:
        if err.errno in FULL:
            raise _storage_error(err, final, newest_good) from None
        raise
    writing = final / WEIGHTS
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in learner.state_dict().items()}
        # Serialized in memory, written by _write_bytes: a full disk is then an OSError(ENOSPC)
        # (torch.save's own file writer reports it as "unexpected pos", without errno).
        _write_bytes(tmp / WEIGHTS, save(weights, metadata={"iteration": str(iteration)}))
        state = {
            "iteration": iteration,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": to_dict(config),
            **(extra or {}),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        writing = final / STATE
        _write_bytes(tmp / STATE, buffer.getvalue())
        writing = final / CONFIG
        _write_bytes(tmp / CONFIG, to_yaml(config).encode())
        for file, data in getattr(learner, "checkpoint_files", dict)().items():  # e.g. lopt's meta.safetensors
            if file in (WEIGHTS, STATE, CONFIG) or Path(file).name != file:
                raise ValueError(f"learner.checkpoint_files() may not name {file!r}: the checkpoint's own or a path")
            writing = final / file
            _write_bytes(tmp / file, data)
        writing = final
        if final.exists():  # not intact (a resume skipped it) or written before: set aside, never deleted
            _move_aside(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in FULL:
            raise _storage_error(err, writing, newest_good) from None
        raise
    try:
        write_text_atomic(root / LATEST, name)
    except OSError as err:
        if err.errno in FULL:  # the new checkpoint is complete and on disk; only the pointer is stale
            raise _storage_error(err, root / LATEST, final) from None
        raise
    _prune(root, keep, [*intact, final])
    return final


def _prune(root: Path, keep: int, intact: list[Path]) -> None:
    """Delete checkpoints older than the ``keep`` newest *intact* ones (never ``latest``'s), and unfinished writes."""
    good = sorted({p.resolve() for p in intact if p.is_dir() and step_of(p) is not None}, key=_order)
    if keep > 0 and len(good) >= keep:
        oldest_kept = _order(good[-keep])
        latest = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
        for old in checkpoint_dirs(root):
            if _order(old) < oldest_kept and old.name != latest:
                shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # debris of an interrupted write
        shutil.rmtree(stale, ignore_errors=True)


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, the run's config, the weights (name -> tensor) and the training state."""

    path: Path
    config: Config
    weights: dict
    state: dict

    @property
    def iteration(self) -> int:
        """The meta-training iteration the checkpoint was written after."""
        return int(self.state["iteration"])


class _Unreadable(Exception):
    """Why a checkpoint folder is not intact (one phrase)."""


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"


def _read(directory: Path) -> Checkpoint:
    """Load one checkpoint folder, checking it is whole: both files readable, one iteration, a readable config."""
    for name in (WEIGHTS, STATE):
        if not (directory / name).is_file():
            raise _Unreadable(f"{name} is missing")
    try:
        with safe_open(directory / WEIGHTS, "pt") as f:
            recorded = (f.metadata() or {}).get("iteration")
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise _Unreadable(f"{WEIGHTS} is unreadable ({_first_line(err)})") from None
    try:
        state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
        iteration = int(state["iteration"])
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... with advice that does not apply
        raise _Unreadable(
            f"{STATE} is not a state file innerloop wrote, or is truncated ({type(err).__name__})"
        ) from None
    named = step_of(directory)
    if named is not None and iteration != named:
        raise _Unreadable(f"{STATE} holds iteration {iteration}, the folder name says {named}")
    if recorded is not None and int(recorded) != iteration:
        raise _Unreadable(f"{WEIGHTS} holds iteration {recorded}, {STATE} iteration {iteration}")
    try:
        config = from_dict(state["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise _Unreadable(
            f"its config is unreadable ({err}); it was not written by this version of innerloop"
        ) from None
    return Checkpoint(directory, config, weights, state)


def newest_intact(run_dir: str | Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest intact checkpoint of a run, and why each newer one (or a dangling ``latest``) was passed over."""
    root = Path(run_dir) / "checkpoints"
    skipped = []
    if (root / LATEST).exists():
        try:
            named = (root / LATEST).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            skipped.append(f"checkpoints/{LATEST} is unreadable ({_first_line(err)})")
        else:
            if not (root / named).is_dir():
                skipped.append(f"checkpoints/{LATEST} names {named}, which does not exist")
    for directory in reversed(checkpoint_dirs(root)):
        try:
            return _read(directory), skipped
        except _Unreadable as why:
            skipped.append(f"{directory.name}: {why}")
    return None, skipped


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


def _run_dir_of(path: Path) -> Path | None:
    """The run directory of RUN, RUN/checkpoints or RUN/checkpoints/step-N (None for a checkpoint kept elsewhere)."""
    if (path / "checkpoints").is_dir():
        return path
    if path.name == "checkpoints":
        return path.parent
    return path.parent.parent if path.parent.name == "checkpoints" else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint ``latest`` names in a run directory, or a checkpoint directory itself; checked to be whole."""
    path = Path(path)
    found = find_checkpoint(path)
    run_dir = _run_dir_of(path)
    if found is None:
        intact, skipped = newest_intact(run_dir) if run_dir is not None else (None, [])
        if skipped:  # e.g. ``latest`` names a folder that was deleted
            older = (
                f"; the newest intact one is {intact.path}: evaluate it by that path" if intact else "; none is intact"
            )
            raise CheckpointError(f"no usable checkpoint at {path}: {skipped[0]}{older}")
        raise CheckpointError(
            f"no checkpoint found at {path}: expected a run directory (with checkpoints/latest) or a checkpoint "
            f"directory containing {WEIGHTS}. Check the path, or train first with `innerloop train`."
        )
    try:
        return _read(found)
    except _Unreadable as why:
        older = ""
        if run_dir is not None:
            intact, _ = newest_intact(run_dir)
            older = f" The newest intact one is {intact.path}; --resume continues from it." if intact else ""
        raise CheckpointError(
            f"checkpoint {found} is corrupt or incomplete: {why}.{older or ' Retrain, or use an older checkpoint.'}"
        ) from None


def harmless(config: Config) -> set[str]:
    """The settings that do not change what a run computes, so they may differ on resume: those the
    registry entries of its algorithm and task family declare (strategy, compile, data location, ...)."""
    return {*registry.algorithm(config.algorithm.name).harmless, *registry.task_family(config.task.name).harmless}


def config_differences(config: Config, other: Config, sections=("algorithm", "model", "task", "rl")) -> list[str]:
    """``section.key: checkpoint X vs now Y`` for each setting that changes what a run computes (:func:`harmless`
    ones excepted); the rl section counts for meta-RL runs only."""
    ours, theirs, keep = to_dict(config), to_dict(other), harmless(config)
    used = [s for s in sections if s != "rl" or is_rl(config) or is_rl(other)]
    return [
        f"{s}.{k}: checkpoint {theirs[s].get(k)!r} vs now {v!r}"
        for s in used
        for k, v in ours[s].items()
        if theirs[s].get(k) != v and f"{s}.{k}" not in keep
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
    wrong = sorted(
        k for k in set(expected) & set(checkpoint.weights) if expected[k].shape != checkpoint.weights[k].shape
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {[(k, tuple(checkpoint.weights[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}. "
            "It was made for another model; evaluate it with its own config."
        )
    learner.load_state_dict(checkpoint.weights)
