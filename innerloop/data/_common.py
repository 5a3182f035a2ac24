"""Shared plumbing of the dataset loaders: where data lives, downloads with checksums,
atomic cache files, and one-time image decoding/resizing with Pillow.

Nothing here is used in the sampling hot path (see ``episodes.py``): it runs once, when a
dataset is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DatasetFormatError

DATA_ENV = "INNERLOOP_DATA"
CACHE_ENV = "INNERLOOP_CACHE"

#: Split lists shipped inside the package (see ``splits/README.md`` for sources and licences).
SPLITS_DIR = Path(__file__).resolve().parent / "splits"

_REPO_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


_log = logging.getLogger("innerloop.data")


class ChecksumError(DatasetFormatError):
    """A downloaded or user-provided archive does not have the published checksum."""


# --------------------------------------------------------------------------- data roots
def root_candidates(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data roots in the order they are tried, each with where it came from."""
    if root is not None:
        return [("task.root (root=...)", Path(root).expanduser())]
    out = []
    env = os.environ.get(DATA_ENV)
    if env:
        out.append((f"${DATA_ENV}", Path(env).expanduser()))
    if _REPO_SHARED.is_dir():
        out.append(("../shared/data next to the repository", _REPO_SHARED))
    out.append(("default", Path.home() / ".cache" / "innerloop"))
    return out


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$INNERLOOP_DATA``, else ``../shared/data`` next to
    the repository (if it exists), else ``~/.cache/innerloop``. Datasets live in subfolders
    (``omniglot/``, ``mini-imagenet/``, ``cifar100/``)."""
    return root_candidates(root)[0][1]


def data_root_origin(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``(data_root(root), where that choice came from)``, for error messages."""
    why, path = root_candidates(root)[0]
    return path, why


# --------------------------------------------------------------------------- checksums / download
def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(*paths: Path) -> str:
    """A short content digest of files (keys the caches built from them)."""
    h = hashlib.blake2b(digest_size=8)
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (via a temporary file, so a failed download leaves nothing)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    _log.info("downloading %s to %s", url, dest)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "innerloop"})
        with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(tmp, dest)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(
                f"downloading {url} to {dest} failed: {e}. Check the connection and retry, or download the file "
                f"yourself and put it at {dest}."
            ) from e
        raise


_VERIFIED: set = set()


def verify_md5(path: Path, expected: str) -> None:
    st = path.stat()
    stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns, expected)
    if stamp in _VERIFIED:  # already checked in this process and unchanged since
        return
    got = md5sum(path)
    if got == expected:
        _VERIFIED.add(stamp)
    else:
        raise ChecksumError(
            f"{path.name} has the wrong checksum: expected md5 {expected}, got {got} (file {path}, "
            f"{path.stat().st_size} bytes). It is corrupt, incomplete or not the official file. "
            f"Delete {path} and retry (task.download=true, or download=True in Python, fetches it again)."
        )


def download_verified(url: str, dest: Path, md5: str) -> Path:
    """``dest`` after checking its md5, downloading it first if it is missing."""
    if not dest.exists():
        fetch(url, dest)
    verify_md5(dest, md5)
    return dest


# --------------------------------------------------------------------------- caches
def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe"):
            pass
        return True
    except OSError:
        return False


def cache_dir(dataset: str, data_dir: Path) -> Path | None:
    """Where derived arrays (e.g. images resized to 28x28) are cached: ``$INNERLOOP_CACHE/<dataset>``
    if set, else ``<data_dir>/cache`` if writable, else ``~/.cache/innerloop/<dataset>/cache``;
    None (no caching, with a warning) if none of them is writable."""
    env = os.environ.get(CACHE_ENV)
    candidates = (
        [Path(env).expanduser() / dataset]
        if env
        else [
            data_dir / "cache",
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "innerloop" / dataset / "cache",
        ]
    )
    for c in candidates:
        if _writable_dir(c):
            return c
    warnings.warn(
        f"no writable cache folder among {[str(c) for c in candidates]}; {dataset} images will be "
        f"re-derived on every load (set ${CACHE_ENV} to a writable folder)",
        stacklevel=3,
    )
    return None


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; caches may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz_atomic(path: Path, compressed: bool = True, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_array(cache: Path | None, name: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """``build()``, stored as ``<cache>/<name>-<hash(key)>.npy`` and loaded from there next time."""
    if cache is None:
        return build()
    path = cache / f"{name}-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError) as e:  # a damaged cache file is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable cache file {path}: {e}", stacklevel=2)
    array = build()
    try:
        save_npy_atomic(path, array)
    except OSError as e:
        warnings.warn(f"could not write cache file {path}: {e}", stacklevel=2)
    return array


# --------------------------------------------------------------------------- split lists
SPLIT_NAMES = ("train", "val", "test")


def check_split(split: str, what: str) -> str:
    """``split`` if it is one of :data:`SPLIT_NAMES`, else a ``ValueError`` naming the choices."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown {what} split {split!r}; choose from {SPLIT_NAMES}")
    return split


def read_csv(path: Path, header: Sequence[str]) -> list[tuple[str, str]]:
    """The two-column rows of a split list ``path`` whose first line must be ``header``."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        got = next(reader, None)
        if got != list(header):
            raise ValueError(f"{path}: expected the header {','.join(header)!r}, got {got}")
        return [(r[0], r[1]) for r in reader if r]


def file_stamps(paths: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """``name:size:mtime`` of every file, joined by ``|``: the part of a cache key that changes with the files."""
    return "|".join(
        f"{n}:{s.st_size}:{s.st_mtime_ns}"
        for n, p in zip(paths if names is None else names, paths)
        for s in (p.stat(),)
    )


# --------------------------------------------------------------------------- images
def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> contiguous (N, C, H, W)."""
    return images[:, None] if images.ndim == 3 else np.ascontiguousarray(images.transpose(0, 3, 1, 2))


RESAMPLE = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")


def pil_resample(name: str):
    from PIL import Image

    if name not in RESAMPLE:
        raise ValueError(f"resample={name!r} is not one of {RESAMPLE}")
    return getattr(Image.Resampling, name.upper())


def image_hw(image_size) -> tuple[int, int] | None:
    """``None``, an int (square) or ``(height, width)`` -> ``(height, width)`` or None."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw: tuple[int, ...] = (image_size, image_size)
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except TypeError:
            hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return hw[0], hw[1]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def resize_uint8(
    images: np.ndarray, hw: tuple[int, int], resample: str = "lanczos", num_workers: int | None = None
) -> np.ndarray:
    """Resize uint8 images ``(N, H, W)`` or ``(N, H, W, 3)`` with Pillow (threads; Pillow releases the GIL)."""
    from PIL import Image

    h, w = hw
    n = len(images)
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((n, h, w, *images.shape[3:]), np.uint8)
    filt = pil_resample(resample)

    def work(bounds):
        for i in range(*bounds):
            out[i] = np.asarray(Image.fromarray(images[i]).resize((w, h), filt))

    step = 512
    chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
    with ThreadPoolExecutor(num_workers or default_workers()) as ex:
        list(ex.map(work, chunks))
    return out


def decode_files(
    paths: Sequence[Path],
    mode: str,
    hw: tuple[int, int] | None,
    resample: str = "lanczos",
    num_workers: int | None = None,
) -> np.ndarray:
    """Decode image files once with Pillow into ``(N, H, W)`` (mode "L") or ``(N, H, W, 3)`` (mode "RGB") uint8.

    With ``hw=None`` every image must already have the same size. Errors name the file.
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
    filt = pil_resample(resample)

    def load(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert(mode)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image file {path}: {e}. Remove or replace it.") from None
        if hw is not None and img.size != (hw[1], hw[0]):
            img = img.resize((hw[1], hw[0]), filt)
        return np.asarray(img)

    if not paths:
        raise ValueError("no image files to decode")
    first = load(paths[0])
    out = np.empty((len(paths), *first.shape), np.uint8)
    out[0] = first

    def work(bounds):
        for i in range(*bounds):
            a = load(paths[i])
            if a.shape != first.shape:
                raise ValueError(
                    f"image {paths[i]} has size {a.shape[1]}x{a.shape[0]} but {paths[0]} has "
                    f"{first.shape[1]}x{first.shape[0]}; pass image_size=... to resize all images to one size."
                )
            out[i] = a

    step = 256
    chunks = [(a, min(a + step, len(paths))) for a in range(1, len(paths), step)]
    with ThreadPoolExecutor(num_workers or default_workers()) as ex:
        list(ex.map(work, chunks))
    return out
