"""Image-folder datasets, mini-ImageNet, CIFAR-FS and FC100.

Every loader decodes the images once into a compact uint8 ``ImageDataset`` ``(N, C, H, W)``
that ``EpisodicTasks`` samples from by index.

* ``image_folder(root)``: ``root/<class>/<image>``, grayscale or RGB, optionally resized, cached;
  ``folder_layout`` tells it from ``root/<split>/<class>/<image>``, ``split_classes`` splits classes by seed.
* ``mini_imagenet(root, split)``: Ravi & Larochelle's split (64 / 16 / 20 classes x 600 images,
  84x84) from the widely distributed ``mini-imagenet-cache-{split}.pkl`` files or from image
  files named as in the split CSVs (``images/<filename>`` as in Ravi's release, or
  ``<wnid>/<filename>``), under ``<root>/mini-imagenet/``.
* ``cifar_fs(root, split)`` (Bertinetto et al. 2019; 64 / 16 / 20 classes) and
  ``fc100(root, split)`` (Oreshkin et al. 2018; 12 / 4 / 4 superclasses = 60 / 20 / 20 classes)
  from the official ``cifar-100-python.tar.gz`` (md5-checked, ``download=True`` fetches it) under
  ``<root>/cifar100/``. Both pool CIFAR-100's train and test images: 600 per class.

The split lists ship with the package (``innerloop/data/splits``, with their licences);
``split_dir=`` points a loader at other lists (same file names and format).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import logging
import os
import pickle
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DatasetError, DatasetFormatError
from . import _common
from ._common import ChecksumError, cache_dir, cached_array, data_root_origin, decode_files, image_hw
from .dataset import ImageDataset, from_numpy

__all__ = [
    "CIFAR100",
    "IMAGE_EXTENSIONS",
    "ChecksumError",
    "cifar_fs",
    "fc100",
    "folder_layout",
    "image_folder",
    "load_cifar100",
    "mini_imagenet",
    "split_classes",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val", "test")
_log = logging.getLogger(__name__)


def _check_split(split: str, what: str) -> str:
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown {what} split {split!r}; choose from {SPLIT_NAMES}")
    return split


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> contiguous (N, C, H, W)."""
    return images[:, None] if images.ndim == 3 else np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- generic image folders
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
    key = f"image-folder-v1|{root.resolve()}|{hw}|{mode}|{resample}|{bool(invert)}|" + "|".join(
        f"{r}:{s.st_size}:{s.st_mtime_ns}" for r, p in zip(rel, paths) for s in (p.stat(),)
    )
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
    return _to_nchw(images)


# --------------------------------------------------------------------------- mini-ImageNet
def mini_imagenet_split(split: str, split_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(filename, wnid)`` rows of Ravi & Larochelle's ``{split}.csv``."""
    path = Path(split_dir or _common.SPLITS_DIR / "mini_imagenet") / f"{_check_split(split, 'mini-ImageNet')}.csv"
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["filename", "label"]:
            raise ValueError(f"{path}: expected the header 'filename,label', got {header}")
        rows = [(r[0], r[1]) for r in reader if r]
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


def _mini_dir(root) -> tuple[Path, str]:
    data_dir, origin = data_root_origin(root)
    for d in (data_dir / "mini-imagenet", data_dir / "mini_imagenet", data_dir / "miniImagenet"):
        if d.is_dir():
            return d, origin
    return data_dir / "mini-imagenet", origin


def mini_imagenet(
    root: str | Path | None = None,
    split: str = "train",
    image_size=84,
    *,
    source: str = "auto",
    resample: str = "lanczos",
    cache: bool = True,
    split_dir: str | Path | None = None,
    num_workers: int | None = None,
) -> ImageDataset:
    """mini-ImageNet (Ravi & Larochelle split) as an ``ImageDataset`` (uint8 ``(N, 3, H, W)``).

    ``source``: ``"pickle"`` (``<root>/mini-imagenet/mini-imagenet-cache-{split}.pkl``, a dict with
    ``image_data`` uint8 ``(N, 84, 84, 3)`` and ``class_dict`` ``{wnid: [indices]}``), ``"folder"``
    (image files named as in the split CSV, in ``images/`` or ``<wnid>/``; decoded once, cached) or
    ``"auto"`` (the pickle if present). Classes are in the CSV's order, named by wnid; the class set
    must be exactly the split's.

    The pickle files are Python pickles: load only files from a source you trust.
    """
    _check_split(split, "mini-ImageNet")
    if source not in ("auto", "pickle", "folder"):
        raise ValueError(f"source must be 'auto', 'pickle' or 'folder', got {source!r}")
    hw = image_hw(image_size)
    _common.pil_resample(resample)
    rows = mini_imagenet_split(split, split_dir)
    order = list(dict.fromkeys(w for _, w in rows))
    mdir, origin = _mini_dir(root)
    pkl = mdir / f"mini-imagenet-cache-{split}.pkl"
    if source == "pickle" or (source == "auto" and pkl.exists()):
        if not pkl.exists():
            raise DatasetError(
                f"{pkl} not found (data root from {origin}); put the mini-ImageNet pickles there, or point "
                f"task.root=... (root=...) or ${_common.DATA_ENV} at a data folder that holds them"
            )
        images, labels = _mini_from_pickle(pkl, order, split)
        if hw is not None and images.shape[1:3] != hw:
            images = _common.resize_uint8(images, hw, resample, num_workers)
        return from_numpy(_to_nchw(images), labels, order, name=f"mini-imagenet/{split}")

    paths = _mini_files(mdir, rows, origin, split)
    hw = hw or (84, 84)
    key = f"mini-imagenet-v1|{split}|{hw}|{resample}|" + "|".join(
        f"{p}:{s.st_size}:{s.st_mtime_ns}" for p in paths for s in (p.stat(),)
    )
    images = cached_array(
        cache_dir("mini-imagenet", mdir) if cache else None,
        f"{split}-{hw[0]}x{hw[1]}-{resample}",
        key,
        lambda: decode_files(paths, "RGB", hw, resample, num_workers),
    )
    index = {w: i for i, w in enumerate(order)}
    labels = np.array([index[w] for _, w in rows])
    return from_numpy(_to_nchw(images), labels, order, name=f"mini-imagenet/{split}")


def _mini_from_pickle(pkl: Path, order: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(pkl, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, OSError) as e:
        raise ValueError(f"cannot read {pkl}: {e}") from None
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise ValueError(f"{pkl} is not a mini-ImageNet cache: expected a dict with 'image_data' and 'class_dict'")
    x = np.asarray(data["image_data"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{pkl}: image_data must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    class_dict = {str(k): np.asarray(v, np.int64) for k, v in data["class_dict"].items()}
    if set(class_dict) != set(order):
        missing, extra = sorted(set(order) - set(class_dict)), sorted(set(class_dict) - set(order))
        raise ValueError(
            f"{pkl} does not hold the Ravi & Larochelle {split} classes: missing {missing[:5]} "
            f"({len(missing)}), unexpected {extra[:5]} ({len(extra)})"
        )
    idx = np.concatenate([class_dict[w] for w in order])
    if len(idx) and (idx.min() < 0 or idx.max() >= len(x)):
        raise ValueError(f"{pkl}: class_dict indices out of range for {len(x)} images")
    labels = np.repeat(np.arange(len(order)), [len(class_dict[w]) for w in order])
    out = np.empty((len(idx), *x.shape[1:]), np.uint8)
    for lo in range(0, len(idx), 4096):
        out[lo : lo + 4096] = x[idx[lo : lo + 4096]]
    return out, labels


def _mini_files(mdir: Path, rows, origin: str, split: str) -> list[Path]:
    fn, wnid = rows[0]
    layouts = [lambda f, w: mdir / "images" / f, lambda f, w: mdir / w / f, lambda f, w: mdir / split / w / f]
    for layout in layouts:
        if layout(fn, wnid).is_file():
            break
    else:
        raise DatasetError(
            f"mini-ImageNet {split} not found in {mdir} (data root from {origin}): no mini-imagenet-cache-{split}.pkl "
            f"and no image {fn} in {mdir / 'images'} or {mdir / wnid}. Put the pickles or the images there "
            f"(mini-ImageNet cannot be downloaded automatically: it is derived from ImageNet)."
        )
    paths = [layout(f, w) for f, w in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(paths)} mini-ImageNet {split} images are missing, e.g. {missing[0]}"
        )
    return paths


# --------------------------------------------------------------------------- CIFAR-100, CIFAR-FS, FC100
CIFAR100 = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")
_CIFAR_MEMBERS = ("train", "test", "meta")


def _cifar_source(root, download: bool) -> Path:
    data_dir, origin = data_root_origin(root)
    cdir = data_dir / "cifar100"
    folder, archive = cdir / "cifar-100-python", cdir / "cifar-100-python.tar.gz"
    if all((folder / m).is_file() for m in _CIFAR_MEMBERS):
        return folder
    url, md5 = CIFAR100
    if archive.exists() or download:
        try:
            return _common.download_verified(url, archive, md5)
        except PermissionError as e:
            raise PermissionError(
                f"cannot write CIFAR-100 to {cdir} ({e}); pass root=... or set ${_common.DATA_ENV} to a writable folder"
            ) from None
    raise DatasetError(
        f"CIFAR-100 is not in {cdir} (data root from {origin}): looked for {archive.name} and {folder.name}/. "
        f"Set task.download=true (download=True in Python) to fetch {url} (md5 {md5}), or put that file in {cdir}, "
        f"or point task.root=... (root=...) or "
        f"${_common.DATA_ENV} at a data folder that contains cifar100/."
    )


@functools.lru_cache(maxsize=1)
def _read_cifar100(path: str, stamp) -> dict:
    path_ = Path(path)
    objs = {}
    if path_.is_dir():
        for m in _CIFAR_MEMBERS:
            with open(path_ / m, "rb") as f:
                objs[m] = pickle.load(f, encoding="bytes")
    else:
        try:
            with tarfile.open(path_, "r:gz") as tf:
                for info in tf:
                    p = PurePosixPath(info.name)
                    if info.isfile() and p.parent.name == "cifar-100-python" and p.name in _CIFAR_MEMBERS:
                        member = tf.extractfile(info)  # a regular file, so not None
                        assert member is not None
                        objs[p.name] = pickle.load(member, encoding="bytes")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"cannot read {path_}: {e}; delete it and retry (download=True)") from None
    missing = [m for m in _CIFAR_MEMBERS if m not in objs]
    if missing:
        raise ValueError(f"{path_} lacks cifar-100-python/{missing}: not the CIFAR-100 python archive")
    xs, fine, coarse = [], [], []
    for m in ("train", "test"):
        d = objs[m]
        try:
            x = np.asarray(d[b"data"], np.uint8)
            f_, c_ = np.asarray(d[b"fine_labels"], np.int64), np.asarray(d[b"coarse_labels"], np.int64)
        except KeyError as e:
            raise ValueError(f"{path_}: cifar-100-python/{m} has no {e} entry") from None
        if x.ndim != 2 or x.shape[1] != 3072 or len(f_) != len(x) or len(c_) != len(x):
            raise ValueError(
                f"{path_}: cifar-100-python/{m} has data {x.shape}, {len(f_)} fine and {len(c_)} coarse labels"
            )
        xs.append(x.reshape(-1, 3, 32, 32))  # rows are R (1024), G, B planes, each row-major 32x32
        fine.append(f_)
        coarse.append(c_)
    meta = objs["meta"]
    return {
        "images": np.concatenate(xs),
        "fine": np.concatenate(fine),
        "coarse": np.concatenate(coarse),
        "fine_names": [n.decode() for n in meta[b"fine_label_names"]],
        "coarse_names": [n.decode() for n in meta[b"coarse_label_names"]],
    }


def load_cifar100(root: str | Path | None = None, download: bool = False) -> dict:
    """CIFAR-100 train + test pooled: ``images`` uint8 ``(60000, 3, 32, 32)`` (train first), ``fine`` and
    ``coarse`` labels, ``fine_names`` and ``coarse_names``. Kept in memory for the next call."""
    src = _cifar_source(root, download)
    st = src.stat()
    return _read_cifar100(str(src), (st.st_size, st.st_mtime_ns))


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} lists a class twice")
    return names


def _cifar_subset(data: dict, classes: list[str], name: str, hw, resample: str, where: Path) -> ImageDataset:
    index = {n: i for i, n in enumerate(data["fine_names"])}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise ValueError(f"{where} names classes that are not CIFAR-100 fine classes: {unknown[:5]}")
    fine = data["fine"]
    rows = [np.nonzero(fine == index[c])[0] for c in classes]
    images = data["images"][np.concatenate(rows)]
    if hw is not None and images.shape[2:] != hw:
        images = _to_nchw(_common.resize_uint8(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), hw, resample))
    labels = np.repeat(np.arange(len(classes)), [len(r) for r in rows])
    return from_numpy(images, labels, classes, name=name)


def cifar_fs(
    root: str | Path | None = None,
    split: str = "train",
    *,
    download: bool = False,
    image_size=32,
    resample: str = "lanczos",
    split_dir: str | Path | None = None,
) -> ImageDataset:
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes, 600 images each (train + test
    pooled), uint8 ``(N, 3, 32, 32)``. Classes in the split list's order."""
    _check_split(split, "CIFAR-FS")
    path = Path(split_dir or _common.SPLITS_DIR / "cifar_fs") / f"{split}.txt"
    classes = _read_lines(path)
    data = load_cifar100(root, download)
    return _cifar_subset(data, classes, f"cifar-fs/{split}", image_hw(image_size), resample, path)


def fc100_split(split: str, split_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(superclass, class)`` pairs of an FC100 split, checked against the superclass list ``{split}.json``."""
    d = Path(split_dir or _common.SPLITS_DIR / "fc100")
    csv_path, json_path = d / f"{_check_split(split, 'FC100')}_classes.csv", d / f"{split}.json"
    for p in (csv_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"FC100 split file {p} not found")
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) != ["superclass", "class"]:
            raise ValueError(f"{csv_path}: expected the header 'superclass,class'")
        pairs = [(r[0], r[1]) for r in reader if r]
    supers = json.loads(json_path.read_text())
    if set(supers) != {s for s, _ in pairs}:
        raise ValueError(f"{csv_path} and {json_path} disagree on the superclasses of FC100 {split}")
    if len({c for _, c in pairs}) != len(pairs):
        raise ValueError(f"{csv_path} lists a class twice")
    return pairs


def fc100(
    root: str | Path | None = None,
    split: str = "train",
    *,
    download: bool = False,
    image_size=32,
    resample: str = "lanczos",
    split_dir: str | Path | None = None,
) -> ImageDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12 / 4 / 4 superclasses = 60 / 20 / 20
    classes, 600 images each (train + test pooled), uint8 ``(N, 3, 32, 32)``. Every class's superclass is
    checked against CIFAR-100's own coarse labels."""
    pairs = fc100_split(split, split_dir)
    data = load_cifar100(root, download)
    coarse_names, fine_names = data["coarse_names"], data["fine_names"]
    where = Path(split_dir or _common.SPLITS_DIR / "fc100") / f"{split}_classes.csv"
    for sup, c in pairs:
        if c not in fine_names:
            continue  # reported by _cifar_subset
        got = np.unique(data["coarse"][data["fine"] == fine_names.index(c)])
        if sup not in coarse_names or [coarse_names[i] for i in got] != [sup]:
            raise ValueError(
                f"{where}: class {c!r} is listed under superclass {sup!r} but CIFAR-100 puts it "
                f"under {[coarse_names[i] for i in got]}"
            )
    return _cifar_subset(data, [c for _, c in pairs], f"fc100/{split}", image_hw(image_size), resample, where)
