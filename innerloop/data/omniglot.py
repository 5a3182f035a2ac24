"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, 20 drawings each.

``omniglot(root, split, image_size=28)`` returns an ``ImageDataset`` of uint8 images
``(N, 1, H, W)`` with 255 = ink (so 1 = ink once ``EpisodicTasks`` scales to ``[0, 1]``).

Splits:

* ``"background"`` (964 characters, 30 alphabets) and ``"evaluation"`` (659 characters,
  20 alphabets): Lake et al.'s two archives, no rotations.
* ``"vinyals-train"`` (1028 characters), ``"vinyals-val"`` (172), ``"vinyals-test"`` (423),
  ``"vinyals-trainval"`` (1200): the character split of Vinyals et al. (2016) as distributed with
  prototypical networks (Snell et al. 2017), which lists every character under rotations 0, 90,
  180 and 270 degrees. The dataset holds the characters once (``class_names`` like
  ``"Angelic/character01"``) and declares the rotations in ``.rotations``; ``EpisodicTasks``
  then uses each (character, rotation) as its own class (4112 / 688 / 1692 / 4800 classes).
  The lists ship with the package (``innerloop/data/splits/omniglot_vinyals``).

Files (where they are looked for, their formats) and resizing (``resample="nearest"``
reproduces MAML's and ProtoNets' binary 28x28 pixels): docs/data.md.
"""

from __future__ import annotations

import io
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DatasetError, DatasetFormatError
from . import _common
from ._common import ChecksumError, cache_dir, cached_array, data_root_origin, download_verified, file_digest
from .dataset import ImageDataset, from_numpy

__all__ = ["ARCHIVES", "SPLITS", "ChecksumError", "convert_omniglot", "download_omniglot", "omniglot", "vinyals_split"]

ARCHIVES = {
    "background": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
        "68d2efa1b9178cc56df9314c21c6e718",
    ),
    "evaluation": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
        "6b91aef0f799c5bb55b94e3f2daec811",
    ),
}
SPLITS = ("background", "evaluation", "vinyals-train", "vinyals-val", "vinyals-test", "vinyals-trainval")
SIZE = 105
FORMAT = (
    "images_packed = np.packbits(ink, axis=-1) of uint8 ink(1)/background(0) images; "
    f"recover with np.unpackbits(images_packed, axis=-1, count={SIZE})"
)

BACKGROUND_ALPHABETS = frozenset(
    (
        "Alphabet_of_the_Magi",
        "Anglo-Saxon_Futhorc",
        "Arcadian",
        "Armenian",
        "Asomtavruli_(Georgian)",
        "Balinese",
        "Bengali",
        "Blackfoot_(Canadian_Aboriginal_Syllabics)",
        "Braille",
        "Burmese_(Myanmar)",
        "Cyrillic",
        "Early_Aramaic",
        "Futurama",
        "Grantha",
        "Greek",
        "Gujarati",
        "Hebrew",
        "Inuktitut_(Canadian_Aboriginal_Syllabics)",
        "Japanese_(hiragana)",
        "Japanese_(katakana)",
        "Korean",
        "Latin",
        "Malay_(Jawi_-_Arabic)",
        "Mkhedruli_(Georgian)",
        "N_Ko",
        "Ojibwe_(Canadian_Aboriginal_Syllabics)",
        "Sanskrit",
        "Syriac_(Estrangelo)",
        "Tagalog",
        "Tifinagh",
    )
)
EVALUATION_ALPHABETS = frozenset(
    (
        "Angelic",
        "Atemayar_Qelisayer",
        "Atlantean",
        "Aurek-Besh",
        "Avesta",
        "Ge_ez",
        "Glagolitic",
        "Gurmukhi",
        "Kannada",
        "Keble",
        "Malayalam",
        "Manipuri",
        "Mongolian",
        "Old_Church_Slavonic_(Cyrillic)",
        "Oriya",
        "Sylheti",
        "Syriac_(Serto)",
        "Tengwar",
        "Tibetan",
        "ULOG",
    )
)

_LINE = re.compile(r"([^/\s]+)/(character\d+)/rot(\d{3})")
_FILE = re.compile(r"(\d+)_(\d+)\.png")
_CHAR = re.compile(r"character(\d+)")


# --------------------------------------------------------------------------- split lists
def vinyals_split(split: str, split_dir: str | Path | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The characters of a Vinyals split (``"train"``, ``"val"``, ``"test"``, ``"trainval"``, with or
    without the ``vinyals-`` prefix) in list order, each with its rotation angles:
    ``[("Angelic/character01", (0, 90, 180, 270)), ...]``."""
    name = split.removeprefix("vinyals-")
    path = Path(split_dir or _common.SPLITS_DIR / "omniglot_vinyals") / f"{name}.txt"
    if not path.is_file():
        raise DatasetError(f"Omniglot split list {path} not found (splits: train, val, test, trainval)")
    chars: dict[str, list[int]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if not m or int(m[3]) not in (0, 90, 180, 270):
            raise DatasetFormatError(
                f"{path}:{n}: expected 'Alphabet/characterNN/rotDDD' with DDD in 000/090/180/270, got {line!r}"
            )
        angles = chars.setdefault(f"{m[1]}/{m[2]}", [])
        if int(m[3]) in angles:
            raise DatasetFormatError(f"{path}:{n}: {line!r} is listed twice")
        angles.append(int(m[3]))
    if not chars:
        raise DatasetFormatError(f"Omniglot split list {path} is empty")
    return [(c, tuple(a)) for c, a in chars.items()]


def _archive_of(character: str) -> str:
    alphabet = character.split("/")[0]
    if alphabet in BACKGROUND_ALPHABETS:
        return "background"
    if alphabet in EVALUATION_ALPHABETS:
        return "evaluation"
    raise DatasetFormatError(f"unknown Omniglot alphabet {alphabet!r} (in {character!r})")


# --------------------------------------------------------------------------- conversion from the official zips
def _decode_ink(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (SIZE, SIZE):
                raise DatasetFormatError(
                    f"Omniglot image {name} is {img.size[0]}x{img.size[1]}, expected {SIZE}x{SIZE}"
                )
            if img.mode == "1":
                return ~np.asarray(img)  # mode "1": True = white background, ink is black
            return np.asarray(img.convert("L")) < 128
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DatasetFormatError(f"cannot read Omniglot image {name}: {e}") from None


def convert_omniglot(source: str | Path, out: str | Path) -> Path:
    """Decode an official archive (``images_background.zip`` or its unzipped folder; layout
    ``images_background/<Alphabet>/<characterNN>/NNNN_DD.png``) once into the packed ``.npz``
    format. Classes are ordered by alphabet (``sorted``), character number, drawing."""
    source, out = Path(source), Path(out)
    records = []  # (alphabet, character number, drawing, omniglot id, member name)
    members: list[tuple[str, str | Path]]
    if source.is_dir():
        members = [(p.relative_to(source).as_posix(), p) for p in source.rglob("*.png")]
    else:
        try:
            zf = zipfile.ZipFile(source)
        except zipfile.BadZipFile as e:
            raise DatasetFormatError(
                f"{source} is not a valid zip file ({e}); delete it and retry (task.download=true; download=True in Python)"
            ) from None
        members = [(n, n) for n in zf.namelist() if n.endswith(".png")]
    for rel, handle in members:
        parts = PurePosixPath(rel).parts
        if len(parts) < 3 or any(p.startswith((".", "__MACOSX")) for p in parts):
            continue
        alphabet, character, file = parts[-3:]
        mc, mf = _CHAR.fullmatch(character), _FILE.fullmatch(file)
        if not mc or not mf:
            raise DatasetFormatError(f"unexpected file {rel} in {source}: expected <Alphabet>/characterNN/NNNN_DD.png")
        records.append((alphabet, int(mc[1]), int(mf[2]), int(mf[1]), character, handle))
    if not records:
        raise DatasetFormatError(f"no <Alphabet>/<characterNN>/NNNN_DD.png images found in {source}")
    records.sort(key=lambda r: (r[0], r[1], r[2]))

    if source.is_dir():
        blobs = [Path(r[5]).read_bytes() for r in records]
    else:
        with zf:
            blobs = [zf.read(str(r[5])) for r in records]
    ink = np.empty((len(records), SIZE, SIZE), bool)

    def work(bounds):
        for i in range(*bounds):
            ink[i] = _decode_ink(blobs[i], f"{source}/{records[i][5]}" if not source.is_dir() else str(records[i][5]))

    with ThreadPoolExecutor(_common.default_workers()) as ex:
        list(ex.map(work, [(a, min(a + 1024, len(records))) for a in range(0, len(records), 1024)]))

    keys = [(r[0], r[1]) for r in records]
    class_keys = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(class_keys)}
    labels = np.array([index[k] for k in keys], np.int32)
    ids = np.zeros(len(class_keys), np.int16)
    names = {}
    for (alphabet, _num, _drawing, oid, character, _), label in zip(records, labels):
        if ids[label] and ids[label] != oid:
            raise DatasetFormatError(f"{source}: {alphabet}/{character} mixes character ids {ids[label]} and {oid}")
        ids[label] = oid
        names[label] = (alphabet, character)
    _common.save_npz_atomic(
        out,
        images_packed=np.packbits(ink.view(np.uint8), axis=-1),
        image_shape=np.array(ink.shape, np.int64),
        labels=labels,
        alphabet=np.array([names[i][0] for i in range(len(class_keys))]),
        character=np.array([names[i][1] for i in range(len(class_keys))]),
        omniglot_id=ids,
        drawing=np.array([r[2] for r in records], np.int8),
        format=np.array(FORMAT),
    )
    return out


def _prepared(odir: Path, archive: str, download: bool, origin: str) -> Path:
    """``<odir>/<archive>.npz``, converting it from the official zip (downloaded if asked) when missing."""
    npz = odir / f"{archive}.npz"
    if npz.exists():
        return npz
    url, md5 = ARCHIVES[archive]
    folder, zpath = odir / f"images_{archive}", odir / f"images_{archive}.zip"
    if folder.is_dir():
        source = folder
    elif zpath.exists() or download:
        try:
            source = download_verified(url, zpath, md5)
        except PermissionError as e:
            raise PermissionError(
                f"cannot write Omniglot to {odir} ({e}); set task.root=... (root=... in Python) or "
                f"${_common.DATA_ENV} to a writable folder"
            ) from None
    else:
        raise DatasetError(
            f"Omniglot '{archive}' is not in {odir} (data root from {origin}): looked for {npz.name} (prepared), "
            f"{zpath.name} (official archive) and {folder.name}/ (unzipped). Set task.download=true (download=True "
            f"in Python) to fetch {url} (md5 {md5}), or put that zip (or its unzipped folder) in {odir}, or point "
            f"task.root=... (root=...) or ${_common.DATA_ENV} at a data folder that contains omniglot/."
        )
    try:
        return convert_omniglot(source, npz)
    except PermissionError as e:
        raise PermissionError(
            f"cannot write {npz} ({e}); set task.root=... (root=... in Python) or ${_common.DATA_ENV} "
            "to a writable folder"
        ) from None


def download_omniglot(root: str | Path | None = None, archives=("background", "evaluation")) -> Path:
    """Fetch (md5-checked) and convert the official archives; returns ``<root>/omniglot``."""
    data_dir, origin = data_root_origin(root)
    odir = data_dir / "omniglot"
    for archive in archives:
        if archive not in ARCHIVES:
            raise ValueError(f"unknown Omniglot archive {archive!r}; choose from {tuple(ARCHIVES)}")
        _prepared(odir, archive, True, origin)
    return odir


# --------------------------------------------------------------------------- loading
class _Archive:
    """Class names and row indices of a packed archive; the images are read when needed."""

    def __init__(self, path: Path):
        self.path = path
        with np.load(path) as z:
            missing = {"images_packed", "labels", "alphabet", "character"} - set(z.files)
            if missing:
                raise DatasetFormatError(
                    f"{path} is not a packed Omniglot archive (missing {sorted(missing)}); delete it to rebuild it"
                )
            self.names = [f"{a}/{c}" for a, c in zip(z["alphabet"].tolist(), z["character"].tolist())]
            labels = z["labels"].astype(np.int64)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(self.names) + 1))
        self.rows = {n: order[bounds[i] : bounds[i + 1]] for i, n in enumerate(self.names)}

    def packed(self) -> np.ndarray:
        with np.load(self.path) as z:
            return z["images_packed"]


def omniglot(
    root: str | Path | None,
    split: str,
    image_size=28,
    *,
    download: bool = False,
    resample: str = "lanczos",
    cache: bool = True,
    split_dir: str | Path | None = None,
) -> ImageDataset:
    """Omniglot ``split`` as an ``ImageDataset`` (uint8 ``(N, 1, H, W)``, 255 = ink).

    Args:
        root: data root (``None``: ``$INNERLOOP_DATA``, ``../shared/data``, ``~/.cache/innerloop``).
        split: one of ``SPLITS``.
        image_size: int or ``(H, W)``; 105 (or ``None``) keeps the original images.
        download: fetch the official zips (checksum-verified) when they are missing.
        resample: Pillow filter for resizing (``"lanczos"``, ..., ``"nearest"`` for the binary
            images of MAML / prototypical networks).
        cache: keep resized images in a cache folder for the next load.
        split_dir: folder with ``train.txt`` ... to use instead of the shipped Vinyals lists.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; choose from {SPLITS}")
    hw = _common.image_hw(image_size) or (SIZE, SIZE)  # None keeps the original size, as in the other loaders
    _common.pil_resample(resample)
    data_dir, origin = data_root_origin(root)
    odir = data_dir / "omniglot"

    if split in ARCHIVES:
        archives = {split: _Archive(_prepared(odir, split, download, origin))}
        wanted = [(n, split) for n in archives[split].names]
        rotations = None
        list_key = split
    else:
        chars = vinyals_split(split, split_dir)
        wanted = [(c, _archive_of(c)) for c, _ in chars]
        archives = {a: _Archive(_prepared(odir, a, download, origin)) for a in dict.fromkeys(a for _, a in wanted)}
        rotations = tuple(r for _, r in chars)
        list_key = repr(chars)
    for name, a in wanted:
        if name not in archives[a].rows:
            raise DatasetFormatError(
                f"character {name} of split {split!r} is not in {archives[a].path}; the file is "
                "incomplete or not Omniglot: delete it to rebuild it from the official zip"
            )

    counts = np.array([len(archives[a].rows[n]) for n, a in wanted])
    labels = np.repeat(np.arange(len(wanted)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)])

    def build() -> np.ndarray:
        out = np.empty((int(counts.sum()), *hw), np.uint8)
        for a, arc in archives.items():
            ks = [k for k, (_, ak) in enumerate(wanted) if ak == a]
            src = np.concatenate([arc.rows[wanted[k][0]] for k in ks])
            dst = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in ks])
            packed = arc.packed()
            for lo in range(0, len(src), 4096):
                ink = np.unpackbits(packed[src[lo : lo + 4096]], axis=-1, count=SIZE)
                ink *= 255
                out[dst[lo : lo + 4096]] = _common.resize_uint8(ink, hw, resample)
        return out

    if hw == (SIZE, SIZE):
        images = build()
    else:
        key = f"omniglot-v1|{split}|{list_key}|{hw}|{resample}|" + file_digest(*(a.path for a in archives.values()))
        images = cached_array(
            cache_dir("omniglot", odir) if cache else None, f"{split}-{hw[0]}x{hw[1]}-{resample}", key, build
        )
    return from_numpy(
        images[:, None], labels, [n for n, _ in wanted], rotations=rotations, name=f"omniglot/{split} {hw[0]}x{hw[1]}"
    )
