"""Image-folder datasets: ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``) decoded once and cached.

* ``image_folder(root)``: grayscale or RGB, optionally resized, cached outside the folder;
* ``folder_layout(root)`` tells ``root/<class>/<image>`` from ``root/<split>/<class>/<image>``;
* ``split_classes`` splits the classes of a folder without split folders by seed.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DatasetError, DatasetFormatError
from . import _common
from ._common import SPLIT_NAMES, cached_array, decode_files, file_stamps, image_hw, to_nchw
from .dataset import ImageDataset, from_numpy

__all__ = ["IMAGE_EXTENSIONS", "folder_layout", "image_folder", "split_classes"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_log = logging.getLogger(__name__)

#: Pillow modes holding one channel: such files are grayscale whatever their bit depth.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
FOLDER_CACHE = "image-folder"


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_layout(root: str | Path, split_names: Sequence[str] = SPLIT_NAMES) -> str:
    """``"splits"`` for ``root/<split>/<class>/<image>`` (subfolders named as in ``split_names`` only),
    ``"classes"`` for ``root/<class>/<image>`` (no subfolder named as a split). Anything in between
    (split folders beside other folders, or images directly in a split folder) is refused."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} does not exist (expected {root}/<class>/<image> or {root}/<split>/<class>/<image>)"
        )
    dirs = _subdirs(root)
    splits = [d for d in dirs if d.name in split_names]
    if not splits:
        return "classes"
    others = [d.name for d in dirs if d.name not in split_names]
    loose = [d.name for d in splits if any(_is_image(p) for p in d.iterdir())]
    if others or loose:
        what = (
            (f"other folders {others[:3]}" if others else "")
            + (" and " if others and loose else "")
            + (f"images directly in {loose}" if loose else "")
        )
        raise DatasetFormatError(
            f"{root} is ambiguous: it holds split folders {[d.name for d in splits]} but also {what}; use either "
            f"{root}/<split>/<class>/<image> with only the folders {list(split_names)}, or {root}/<class>/<image> "
            "with no class named like a split"
        )
    return "splits"


def split_classes(class_names: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[str]]:
    """A seeded split of classes into ``len(fractions)`` disjoint parts (train, val, test).

    The names are sorted, permuted with ``numpy.random.default_rng(seed).permutation``, and
    cut at ``round(K * cumsum(fractions))``; each part is returned sorted. Depends on the class
    names, the fractions and the seed only (not on the file order or the run's seed).
    """
    f = np.asarray(fractions, np.float64)
    if f.ndim != 1 or len(f) < 1 or (f < 0).any() or abs(f.sum() - 1) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    names = sorted(class_names)
    order = np.random.default_rng(seed).permutation(len(names))
    cuts = np.rint(len(names) * np.cumsum(f)).astype(int)
    cuts[-1] = len(names)
    bounds = [0, *cuts.tolist()]
    return [sorted(names[i] for i in order[a:b]) for a, b in itertools.pairwise(bounds)]


def _probe(paths: Sequence[Path], num_workers: int | None) -> list[tuple[str, tuple[int, int]]]:
    """``(mode, (width, height))`` of each file, read from the headers only."""
    from PIL import Image, UnidentifiedImageError

    def head(path: Path):
        try:
            with Image.open(path) as img:
                return img.mode, img.size
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DatasetFormatError(f"cannot read image file {path}: {e}. Remove or replace it.") from None

    with ThreadPoolExecutor(num_workers or _common.default_workers()) as ex:
        return list(ex.map(head, paths))


def _folder_cache(cache_dir) -> Path | None:
    """``cache_dir`` if given, else ``$INNERLOOP_CACHE/image-folder``, else ``~/.cache/innerloop/image-folder``
    (never inside the image folder itself, where a cache folder would read as a class)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(_common.CACHE_ENV)
    if env:
        return Path(env).expanduser() / FOLDER_CACHE
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "innerloop" / FOLDER_CACHE


def image_folder(
    root: str | Path,
    image_size=None,
    mode: str = "auto",
    *,
    classes: Sequence[str] | None = None,
    resample: str = "lanczos",
    invert: bool = False,
    cache: bool = True,
    cache_dir=None,
    num_workers: int | None = None,
    name: str | None = None,
) -> ImageDataset:
    """A ``root/<class>/<image>`` folder as an ``ImageDataset``, decoded once with Pillow and cached.

    Args:
        image_size: int or ``(H, W)`` to resize every image to (Pillow ``resample`` filter); ``None``
            keeps the files' size, which must then be the same for all images.
        mode: ``"L"`` (grayscale, 1 channel), ``"RGB"`` (3 channels) or ``"auto"``: ``"L"`` when every
            image is grayscale (a one-channel file, or RGB with equal channels), else ``"RGB"``.
        classes: use only these class folders, in this order (default: all, sorted by name).
        invert: store ``255 - pixel``. innerloop's Omniglot has 255 = ink on a 0 background (1 = ink
            once scaled, as in Snell et al.'s preprocessing); folders of dark ink on light paper,
            such as Omniglot's own PNGs, match it with ``invert=True``.
        cache, cache_dir: the decoded array is stored (atomically) under ``cache_dir`` (default
            ``$INNERLOOP_CACHE/image-folder`` or ``~/.cache/innerloop/image-folder``), keyed by every file's
            path, size and modification time and by ``image_size``, ``mode``, ``resample`` and ``invert``:
            the next load reads it instead of decoding; any change to the folder makes a new entry.
    Files with other extensions than ``IMAGE_EXTENSIONS`` and hidden files are ignored. The
    dataset's ``files`` lists each image's path relative to ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
    hw = image_hw(image_size)
    _common.pil_resample(resample)
    if mode not in ("auto", "L", "RGB"):
        raise ValueError(f"mode must be 'auto', 'L' (grayscale) or 'RGB', got {mode!r}")
    found = [p.name for p in _subdirs(root)]
    if not found:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        hint = f" (it holds images directly, e.g. {loose}: move them into one folder per class)" if loose else ""
        raise DatasetFormatError(f"no class folders in {root}{hint}; the layout must be {root}/<class>/<image>")
    if classes is not None:
        classes = [str(c) for c in classes]
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetFormatError(f"class folders {missing[:5]} not found in {root} ({len(found)} classes there)")
        found = classes
    paths, labels = [], []
    for label, c in enumerate(found):
        files = sorted(p for p in (root / c).iterdir() if _is_image(p))
        if not files:
            raise DatasetFormatError(
                f"class folder {root / c} contains no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += files
        labels += [label] * len(files)
    rel = [p.relative_to(root).as_posix() for p in paths]
    key = f"image-folder-v1|{root.resolve()}|{hw}|{mode}|{resample}|{bool(invert)}|" + file_stamps(paths, rel)
    where = _folder_cache(cache_dir) if cache else None
    size = f"{hw[0]}x{hw[1]}" if hw else "native"
    images = cached_array(
        where,
        f"{root.name}-{size}-{mode}",
        key,
        lambda: _decode_folder(root, paths, mode, hw, resample, invert, num_workers),
    )
    return from_numpy(images, np.array(labels), found, files=rel, name=name or f"folder:{root.name}")


def _decode_folder(root: Path, paths, mode: str, hw, resample: str, invert: bool, num_workers) -> np.ndarray:
    """Decode ``paths`` to uint8 NCHW (see ``image_folder``); ``mode="auto"`` resolved here."""
    heads = _probe(paths, num_workers)
    if hw is None:
        sizes = {s for _, s in heads}
        if len(sizes) > 1:
            (w0, h0), first = heads[0][1], paths[0]
            other = next(i for i, (_, s) in enumerate(heads) if s != (w0, h0))
            w1, h1 = heads[other][1]
            raise DatasetFormatError(
                f"images in {root} differ in size: {paths[other].relative_to(root)} has size {w1}x{h1} but "
                f"{first.relative_to(root)} has {w0}x{h0} ({len(sizes)} sizes); set image_size (task.image_size=N in "
                "a config) to resize them all to N x N"
            )
    gray = all(m in GRAY_MODES for m, _ in heads)
    if mode == "auto" and not gray:
        rgb = decode_files(paths, "RGB", hw, resample, num_workers)
        same = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        images = np.ascontiguousarray(rgb[..., 0]) if same else rgb
    else:
        images = decode_files(paths, "L" if mode == "auto" else mode, hw, resample, num_workers)
    if invert:
        np.subtract(255, images, out=images)
    _log.info("decoded %d images of %s (%s)", len(images), root, "x".join(map(str, images.shape[1:])))
    return to_nchw(images)
