"""Your own images through the CLI: either folder layout, optional splits, channels and size from the
data, rotations as classes, a decode cache, and `innerloop eval RUN --episodes FILE`."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py
from PIL import Image

from innerloop.data import folders, image_folder
from innerloop.data.folders import split_classes
from innerloop.tasks.batch import TaskBatch
from innerloop.training import builders
from innerloop.training.builders import build_model, build_tasks, learner_from_checkpoint
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = [
    "task.ways=2",
    "task.shots=1",
    "task.queries=1",
    "eval.ways=2",
    "eval.shots=[1]",
    "eval.queries=1",
    "eval.tasks=4",
    "eval.batch_size=2",
    "train.iterations=2",
    "train.meta_batch_size=2",
    "train.val_every=1",
    "train.val_tasks=2",
    "train.checkpoint_every=2",
    "train.progress=false",
    "model.filters=8",
]


def make_tree(root: Path, classes: int = 6, images: int = 4, size=(16, 16), rgb: bool = False, seed: int = 0) -> Path:
    """``root/c<k>/<i>.png``: random grayscale (or colour) images, distinct in every class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(images):
            shape = (*size, 3) if rgb else size
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return root


def readme_yaml() -> str:
    data = README.read_text().split("## Data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", data, re.S).group(1)


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """A private decode cache and no dataset kept in memory from another test."""
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    builders._folder_split.cache_clear()
    builders._load_folder.cache_clear()
    yield
    builders._folder_split.cache_clear()
    builders._load_folder.cache_clear()


def folder_config(root, *overrides):
    return load_config(
        None,
        [
            "algorithm.name=protonets",
            "model.name=conv4",
            "model.filters=8",
            "task.name=image_folder",
            f"task.root={root}",
            "task.ways=2",
            "task.shots=1",
            "task.queries=1",
            "task.split_fractions=[1,0,0]",
            *overrides,
        ],
    )


def test_readme_config_trains_on_a_flat_folder(tmp_path, monkeypatch, capsys):
    """The README's complete YAML, on root/<class>/<image>, trains ProtoNets through the CLI (2 iterations)."""
    root = make_tree(tmp_path / "flat")
    config = tmp_path / "my-folder.yaml"
    config.write_text(readme_yaml())
    cfg = load_config(str(config), [f"task.root={root}"])  # the README's config loads as written
    assert cfg.task.name == "image_folder" and cfg.task.rotations == [0, 90, 180, 270] and cfg.task.invert
    run = tmp_path / "run"
    code, _out, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        config,
        f"task.root={root}",
        "task.image_size=16",
        "task.split_fractions=[0.34,0.33,0.33]",
        *SMALL,
        "--out",
        run,
    )
    assert code == 0, err
    assert (run / "eval.json").exists() and (run / "episode.png").exists()
    assert any(json.loads(line).get("split") == "val" for line in (run / "metrics.jsonl").read_text().splitlines())
    weights = load_checkpoint(run).weights
    first = next(v for k, v in weights.items() if v.dim() == 4)
    assert first.shape[1] == 1  # grayscale folder: a 1-channel Conv-4


def test_split_folders_without_val_and_test(tmp_path, monkeypatch, capsys, caplog):
    """root/train/<class>/<image> alone: no validation, no final evaluation, no episode.png, each with a note."""
    root = tmp_path / "mine"
    make_tree(root / "train")
    run = tmp_path / "run"
    code, _out, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "task.name=image_folder",
        f"task.root={root}",
        "task.image_size=null",
        *SMALL,
        "--out",
        run,
    )
    assert code == 0, err
    notes = err + caplog.text
    assert "has no val/ folder" in notes and "no validation" in notes
    assert "has no test/ folder: no end-of-training evaluation and no episode.png" in notes
    assert not (run / "episode.png").exists() and not (run / "eval.json").exists()
    assert (run / "checkpoints").is_dir()
    assert all(json.loads(line).get("split") != "val" for line in (run / "metrics.jsonl").read_text().splitlines())
    # evaluating that run names the missing split in one line
    code, _, err = cli(monkeypatch, capsys, "eval", run)
    assert code == 2 and "has no test/ folder, so there are no test tasks" in err and "Traceback" not in err
    # a root holding split folders and class folders is refused in one line
    make_tree(root / "extra", classes=1)
    builders._folder_split.cache_clear()
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "task.name=image_folder",
        f"task.root={root}",
        *SMALL,
        "--out",
        tmp_path / "run2",
    )
    assert code == 2 and "is ambiguous: it holds split folders ['train'] but also other folders ['extra']" in err
    assert len(err.strip().splitlines()) == 1


def test_channels_and_size_follow_the_data(tmp_path):
    gray = make_tree(tmp_path / "gray", size=(20, 20))
    cfg = folder_config(gray)
    assert cfg.task.image_size is None and cfg.task.mode == "auto"
    model = build_model(cfg)
    assert next(model.parameters()).shape[1] == 1  # grayscale -> one input channel
    assert build_tasks(cfg, "train").sample(0, [0]).support_x.shape[-3:] == (1, 20, 20)  # own size, no upsampling
    model(torch.zeros(2, 1, 20, 20))

    color = make_tree(tmp_path / "color", rgb=True)
    assert next(build_model(folder_config(color)).parameters()).shape[1] == 3
    assert next(build_model(folder_config(color, "task.mode=L")).parameters()).shape[1] == 1
    # RGB files whose three channels are equal are grayscale too
    rgb_gray = tmp_path / "rgbgray" / "a" / "0.png"
    rgb_gray.parent.mkdir(parents=True)
    Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None], 3, -1)).save(rgb_gray)
    assert image_folder(rgb_gray.parent.parent).images.shape == (1, 1, 16, 16)

    mixed = make_tree(tmp_path / "mixed", classes=2, images=2)
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(mixed / "c1" / "big.png")
    with pytest.raises(Exception, match=r"differ in size: .* set image_size \(task.image_size=N"):
        build_model(folder_config(mixed))
    assert build_tasks(folder_config(mixed, "task.image_size=16"), "train").image_shape == (1, 16, 16)


def test_seeded_class_split():
    names = [f"class{i:02d}" for i in range(40)]
    a = split_classes(names, [0.7, 0.15, 0.15], seed=0)
    assert [len(p) for p in a] == [28, 6, 6] and sorted(n for part in a for n in part) == names
    assert split_classes(list(reversed(names)), [0.7, 0.15, 0.15], seed=0) == a  # order of listing is irrelevant
    assert split_classes(names, [0.7, 0.15, 0.15], seed=1) != a


def test_rotations_key_makes_rotated_classes(tmp_path):
    root = make_tree(tmp_path / "flat")
    plain = build_tasks(folder_config(root), "train")
    rotated = build_tasks(folder_config(root, "task.rotations=[0,90,180,270]"), "train")
    assert plain.num_classes == 6 and rotated.num_classes == 24 and "c3/rot090" in rotated.class_names
    ds = builders.load_image_dataset(folder_config(root), "train")
    batch, classes, idx = (
        rotated.sample(3, range(8)),
        rotated.task_classes(3, range(8)),
        rotated.image_indices(3, range(8)),
    )
    turns = 0
    for t in range(8):
        for label in range(2):
            angle = int(rotated.class_names[int(classes[t, label])].rsplit("rot", 1)[1])
            want = torch.rot90(ds.images[int(idx[t, label, 0])], angle // 90, dims=(-2, -1)).float() / 255
            assert torch.equal(batch.support_x[t, label], want)
            turns += angle != 0
    assert turns > 0
    with pytest.raises(Exception, match=r"task\.rotations must be distinct angles"):
        folder_config(root, "task.rotations=[45]")


def test_decode_cache_hit_and_invalidated(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "flat", classes=2, images=3)
    calls = []
    real = folders.decode_files
    monkeypatch.setattr(folders, "decode_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = image_folder(root, cache_dir=tmp_path / "c")
    assert len(calls) == 1 and len(list((tmp_path / "c").glob("*.npy"))) == 1
    second = image_folder(root, cache_dir=tmp_path / "c")
    assert len(calls) == 1 and torch.equal(first.images, second.images)  # read from the cache, nothing decoded
    assert image_folder(root, mode="RGB", cache_dir=tmp_path / "c").images.shape[1] == 3 and len(calls) == 2
    new = np.full((16, 16), 7, np.uint8)
    Image.fromarray(new).save(root / "c1" / "0.png")  # the folder's contents change: decoded again
    os.utime(root / "c1" / "0.png", ns=(1, 1))
    third = image_folder(root, cache_dir=tmp_path / "c")
    assert len(calls) == 3 and np.array_equal(third.images[3, 0].numpy(), new)
    # through a config: task.cache_dir, hit by a second load (a second run)
    cfg = folder_config(root, f"task.cache_dir={tmp_path / 'cfg-cache'}")
    builders.load_image_dataset(cfg, "train")
    builders._load_folder.cache_clear()
    builders._folder_split.cache_clear()
    builders.load_image_dataset(cfg, "train")
    assert len(calls) == 4 and len(list((tmp_path / "cfg-cache").glob("*.npy"))) == 1
    assert not (root / "cache").exists()  # never written into the image folder, where it would read as a class


def test_eval_episodes_file(tmp_path, monkeypatch, capsys):
    """`innerloop eval RUN --episodes FILE` evaluates exactly the listed episodes (checked by hand)."""
    root = tmp_path / "mine"
    make_tree(root / "train", classes=4)
    make_tree(root / "test", classes=3, images=5, seed=1)
    run = tmp_path / "run"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "protonet-omniglot-5w1s",
        "task.name=image_folder",
        f"task.root={root}",
        "task.image_size=null",
        *SMALL,
        "--out",
        run,
    )
    assert code == 0, err
    episodes = [
        {
            "support": [["test/c0/0.png", "test/c0/1.png"], ["test/c2/4.png", "test/c2/0.png"]],
            "query": [["test/c0/2.png", "test/c0/3.png"], ["test/c2/1.png", "test/c2/2.png"]],
        },
        {"classes": ["c1", 0], "support": [[0, 1], [4, 3]], "query": [[2, 3], [0, 1]]},
        {"classes": [2, "c1"], "support": [[3, 2], [1, 0]], "query": [[4, 0], [4, 2]]},
    ]
    file = tmp_path / "published.json"
    file.write_text(json.dumps({"episodes": episodes}))
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--episodes", file)
    assert code == 0, err
    written = sorted((run / "evals").glob("*episodes-published*.json"))
    assert len(written) == 1 and "3 episodes from" in out
    result = json.loads(written[0].read_text())["results"]["2"]["0"]["accuracy"]

    # by hand: decode the PNGs, scale to [0, 1], and run the trained learner on each episode
    learner = learner_from_checkpoint(load_checkpoint(run))
    learner.eval()
    names = ["c0", "c1", "c2"]

    def png(cls, i):
        return torch.from_numpy(np.asarray(Image.open(root / "test" / cls / f"{i}.png"), np.float32) / 255)[None]

    accuracies = []
    for e in episodes:
        labels = e.get("classes")
        parts = []
        for part in (e["support"], e["query"]):
            xs, ys = [], []
            for label, images in enumerate(part):
                for item in images:
                    if labels is None:
                        _, cls, name = item.split("/")
                        xs.append(png(cls, int(name[:-4])))
                    else:
                        c = labels[label]
                        xs.append(png(c if isinstance(c, str) else names[c], item))
                    ys.append(label)
            parts += [torch.stack(xs)[None], torch.tensor(ys)[None]]
        accuracies.append(float(learner.evaluate(TaskBatch(*parts), [0])[0]["accuracy"][0]))
    values = torch.tensor(accuracies, dtype=torch.float64)
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(float(values.mean()), abs=1e-6)
    assert result["ci95"] == pytest.approx(1.96 * float(values.std()) / math.sqrt(3), abs=1e-6)

    # a bad episode is one line naming the episode and the image
    file.write_text(json.dumps({"episodes": [{"support": [["test/c0/9.png"]], "query": [["test/c0/1.png"]]}]}))
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--episodes", file)
    assert code == 2 and "episode 0: image 'test/c0/9.png' is not in" in err and len(err.strip().splitlines()) == 1
    file.write_text(json.dumps({"episodes": [{"classes": ["c0"], "support": [[1]], "query": [[1]]}]}))
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--episodes", file)
    assert code == 2 and "is used twice" in err


def test_readme_episode_file_example_reads(tmp_path):
    """The README's episode file, on a root/<split>/<class>/<image> folder with classes a and b."""
    root = tmp_path / "mine"
    make_tree(root / "train", classes=3)
    for c in ("a", "b"):
        for i in range(4):
            (root / "test" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 10 * i + (c == "b"), np.uint8)).save(root / "test" / c / f"{i}.png")
    data = README.read_text().split("## Data", 1)[1].split("\n## ", 1)[0]
    file = tmp_path / "episodes.json"
    file.write_text(re.search(r"```json\n(.*?)```", data, re.S).group(1))
    episodes = builders.episode_tasks(folder_config(root), file)
    assert len(episodes) == 2 and not episodes.uniform
    second = episodes.sample(0, [1])  # label 0 = class b (support image 3), label 1 = class a (image 0)
    assert second.support_x.shape == (1, 2, 1, 16, 16) and second.query_y.tolist() == [[0, 0, 1, 1]]
    assert torch.equal(second.support_x[0, :, 0, 0, 0] * 255, torch.tensor([31.0, 0.0]))


def test_eval_episodes_that_is_both_a_number_and_a_file_is_refused(tmp_path, monkeypatch, capsys):
    """--episodes takes N (meta-RL) or FILE: a digits-only name of an existing file is not guessed either way."""
    run = tmp_path / "run"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "maml-sine",
        "--out",
        run,
        "train.iterations=2",
        "train.meta_batch_size=2",
        "train.val_tasks=2",
        "train.progress=false",
        "--no-evaluate",
    )
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "40").write_text("{}")
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--episodes", "40")
    assert code == 2 and "--episodes 40 is both a number and a file here; give the file as ./40" in err, err
