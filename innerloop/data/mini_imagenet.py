"""mini-ImageNet (Ravi & Larochelle 2017): 64 / 16 / 20 classes x 600 images, 84x84, under ``<root>/mini-imagenet/``.

Read from the widely distributed ``mini-imagenet-cache-{split}.pkl`` files or from image files named as in the
split CSVs (``images/<filename>`` as in Ravi's release, or ``<wnid>/<filename>``). The split lists ship with the
package (``innerloop/data/splits``, with their licences); ``split_dir=`` points at other lists.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import _common
from ._common import (
    cache_dir,
    cached_array,
    check_split,
    data_root_origin,
    decode_files,
    file_stamps,
    image_hw,
    to_nchw,
)
from .dataset import ImageDataset, from_numpy

__all__ = ["mini_imagenet", "mini_imagenet_split"]


def mini_imagenet_split(split: str, split_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(filename, wnid)`` rows of Ravi & Larochelle's ``{split}.csv``."""
    path = Path(split_dir or _common.SPLITS_DIR / "mini_imagenet") / f"{check_split(split, 'mini-ImageNet')}.csv"
    rows = _common.read_csv(path, ("filename", "label"))
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
    check_split(split, "mini-ImageNet")
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
        return from_numpy(to_nchw(images), labels, order, name=f"mini-imagenet/{split}")

    paths = _mini_files(mdir, rows, origin, split)
    hw = hw or (84, 84)
    key = f"mini-imagenet-v1|{split}|{hw}|{resample}|" + file_stamps(paths)
    images = cached_array(
        cache_dir("mini-imagenet", mdir) if cache else None,
        f"{split}-{hw[0]}x{hw[1]}-{resample}",
        key,
        lambda: decode_files(paths, "RGB", hw, resample, num_workers),
    )
    index = {w: i for i, w in enumerate(order)}
    labels = np.array([index[w] for _, w in rows])
    return from_numpy(to_nchw(images), labels, order, name=f"mini-imagenet/{split}")


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
