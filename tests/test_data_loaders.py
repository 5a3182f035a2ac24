"""Image folders, mini-ImageNet (pickle and image files), CIFAR-FS and FC100 on small fixtures written
in the real file formats, plus the shipped split lists."""

import csv
import hashlib
import importlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import SHARED, needs  # tests/shared_data.py

from innerloop.data import ChecksumError, EpisodicTasks, _common, cifar_fs, fc100, image_folder, mini_imagenet

cifar_module = importlib.import_module("innerloop.data.cifar")
mini_module = importlib.import_module("innerloop.data.mini_imagenet")  # innerloop.data.mini_imagenet is the loader
SPLITS = _common.SPLITS_DIR


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(_common.CACHE_ENV, str(tmp_path / "cache"))
    cifar_module._read_cifar100.cache_clear()


def save(path: Path, array: np.ndarray, fmt: str = "PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


# --------------------------------------------------------------------------- image folders
@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    pixels = {}
    for c, n in (("cat", 3), ("ant", 4), ("bee", 2)):
        for i in range(n):
            a = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            save(root / c / f"{i:03d}.png", a)
            pixels[(c, i)] = a
    (root / "ant" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    return root, pixels


def test_image_folder_rgb_exact(folder):
    root, pixels = folder
    ds = image_folder(root)
    assert ds.class_names == ["ant", "bee", "cat"]  # sorted, hidden folder skipped
    assert ds.images.shape == (9, 3, 10, 12) and ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    assert np.array_equal(ds.images[4].permute(1, 2, 0).numpy(), pixels[("bee", 0)])
    gray = image_folder(root, image_size=8, mode="L", classes=["cat", "bee"])
    assert gray.images.shape == (5, 1, 8, 8) and gray.class_names == ["cat", "bee"]
    want = np.asarray(Image.fromarray(pixels[("cat", 1)]).convert("L").resize((8, 8), Image.LANCZOS))
    assert np.array_equal(gray.images[1, 0].numpy(), want)
    b = EpisodicTasks(ds, 3, 1, 1).sample(0, range(2))
    assert b.support_x.shape == (2, 3, 3, 10, 12)


def test_image_folder_errors(folder, tmp_path):
    root, _ = folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    save(flat / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"no class folders in .*flat .*holds images directly"):
        image_folder(flat)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty contains no images"):
        image_folder(root)
    (root / "empty").rmdir()
    save(root / "cat" / "big.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match=r"big.png has size 20x20 .* image_size"):
        image_folder(root)
    assert image_folder(root, image_size=(6, 5)).images.shape == (10, 3, 6, 5)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image file .*cat/broken.jpg"):
        image_folder(root, image_size=6)
    with pytest.raises(ValueError, match="mode"):
        image_folder(root, mode="CMYK")
    with pytest.raises(ValueError, match="not found"):
        image_folder(root, classes=["dog"])


# --------------------------------------------------------------------------- mini-ImageNet
WNIDS = ["n02110341", "n01930112", "n04596742"]  # CSV order (deliberately not sorted)


@pytest.fixture
def mini(tmp_path):
    """Split CSVs with 3 classes x 4 images and the matching pickle + image files."""
    rng = np.random.default_rng(1)
    splits = tmp_path / "splits"
    splits.mkdir()
    rows = [(f"{w}{i:08d}.jpg", w) for w in WNIDS for i in (1, 5, 7, 9)]
    with open(splits / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *rows])
    images = rng.integers(0, 256, (12, 84, 84, 3), dtype=np.uint8)
    # the pickle stores classes in another order than the CSV and interleaves their images
    perm = rng.permutation(12)
    data = {"image_data": images[perm], "class_dict": {}}
    for w in sorted(WNIDS):
        data["class_dict"][w] = [int(np.nonzero(perm == WNIDS.index(w) * 4 + k)[0][0]) for k in range(4)]
    mdir = tmp_path / "data" / "mini-imagenet"
    mdir.mkdir(parents=True)
    with open(mdir / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump(data, f)
    return tmp_path / "data", splits, images, rows


def test_mini_imagenet_pickle(mini):
    root, splits, images, _ = mini
    ds = mini_imagenet(root, "train", split_dir=splits)
    assert ds.class_names == WNIDS and ds.images.shape == (12, 3, 84, 84)
    for c in range(3):
        assert np.array_equal(ds.images[ds.labels == c].permute(0, 2, 3, 1).numpy(), images[4 * c : 4 * c + 4])
    small = mini_imagenet(root, "train", image_size=32, split_dir=splits)
    want = np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.LANCZOS))
    assert np.array_equal(small.images[0].permute(1, 2, 0).numpy(), want)
    b = EpisodicTasks(ds, 3, 1, 2).sample(0, range(2))
    assert b.query_x.shape == (2, 6, 3, 84, 84)


def test_mini_imagenet_pickle_with_other_classes(mini):
    root, splits, _, _rows = mini
    with open(splits / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(("n09999999" + "00000001.jpg", "n09999999"))
    with pytest.raises(ValueError, match=r"does not hold the Ravi & Larochelle train classes: missing \['n09999999'\]"):
        mini_imagenet(root, "train", split_dir=splits)


@pytest.mark.parametrize("layout", ["images", "wnid"])
def test_mini_imagenet_image_files(mini, layout, tmp_path, monkeypatch):
    root, splits, images, rows = mini
    (root / "mini-imagenet" / "mini-imagenet-cache-train.pkl").unlink()
    for k, (fn, w) in enumerate(rows):
        save(root / "mini-imagenet" / ("images" if layout == "images" else w) / fn, images[k], "JPEG")
    ds = mini_imagenet(root, "train", split_dir=splits)
    assert ds.class_names == WNIDS and ds.images.shape == (12, 3, 84, 84)
    want = np.asarray(
        Image.open(root / "mini-imagenet" / ("images" if layout == "images" else rows[5][1]) / rows[5][0])
    )
    assert np.array_equal(ds.images[5].permute(1, 2, 0).numpy(), want)
    assert list((tmp_path / "cache" / "mini-imagenet").glob("train-84x84-*.npy"))
    monkeypatch.setattr(mini_module, "decode_files", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    assert torch.equal(mini_imagenet(root, "train", split_dir=splits).images, ds.images)


def test_mini_imagenet_missing(mini, tmp_path):
    root, splits, images, rows = mini
    with pytest.raises(FileNotFoundError, match=r"mini-imagenet-cache-val\.pkl"):
        (splits / "val.csv").write_text("filename,label\nn0111111100000001.jpg,n01111111\n")
        mini_imagenet(root, "val", split_dir=splits)
    (root / "mini-imagenet" / "mini-imagenet-cache-train.pkl").unlink()
    for fn, _w in rows[:-1]:
        save(root / "mini-imagenet" / "images" / fn, images[0], "JPEG")
    with pytest.raises(FileNotFoundError, match=r"1 of the 12 mini-ImageNet train images are missing"):
        mini_imagenet(root, "train", split_dir=splits)
    with pytest.raises(ValueError, match="unknown mini-ImageNet split"):
        mini_imagenet(root, "training")
    with pytest.raises(ValueError, match="source"):
        mini_imagenet(root, "train", source="hdf5")


# --------------------------------------------------------------------------- CIFAR-100 / CIFAR-FS / FC100
FINE = ["apple", "aquarium_fish", "bear", "beaver", "bed", "bee", "lion"]
COARSE = [
    "fruit_and_vegetables",
    "fish",
    "large_carnivores",
    "aquatic_mammals",
    "household_furniture",
    "insects",
    "large_carnivores",
]
COARSE_NAMES = sorted(set(COARSE))
PER_CLASS = {"train": 5, "test": 1}


def cifar_tar(path: Path):
    """A small cifar-100-python.tar.gz with the official pickle layout; returns (train, test) raw rows."""
    rng = np.random.default_rng(2)
    parts = {}
    for part, n in PER_CLASS.items():
        fine = np.repeat(np.arange(len(FINE)), n)
        order = rng.permutation(len(fine))  # the official files interleave classes
        fine = fine[order]
        parts[part] = {
            b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [COARSE_NAMES.index(COARSE[f]) for f in fine],
            b"filenames": [b"x.png"] * len(fine),
            b"batch_label": part.encode(),
        }
    meta = {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE_NAMES]}
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in (("train", parts["train"]), ("test", parts["test"]), ("meta", meta)):
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return parts


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    served = tmp_path / "server" / "cifar-100-python.tar.gz"
    served.parent.mkdir()
    parts = cifar_tar(served)
    monkeypatch.setattr(cifar_module, "CIFAR100", (served.as_uri(), hashlib.md5(served.read_bytes()).hexdigest()))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("bear\napple\nbee\n")
    (splits / "val.txt").write_text("lion\n")
    (splits / "train.json").write_text(json.dumps(["large_carnivores", "fish"]))
    (splits / "train_classes.csv").write_text(
        "superclass,class\nlarge_carnivores,bear\nlarge_carnivores,lion\nfish,aquarium_fish\n"
    )
    return tmp_path / "data", splits, parts


def test_cifar_fs_download_and_pooling(cifar):
    root, splits, parts = cifar
    with pytest.raises(FileNotFoundError, match=r"download=True .*cifar-100-python.tar.gz"):
        cifar_fs(root, "train", split_dir=splits)
    ds = cifar_fs(root, "train", download=True, split_dir=splits)
    assert (root / "cifar100" / "cifar-100-python.tar.gz").is_file()
    assert ds.class_names == ["bear", "apple", "bee"] and ds.images.shape == (18, 3, 32, 32)
    assert ds.class_counts().tolist() == [6, 6, 6]  # train + test pooled
    # pixel layout: a CIFAR row is the R, G, B planes, each 32x32 row-major; train images come first
    bear = FINE.index("bear")
    rows = [
        r for part in ("train", "test") for r, f in zip(parts[part][b"data"], parts[part][b"fine_labels"]) if f == bear
    ]
    got = ds.images[ds.labels == 0]
    for r, img in zip(rows, got):
        assert img[1, 3, 7] == r[1024 + 3 * 32 + 7] and np.array_equal(img.numpy().reshape(-1), r)
    assert cifar_fs(root, "val", split_dir=splits).class_names == ["lion"]
    big = cifar_fs(root, "train", split_dir=splits, image_size=40)
    assert big.images.shape == (18, 3, 40, 40)
    b = EpisodicTasks(ds, 3, 2, 4).sample(0, range(3))
    assert b.support_x.shape == (3, 6, 3, 32, 32)


def test_cifar_extracted_folder(cifar):
    root, splits, _ = cifar
    cdir = root / "cifar100"
    cdir.mkdir(parents=True)
    with tarfile.open(Path(cifar_module.CIFAR100[0][len("file://") :])) as tf:
        tf.extractall(cdir, filter="data")
    assert cifar_fs(root, "val", split_dir=splits).images.shape == (6, 3, 32, 32)


def test_cifar_checksum_mismatch(cifar, monkeypatch):
    root, splits, _ = cifar
    url, md5 = cifar_module.CIFAR100
    monkeypatch.setattr(cifar_module, "CIFAR100", (url, "f" * 32))
    with pytest.raises(ChecksumError, match=rf"cifar-100-python.tar.gz .*expected md5 f{{32}}, got {md5}.*Delete"):
        cifar_fs(root, "train", download=True, split_dir=splits)


def test_cifar_bad_split_lists(cifar):
    root, splits, _ = cifar
    (splits / "test.txt").write_text("bear\ndragon\n")
    with pytest.raises(ValueError, match=r"not CIFAR-100 fine classes: \['dragon'\]"):
        cifar_fs(root, "test", download=True, split_dir=splits)
    with pytest.raises(ValueError, match="unknown CIFAR-FS split"):
        cifar_fs(root, "validation", split_dir=splits)


def test_fc100(cifar):
    root, splits, _ = cifar
    ds = fc100(root, "train", download=True, split_dir=splits)
    assert ds.class_names == ["bear", "lion", "aquarium_fish"] and ds.class_counts().tolist() == [6, 6, 6]
    (splits / "train_classes.csv").write_text("superclass,class\nlarge_carnivores,bear\nfish,lion\n")
    (splits / "train.json").write_text(json.dumps(["large_carnivores", "fish"]))
    with pytest.raises(
        ValueError,
        match=r"'lion' is listed under superclass 'fish' but CIFAR-100 puts it under "
        r"\['large_carnivores'\]",
    ):
        fc100(root, "train", split_dir=splits)
    (splits / "train.json").write_text(json.dumps(["large_carnivores"]))
    with pytest.raises(ValueError, match="disagree on the superclasses"):
        fc100(root, "train", split_dir=splits)


# --------------------------------------------------------------------------- shipped split lists
def test_shipped_split_lists():
    mini = {s: mini_module.mini_imagenet_split(s) for s in ("train", "val", "test")}
    classes = {s: {w for _, w in rows} for s, rows in mini.items()}
    assert {s: len(c) for s, c in classes.items()} == {"train": 64, "val": 16, "test": 20}
    assert {s: len(r) for s, r in mini.items()} == {"train": 38400, "val": 9600, "test": 12000}
    assert len(classes["train"] | classes["val"] | classes["test"]) == 100
    assert all(fn.startswith(w) for rows in mini.values() for fn, w in rows)

    fs = {s: cifar_module._read_lines(SPLITS / "cifar_fs" / f"{s}.txt") for s in ("train", "val", "test")}
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20] and fs["train"][0] == "train"
    assert len(set(fs["train"]) | set(fs["val"]) | set(fs["test"])) == 100

    fc = {s: cifar_module.fc100_split(s) for s in ("train", "val", "test")}
    assert [len(fc[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    assert [len({sup for sup, _ in fc[s]}) for s in ("train", "val", "test")] == [12, 4, 4]
    assert len({c for s in fc.values() for _, c in s}) == 100
    assert {c for s in fc.values() for _, c in s} == set(fs["train"]) | set(fs["val"]) | set(fs["test"])
    for d in ("mini_imagenet", "cifar_fs", "fc100"):
        assert "MIT" in (SPLITS / d / "README.md").read_text()


@needs((SHARED / "splits").is_dir(), f"{SHARED / 'splits'} (the shared split lists)")
def test_shipped_split_files_are_the_published_ones():
    pairs = [
        (SPLITS / "mini_imagenet" / f"{s}.csv", SHARED / "splits" / "mini_imagenet_ravi" / f"{s}.csv")
        for s in ("train", "val", "test")
    ]
    pairs += [
        (SPLITS / "cifar_fs" / f"{s}.txt", SHARED / "splits" / "cifar_fs" / "txt" / f"{s}.txt")
        for s in ("train", "val", "test")
    ]
    pairs += [
        (SPLITS / "fc100" / f"{s}.json", SHARED / "splits" / "fc100" / f"{s}.json") for s in ("train", "val", "test")
    ]
    pairs += [
        (SPLITS / "fc100" / f"{s}_classes.csv", SHARED / "splits" / "fc100" / "derived" / f"{s}_classes.csv")
        for s in ("train", "val", "test")
    ]
    for ours, theirs in pairs:
        assert ours.read_bytes() == theirs.read_bytes(), ours
