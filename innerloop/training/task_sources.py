"""Task sources of a :class:`Config`: sinusoids, episodes over image datasets or folders, meta-RL task splits.

What a task family is (its kind, dataset loader, image size, meta-RL class) is its registry entry.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from pathlib import Path

from .. import registry
from ..errors import ConfigError, DatasetError, InnerloopError
from ..tasks.seeding import split_seed
from .config import Config, task_kind

_log = logging.getLogger(__name__)

# Which task splits exist: training tasks, held-out validation tasks, test tasks.
SPLITS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 84  # the side of an image family that declares none


def build_tasks(
    config: Config,
    split: str = "train",
    shots: int | None = None,
    queries: int | None = None,
    wrapped: bool = True,
    ways: int | None = None,
):
    """The task source of ``split``: train uses the task section, val/test the eval section's ways.

    Sinusoid splits differ by seed (the family is infinite); image splits by class. ``wrapped=False``: the
    train split's episodes without the algorithm's ``train_tasks`` wrapper (baseline's base-class labels).
    ``ways``/``shots``/``queries`` override the split's own (image families).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    seed = split_seed(config.train.seed, config.eval.seed, split)
    task, family = config.task, registry.task_family(config.task.name)
    if family.tasks is not None:  # a family that builds its own task source (sinusoid)
        return registry.resolve(family.tasks)(config, split, shots, queries, seed)
    if family.kind == "rl":
        from ..rl.tasks import RLTasks

        return RLTasks(build_family(config), seed, split)
    from ..data import EpisodicTasks

    ways = ways or (task.ways if split == "train" else (config.eval.ways or task.ways))
    if split != "train":
        shots = shots or config.eval.shots[0]
        queries = queries or config.eval.queries
    dataset = load_image_dataset(config, split if family.folder else getattr(task, f"{split}_split"))
    shots, queries = shots or task.shots, queries or task.queries
    try:
        source = EpisodicTasks(dataset, ways, shots, queries, seed=seed, **_episode_options(config))
    except ValueError as err:  # too many ways or shots for this split: name the config keys to change
        keys = (
            ("task.ways", "task.shots", "task.queries")
            if split == "train"
            else ("eval.ways", "eval.shots", "eval.queries")
        )
        raise ConfigError(
            f"{split} tasks of {task.name} ({keys[0]}={ways}, {keys[1]}={shots}, {keys[2]}={queries}) "
            f"cannot be drawn: {err}"
        ) from None
    wrap = registry.algorithm(config.algorithm.name).train_tasks if split == "train" and wrapped else None
    return source if wrap is None else registry.resolve(wrap)(source)  # e.g. baseline's base-class labels


def _episode_options(config: Config) -> dict:
    """The ``EpisodicTasks`` options of the task section (rotations as classes, normalization)."""
    task = config.task
    return {
        "rotations": None if task.rotations is None else tuple(task.rotations),
        "normalize": None if task.normalize is None else (tuple(task.normalize[0]), tuple(task.normalize[1])),
    }


def episode_tasks(config: Config, path):
    """The fixed list of test episodes in the JSON file ``path`` (``data.episode_files.read_episodes``), over the
    test split's classes and images as ``config`` prepares them (size, mode, rotations, normalization)."""
    from ..data.episode_files import read_episodes
    from ..data.episodes import EpisodicTasks

    if task_kind(config) != "classification":
        raise ConfigError(
            f"--episodes FILE lists image classification episodes; this run is task.name={config.task.name} "
            "(meta-RL: --episodes N is the episodes per task and adaptation step)"
        )
    folder = registry.task_family(config.task.name).folder
    dataset = load_image_dataset(config, "test" if folder else config.task.test_split)
    try:
        tasks = EpisodicTasks(dataset, 1, 1, 1, **_episode_options(config))
    except ValueError as err:
        raise ConfigError(f"the test split cannot hold episodes: {err}") from None
    return read_episodes(path, tasks)


def split_note(config: Config, split: str) -> str | None:
    """Why ``split`` has no data (an ``image_folder`` without that split), or None when it has."""
    task = config.task
    if not registry.task_family(task.name).folder or split == "train" or _folder_dataset(config, split) is not None:
        return None
    from ..data.folders import folder_layout

    assert task.root is not None  # _folder_dataset refused a missing root
    layout = folder_layout(Path(task.root).expanduser(), _split_folders(config))
    if layout == "splits":
        return f"task.root={task.root} has no {getattr(task, f'{split}_split')}/ folder"
    return f"task.split_fractions={list(task.split_fractions)} gives the {split} split no classes"


def optional_tasks(config: Config, split: str):
    """``build_tasks(config, split)``, or None (with a logged note) where an image folder lacks that split."""
    note = split_note(config, split)
    if note is None:
        return build_tasks(config, split)
    _log.warning("%s: no %s", note, "validation during training" if split == "val" else f"{split} tasks")
    return None


@functools.lru_cache(maxsize=8)
def _dataset(name: str, root, split: str, image_size: int, download: bool, resample: str):
    load = registry.task_family(name).load
    if load is None:
        raise ConfigError(f"task.name={name!r} is no image dataset (its registry entry has no loader)")
    return registry.resolve(load)(root, split, image_size, download, resample)


def load_image_dataset(config: Config, split: str):
    """The ``ImageDataset`` of ``split`` (for image_folder a role: train, val or test)."""
    task = config.task
    if registry.task_family(task.name).folder:
        dataset = _folder_dataset(config, split)
        if dataset is None:
            raise DatasetError(
                f"{split_note(config, split)}, so there are no {split} tasks; add the split or evaluate another run"
            )
        return dataset
    size = task.image_size or registry.task_family(task.name).image_size or DEFAULT_IMAGE_SIZE
    try:
        return _dataset(task.name, task.root, split, size, task.download, task.resample)
    except ValueError as err:  # a loader's refusal of an option (an unknown split name, ...): name the config key
        if isinstance(err, InnerloopError):
            raise
        keys = [f"task.{role}_split" for role in SPLITS if getattr(task, f"{role}_split") == split] or ["task"]
        raise ConfigError(f"{'/'.join(keys)}={split!r} for task.name={task.name}: {err}") from None


# --------------------------------------------------------------------------- your own image folders
def _split_folders(config: Config) -> tuple[str, str, str]:
    t = config.task
    return (t.train_split, t.val_split, t.test_split)


def _folder_dataset(config: Config, split: str):
    """The ``ImageDataset`` of an image_folder split, or None where the folder has none (cached: ``_folder_split``)."""
    t = config.task
    if t.root is None:
        raise ConfigError(
            "task.name=image_folder needs task.root=<folder> holding <class>/<image> folders "
            "(or <split>/<class>/<image>)"
        )
    return _folder_split(
        str(Path(t.root).expanduser()),
        split,
        _split_folders(config),
        tuple(t.split_fractions),
        t.split_seed,
        t.image_size,
        t.mode,
        t.resample,
        t.invert,
        t.cache,
        t.cache_dir and str(Path(t.cache_dir).expanduser()),
    )


@functools.lru_cache(maxsize=16)
def _folder_split(
    root: str,
    role: str,
    folders: tuple,
    fractions: tuple,
    split_seed: int,
    image_size,
    mode: str,
    resample: str,
    invert: bool,
    cache: bool,
    cache_dir,
):
    """One split (role train/val/test) of a user's folder, or None where it has none.

    ``root/<split>/<class>/<image>``: the split is the folder named by task.<role>_split.
    ``root/<class>/<image>``: the classes are split by ``split_classes(fractions, split_seed)``.
    Every split takes the train split's channels (``mode=auto``) and must share its image size.
    """
    from ..data.folders import folder_layout, split_classes

    role_index = SPLITS.index(role)
    load = (resample, invert, cache, cache_dir)
    try:
        layout = folder_layout(Path(root), folders)
        train = None
        if layout == "splits" and role != "train":  # the other split folders follow the train folder's channels
            train = _folder_split(root, "train", folders, fractions, split_seed, image_size, mode, *load)
            mode = mode if mode != "auto" else "L" if train.image_shape[0] == 1 else "RGB"
        if layout == "splits":
            folder = Path(root) / folders[role_index]
            if not folder.is_dir():
                if role == "train":
                    raise DatasetError(f"task.root={root} holds split folders but no {folders[0]}/ (task.train_split)")
                return None
            dataset = copy.copy(_load_folder(str(folder), image_size, mode, *load))
            dataset.files = tuple(f"{folder.name}/{f}" for f in dataset.files)
        else:
            whole = _load_folder(root, image_size, mode, *load)
            names = split_classes(whole.class_names, fractions, split_seed)[role_index]
            if not names:
                if role == "train":
                    raise ConfigError(
                        f"task.split_fractions={list(fractions)} leaves no class of the {len(whole.class_names)} "
                        "in task.root for training; give train a larger fraction"
                    )
                return None
            dataset = whole.subset(names)
        dataset.name = f"{Path(root).name}/{role}"
        if (
            role == "train"
            and dataset.image_shape[0] == 1
            and not invert
            and float(dataset.images.float().mean()) > 127.5
        ):
            _log.info(
                "the images of %s are mostly light (dark ink on light paper?); innerloop's omniglot is 1 = ink on "
                "a 0 background: set task.invert=true to match it",
                root,
            )
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, InnerloopError):
            raise
        raise DatasetError(f"task.root={root}: {e}") from None
    if train is not None and dataset.image_shape[1:] != train.image_shape[1:]:
        (_, h, w), (_, h0, w0) = dataset.image_shape, train.image_shape
        raise DatasetError(
            f"the {role} images of task.root={root} are {h}x{w} but the train images {h0}x{w0}; "
            "set task.image_size=N to resize them all to N x N"
        )
    return dataset


@functools.lru_cache(maxsize=4)
def _load_folder(path: str, image_size, mode: str, resample: str, invert: bool, cache: bool, cache_dir):
    from ..data.folders import image_folder

    return image_folder(path, image_size, mode, resample=resample, invert=invert, cache=cache, cache_dir=cache_dir)


def image_shape(config: Config) -> tuple[int, int]:
    """``(channels, side)`` of the model's input: the data's own for image_folder, else the dataset's defaults."""
    task = config.task
    family = registry.task_family(task.name)
    if not family.folder:
        return family.channels, task.image_size or family.image_size or DEFAULT_IMAGE_SIZE
    c, h, w = load_image_dataset(config, "train").image_shape
    if h != w:
        raise ConfigError(
            f"the images of task.root={task.root} are {h}x{w}, not square, and the models take square "
            "inputs; set task.image_size=N to resize them to N x N"
        )
    return c, h


def build_family(config: Config):
    """The meta-RL task family of ``config.task.name`` (its registry entry's class).

    One object per setting, shared by the learner and the task splits, so that MuJoCo
    families build their simulators once. The family takes those of rl.horizon (when set),
    rl.arms, rl.workers and rl.reward_version that its class has parameters for.
    """
    cls = registry.resolve(registry.task_family(config.task.name).family)
    r, accepted = config.rl, inspect.signature(cls).parameters
    given = {"horizon": r.horizon or None, "arms": r.arms, "workers": r.workers, "reward_version": r.reward_version}
    options = {k: v for k, v in given.items() if k in accepted and v is not None}
    return _family(config.task.name, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=8)
def _family(name: str, options: tuple):
    return registry.resolve(registry.task_family(name).family)(**dict(options))
