"""Omniglot: the real prepared copy (splits, task classes, pixels) and the download/convert path on small
zips in the official layout."""

import hashlib
import importlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import SHARED, missing, needs  # tests/shared_data.py

from innerloop.data import ChecksumError, EpisodicTasks, _common, omniglot
from innerloop.data.omniglot import convert_omniglot, vinyals_split

omniglot_module = importlib.import_module("innerloop.data.omniglot")  # the package attribute is the function

REAL = SHARED / "omniglot"
needs_real = needs(
    (REAL / "background.npz").is_file() and (REAL / "evaluation.npz").is_file(), f"the prepared Omniglot copy at {REAL}"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(_common.CACHE_ENV, str(tmp_path / "cache"))


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def raw():
    """The prepared copy decoded independently of the library: name -> (20, 105, 105) uint8, 1 = ink."""
    out = {}
    for archive in ("background", "evaluation"):
        z = np.load(REAL / f"{archive}.npz")
        images = np.unpackbits(z["images_packed"], axis=-1, count=105)
        names = [f"{a}/{c}" for a, c in zip(z["alphabet"], z["character"])]
        for label, name in enumerate(names):
            out[name] = images[z["labels"] == label]
    return out


@pytest.fixture(scope="module")
def vinyals_105():
    if not (REAL / "background.npz").is_file():
        missing(f"the prepared Omniglot copy at {REAL}")
    return {s: omniglot(SHARED, f"vinyals-{s}", image_size=105) for s in ("train", "val", "test")}


@needs_real
def test_shipped_split_lists_are_the_published_ones():
    shipped = Path(omniglot_module.__file__).parent / "splits" / "omniglot_vinyals"
    for name in ("train", "val", "test", "trainval"):
        assert (shipped / f"{name}.txt").read_bytes() == (REAL / "splits_vinyals" / f"{name}.txt").read_bytes()
    assert "MIT" in (shipped / "README.md").read_text() and "Jake Snell" in (shipped / "README.md").read_text()


def test_vinyals_lists_counts_and_disjointness():
    chars = {s: vinyals_split(s) for s in ("train", "val", "test", "trainval")}
    assert {s: len(c) for s, c in chars.items()} == {"train": 1028, "val": 172, "test": 423, "trainval": 1200}
    assert all(r == (0, 90, 180, 270) for c in chars.values() for _, r in c)
    sets = {s: {n for n, _ in c} for s, c in chars.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["trainval"] == sets["train"] | sets["val"]
    assert len(sets["train"] | sets["val"] | sets["test"]) == 1623
    # val is all background alphabets, test all evaluation alphabets
    assert {omniglot_module._archive_of(c) for c in sets["val"]} == {"background"}
    assert {omniglot_module._archive_of(c) for c in sets["test"]} == {"evaluation"}


@needs_real
def test_real_splits_disjoint_with_rotations(vinyals_105):
    names = {s: set(d.class_names) for s, d in vinyals_105.items()}
    assert {s: len(n) for s, n in names.items()} == {"train": 1028, "val": 172, "test": 423}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    for s, d in vinyals_105.items():
        assert len(d) == 20 * d.num_classes and d.images.shape[1:] == (1, 105, 105)
        assert d.rotations == ((0, 90, 180, 270),) * d.num_classes
        assert EpisodicTasks(d, 5, 1, 15).num_classes == 4 * d.num_classes  # 4112 / 688 / 1692
        assert set(d.class_names) == {n for n, _ in vinyals_split(s)}


@needs_real
def test_training_tasks_only_use_training_classes(vinyals_105):
    train_chars = {n for n, _ in vinyals_split("train")}
    other = {n for s in ("val", "test") for n, _ in vinyals_split(s)}
    src = EpisodicTasks(vinyals_105["train"], 5, 1, 15, seed=0)
    classes = src.task_classes(0, range(32))
    for draw in range(1, 60):
        classes = torch.cat([classes, src.task_classes(draw, range(32))])
    sampled = [src.class_names[i] for i in classes.flatten().tolist()]
    chars = {n.rsplit("/", 1)[0] for n in sampled}
    assert chars <= train_chars and not chars & other
    assert len(chars) > 900  # 9600 draws of 4112 classes reach most characters
    assert {n.rsplit("/", 1)[1] for n in sampled} == {"rot000", "rot090", "rot180", "rot270"}


@needs_real
def test_sampled_pixels_are_the_characters_rotated(vinyals_105, raw):
    src = EpisodicTasks(vinyals_105["train"], 5, 2, 3, seed=4)
    b = src.sample(7, range(8))
    classes = src.task_classes(7, range(8))
    for t in range(8):
        x = torch.cat([b.support_x[t].view(5, 2, 105, 105), b.query_x[t].view(5, 3, 105, 105)], 1)
        for w in range(5):
            char, rot = src.class_names[int(classes[t, w])].rsplit("/", 1)
            k = int(rot[3:]) // 90
            drawings = [np.rot90(d, k) for d in raw[char]]  # np.rot90: counter-clockwise, as PIL rotate
            used = []
            for i in range(5):
                img = x[w, i].numpy().astype(np.uint8)
                match = [j for j, d in enumerate(drawings) if np.array_equal(img, d)]
                assert match, f"task {t}: image {i} of {char}/{rot} is not a drawing of that character so rotated"
                used.append(match[0])
            assert len(set(used)) == 5  # support and query are different drawings


@needs_real
def test_lake_splits_counts():
    bg = omniglot(SHARED, "background", image_size=105)
    assert bg.num_classes == 964 and len(bg) == 19280 and bg.rotations is None
    assert bg.class_names[0] == "Alphabet_of_the_Magi/character01"
    assert bool(((bg.images == 0) | (bg.images == 255)).all()) and int(bg.images.max()) == 255


@needs_real
def test_resized_images_and_cache(raw, tmp_path, monkeypatch):
    val = omniglot(SHARED, "vinyals-val")  # 28x28 lanczos, cached in the private cache folder
    assert val.images.shape == (3440, 1, 28, 28) and val.images.dtype == torch.uint8
    cached = list((tmp_path / "cache" / "omniglot").glob("vinyals-val-28x28-lanczos-*.npy"))
    assert len(cached) == 1
    for c in (0, 100):
        name = val.class_names[c]
        want = np.stack([np.asarray(Image.fromarray(d * 255).resize((28, 28), Image.LANCZOS)) for d in raw[name]])
        assert np.array_equal(val.images[val.labels == c, 0].numpy(), want)
    # nearest == what MAML / ProtoNets got from Pillow on the mode "1" PNGs (binary images)
    near = omniglot(SHARED, "vinyals-val", resample="nearest")
    name = near.class_names[5]
    want = np.stack([~np.asarray(Image.fromarray(d == 0).resize((28, 28), Image.LANCZOS)) for d in raw[name]])
    assert np.array_equal(near.images[near.labels == 5, 0].numpy() == 255, want)
    # the second load comes from the cache: resizing is not done again
    monkeypatch.setattr(_common, "resize_uint8", lambda *a, **k: pytest.fail("resized again despite the cache"))
    assert torch.equal(omniglot(SHARED, "vinyals-val").images, val.images)


@needs_real
def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(_common.DATA_ENV, str(SHARED))
    assert _common.data_root() == SHARED
    assert omniglot(None, "vinyals-val", image_size=105).num_classes == 172
    monkeypatch.setenv(_common.DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=True"):
        omniglot(None, "vinyals-val")
    monkeypatch.delenv(_common.DATA_ENV)
    assert _common.data_root() == SHARED  # ../shared/data next to the repository
    assert _common.data_root(tmp_path) == tmp_path


# --------------------------------------------------------------------------- download / convert (fixtures)
FIXTURE = {  # alphabet -> number of characters; real names so that the Vinyals lookups work
    "background": {"Greek": 2, "Latin": 3},
    "evaluation": {"Angelic": 2},
}
DRAWINGS = 4


def make_zip(path: Path, archive: str, seed: int = 0, corrupt: str | None = None):
    """A small zip in the official layout, with its ink arrays (alphabet/characterNN -> (DRAWINGS, 105, 105))."""
    rng = np.random.default_rng(seed)
    ink = {}
    cid = 1 if archive == "background" else 900
    with zipfile.ZipFile(path, "w") as zf:
        for alphabet, n in FIXTURE[archive].items():
            for c in range(1, n + 1):
                drawings = rng.random((DRAWINGS, 105, 105)) < 0.1
                ink[f"{alphabet}/character{c:02d}"] = drawings
                for d in range(DRAWINGS):
                    buf = io.BytesIO()
                    Image.fromarray(~drawings[d]).save(buf, format="PNG")  # mode "1", ink is black (False)
                    name = f"images_{archive}/{alphabet}/character{c:02d}/{cid:04d}_{d + 1:02d}.png"
                    zf.writestr(name, b"not a png" if name == corrupt else buf.getvalue())
                cid += 1
    return ink


@pytest.fixture
def official(tmp_path, monkeypatch):
    """Official-layout zips served from file:// URLs; ARCHIVES points at them with their md5."""
    served = tmp_path / "server"
    served.mkdir()
    inks, archives = {}, {}
    for i, archive in enumerate(("background", "evaluation")):
        z = served / f"images_{archive}.zip"
        inks[archive] = make_zip(z, archive, seed=i)
        archives[archive] = (z.as_uri(), hashlib.md5(z.read_bytes()).hexdigest())
    monkeypatch.setattr(omniglot_module, "ARCHIVES", archives)
    return tmp_path / "data", inks


def test_download_convert_and_load(official):
    root, inks = official
    with pytest.raises(FileNotFoundError, match=r"download=True.*images_background.zip"):
        omniglot(root, "background")
    ds = omniglot(root, "background", image_size=105, download=True)
    odir = root / "omniglot"
    assert (odir / "images_background.zip").is_file() and (odir / "background.npz").is_file()
    assert not (odir / "evaluation.npz").exists()  # only what the split needs
    assert ds.class_names == [
        "Greek/character01",
        "Greek/character02",
        "Latin/character01",
        "Latin/character02",
        "Latin/character03",
    ]
    for c, name in enumerate(ds.class_names):
        assert np.array_equal(ds.images[ds.labels == c, 0].numpy(), inks["background"][name].astype(np.uint8) * 255)
    # the cache has the format of the prepared shared copy
    z = np.load(odir / "background.npz")
    assert z["images_packed"].shape == (5 * DRAWINGS, 105, 14) and z["images_packed"].dtype == np.uint8
    assert list(z["image_shape"]) == [5 * DRAWINGS, 105, 105]
    assert z["omniglot_id"].tolist() == [1, 2, 3, 4, 5] and z["drawing"].tolist()[:5] == [1, 2, 3, 4, 1]
    assert z["labels"].dtype == np.int32 and z["drawing"].dtype == np.int8 and z["omniglot_id"].dtype == np.int16
    unpacked = np.unpackbits(z["images_packed"], axis=-1, count=105)
    assert np.array_equal(unpacked[:DRAWINGS], inks["background"]["Greek/character01"])
    if (REAL / "background.npz").is_file():
        assert set(np.load(REAL / "background.npz").files) == set(z.files)
    # later loads use the prepared file, no download or zip needed
    (odir / "images_background.zip").unlink()
    assert torch.equal(omniglot(root, "background", image_size=105).images, ds.images)


def test_image_size_none_keeps_the_original_size(official):
    # None means "as stored" in every loader; omniglot used to fail on it with a TypeError
    root, _ = official
    ds = omniglot(root, "background", image_size=None, download=True)
    assert torch.equal(ds.images, omniglot(root, "background", image_size=105).images)


def test_resize_is_cached_per_size(official, tmp_path, monkeypatch):
    root, inks = official
    small = omniglot(root, "background", image_size=28, download=True)
    other = omniglot(root, "background", image_size=(14, 21))
    assert small.images.shape == (20, 1, 28, 28) and other.images.shape == (20, 1, 14, 21)
    want = np.asarray(
        Image.fromarray(inks["background"]["Greek/character01"][0].astype(np.uint8) * 255).resize(
            (28, 28), Image.LANCZOS
        )
    )
    assert np.array_equal(small.images[0, 0].numpy(), want)
    assert len(list((tmp_path / "cache" / "omniglot").glob("background-*.npy"))) == 2
    monkeypatch.setattr(_common, "resize_uint8", lambda *a, **k: pytest.fail("resized again despite the cache"))
    assert torch.equal(omniglot(root, "background", image_size=28).images, small.images)


def test_vinyals_style_split_on_fixture(official, tmp_path):
    root, inks = official
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("Latin/character02/rot000\nLatin/character02/rot180\nAngelic/character01/rot090\n")
    ds = omniglot(root, "vinyals-train", image_size=105, download=True, split_dir=lists)
    assert ds.class_names == ["Latin/character02", "Angelic/character01"]
    assert ds.rotations == ((0, 180), (90,))
    assert np.array_equal(ds.images[ds.labels == 1, 0].numpy(), inks["evaluation"]["Angelic/character01"] * 255)
    src = EpisodicTasks(ds, 2, 1, 1)
    assert src.class_names == ["Latin/character02/rot000", "Latin/character02/rot180", "Angelic/character01/rot090"]
    (lists / "val.txt").write_text("Latin/character02/rot045\n")
    with pytest.raises(ValueError, match=r"val.txt:1: expected"):
        omniglot(root, "vinyals-val", split_dir=lists)
    (lists / "test.txt").write_text("Greek/character09/rot000\n")
    with pytest.raises(ValueError, match=r"Greek/character09 .* not in"):
        omniglot(root, "vinyals-test", split_dir=lists, download=True)


def test_checksum_mismatch(official, monkeypatch):
    root, _ = official
    url, md5 = omniglot_module.ARCHIVES["background"]
    monkeypatch.setitem(omniglot_module.ARCHIVES, "background", (url, "0" * 32))
    with pytest.raises(ChecksumError) as err:
        omniglot(root, "background", download=True)
    msg = str(err.value)
    zpath = root / "omniglot" / "images_background.zip"
    assert "images_background.zip" in msg and "expected md5 " + "0" * 32 in msg and f"got {md5}" in msg
    assert f"Delete {zpath}" in msg and "retry" in msg
    assert not (root / "omniglot" / "background.npz").exists()
    # a zip put there by hand is checked too, and accepted when right
    monkeypatch.setitem(omniglot_module.ARCHIVES, "background", (url, md5))
    assert omniglot(root, "background", image_size=105).num_classes == 5


def test_failed_download_names_the_url(official, monkeypatch):
    root, _ = official
    missing = (root.parent / "server" / "nothing.zip").as_uri()
    monkeypatch.setitem(omniglot_module.ARCHIVES, "background", (missing, "0" * 32))
    with pytest.raises(OSError, match=r"nothing\.zip"):
        omniglot(root, "background", download=True)
    assert not list((root / "omniglot").glob("*.zip*"))  # no partial file left


def test_unzipped_folder_and_bad_files(official, tmp_path):
    root, inks = official
    odir = root / "omniglot"
    odir.mkdir(parents=True)
    with zipfile.ZipFile(Path(omniglot_module.ARCHIVES["evaluation"][0][len("file://") :])) as zf:
        zf.extractall(odir)
    ds = omniglot(root, "evaluation", image_size=105)
    assert ds.class_names == ["Angelic/character01", "Angelic/character02"]
    assert np.array_equal(ds.images[ds.labels == 1, 0].numpy(), inks["evaluation"]["Angelic/character02"] * 255)

    bad = tmp_path / "bad.zip"
    make_zip(bad, "background", corrupt="images_background/Latin/character02/0004_03.png")
    with pytest.raises(ValueError, match=r"cannot read Omniglot image .*Latin/character02/0004_03.png"):
        convert_omniglot(bad, tmp_path / "out.npz")
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a valid zip"):
        convert_omniglot(tmp_path / "junk.zip", tmp_path / "out.npz")
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as zf:
        zf.writestr("images_background/Latin/img.png", b"")
    with pytest.raises(ValueError, match=r"expected <Alphabet>/characterNN/NNNN_DD\.png"):
        convert_omniglot(tmp_path / "flat.zip", tmp_path / "out.npz")


def test_bad_arguments(official):
    root, _ = official
    with pytest.raises(ValueError, match="unknown Omniglot split"):
        omniglot(root, "train")
    with pytest.raises(ValueError, match="image_size"):
        omniglot(root, "background", image_size=0)
    with pytest.raises(ValueError, match="resample"):
        omniglot(root, "background", resample="cubic")
