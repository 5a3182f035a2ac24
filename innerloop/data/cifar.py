"""CIFAR-100 and its few-shot splits, from the official ``cifar-100-python.tar.gz`` under ``<root>/cifar100/``.

* ``cifar_fs(root, split)``: CIFAR-FS (Bertinetto et al. 2019), 64 / 16 / 20 classes;
* ``fc100(root, split)``: FC100 (Oreshkin et al. 2018), 12 / 4 / 4 superclasses = 60 / 20 / 20 classes.

Both pool CIFAR-100's train and test images (600 per class); the archive is md5-checked and
``download=True`` fetches it. The split lists ship with the package (``innerloop/data/splits``).
"""

from __future__ import annotations

import functools
import json
import pickle
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DatasetError
from . import _common
from ._common import check_split, data_root_origin, image_hw, to_nchw
from .dataset import ImageDataset, from_numpy

__all__ = ["CIFAR100", "cifar_fs", "fc100", "fc100_split", "load_cifar100"]

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
        images = to_nchw(_common.resize_uint8(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), hw, resample))
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
    check_split(split, "CIFAR-FS")
    path = Path(split_dir or _common.SPLITS_DIR / "cifar_fs") / f"{split}.txt"
    classes = _read_lines(path)
    data = load_cifar100(root, download)
    return _cifar_subset(data, classes, f"cifar-fs/{split}", image_hw(image_size), resample, path)


def fc100_split(split: str, split_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """``(superclass, class)`` pairs of an FC100 split, checked against the superclass list ``{split}.json``."""
    d = Path(split_dir or _common.SPLITS_DIR / "fc100")
    csv_path, json_path = d / f"{check_split(split, 'FC100')}_classes.csv", d / f"{split}.json"
    for p in (csv_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"FC100 split file {p} not found")
    pairs = _common.read_csv(csv_path, ("superclass", "class"))
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
