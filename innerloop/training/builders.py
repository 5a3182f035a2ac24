"""Turn a :class:`Config` into a task source, a model and a learner."""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .. import algorithms
from ..core.update_rules import RULES
from ..errors import ConfigError, DatasetError, InnerloopError
from ..models import MLP
from ..tasks import SinusoidTasks
from ..tasks.seeding import split_seed
from .checkpoint import Checkpoint, restore_learner
from .config import Config, is_rl

_log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# Which task splits exist: training tasks, held-out validation tasks, test tasks.
SPLITS = ("train", "val", "test")


IMAGE_SIZES = {"omniglot": 28, "mini_imagenet": 84, "cifar_fs": 32, "fc100": 32}
CHANNELS = {"omniglot": 1}


def build_tasks(config: Config, split: str = "train", shots: int | None = None, queries: int | None = None):
    """The task source of ``split``: train uses the task section, val/test the eval section's ways.

    Sinusoid splits differ by seed (the family is infinite); image splits by class.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    seed = split_seed(config.train.seed, config.eval.seed, split)
    if is_rl(config):
        from ..rl.tasks import RLTasks

        return RLTasks(build_family(config), seed, split)
    task = config.task
    if task.name == "sinusoid":
        return SinusoidTasks(shots=shots or task.shots, queries=queries or task.queries, seed=seed)
    from ..data import EpisodicTasks

    ways = task.ways if split == "train" else (config.eval.ways or task.ways)
    if split != "train":
        shots = shots or config.eval.shots[0]
        queries = queries or config.eval.queries
    dataset = load_image_dataset(config, split if task.name == "image_folder" else getattr(task, f"{split}_split"))
    shots, queries = shots or task.shots, queries or task.queries
    try:
        return EpisodicTasks(dataset, ways, shots, queries, seed=seed, **_episode_options(config))
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


def _episode_options(config: Config) -> dict:
    """The ``EpisodicTasks`` options of the task section (rotations as classes, normalization)."""
    task = config.task
    return {
        "rotations": None if task.rotations is None else tuple(task.rotations),
        "normalize": None if task.normalize is None else (tuple(task.normalize[0]), tuple(task.normalize[1])),
    }


def episode_tasks(config: Config, path):
    """The fixed list of test episodes in the JSON file ``path`` (``data.episodes.read_episodes``), over the
    test split's classes and images as ``config`` prepares them (size, mode, rotations, normalization)."""
    from ..data.episodes import EpisodicTasks, read_episodes

    if config.task.name == "sinusoid" or is_rl(config):
        raise ConfigError(
            f"--episodes FILE lists image classification episodes; this run is task.name={config.task.name} "
            "(meta-RL: --episodes N is the episodes per task and adaptation step)"
        )
    dataset = load_image_dataset(config, "test" if config.task.name == "image_folder" else config.task.test_split)
    try:
        tasks = EpisodicTasks(dataset, 1, 1, 1, **_episode_options(config))
    except ValueError as err:
        raise ConfigError(f"the test split cannot hold episodes: {err}") from None
    return read_episodes(path, tasks)


def split_note(config: Config, split: str) -> str | None:
    """Why ``split`` has no data (an ``image_folder`` without that split), or None when it has."""
    task = config.task
    if task.name != "image_folder" or split == "train" or _folder_dataset(config, split) is not None:
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
    from .. import data

    if name == "omniglot":
        from ..data.omniglot import SPLITS as OMNIGLOT_SPLITS

        split = split if split in OMNIGLOT_SPLITS else f"vinyals-{split}"
        return data.omniglot(root, split, image_size, download=download, resample=resample)
    if name == "mini_imagenet":
        return data.mini_imagenet(root, split, image_size, resample=resample)
    if name in ("cifar_fs", "fc100"):
        return getattr(data, name)(root, split, download=download, image_size=image_size, resample=resample)
    raise ConfigError(f"unknown task family task.name={name!r}")


def load_image_dataset(config: Config, split: str):
    """The ``ImageDataset`` of ``split`` (for image_folder a role: train, val or test)."""
    task = config.task
    if task.name == "image_folder":
        dataset = _folder_dataset(config, split)
        if dataset is None:
            raise DatasetError(
                f"{split_note(config, split)}, so there are no {split} tasks; add the split or evaluate another run"
            )
        return dataset
    size = task.image_size or IMAGE_SIZES.get(task.name, 84)
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
    if task.name != "image_folder":
        return CHANNELS.get(task.name, 3), task.image_size or IMAGE_SIZES.get(task.name, 84)
    c, h, w = load_image_dataset(config, "train").image_shape
    if h != w:
        raise ConfigError(
            f"the images of task.root={task.root} are {h}x{w}, not square, and the models take square "
            "inputs; set task.image_size=N to resize them to N x N"
        )
    return c, h


def build_model(config: Config) -> nn.Module:
    """The network of ``config.model`` for its task: an MLP, or Conv-4 / ResNet-12 with a ``task.ways`` head (none for protonets, snail)."""
    model, task = config.model, config.task
    if model.name == "mlp":
        return MLP(1, model.hidden, 1)
    from ..models import Conv4, ResNet12

    head = None if config.algorithm.name in ("protonets", "snail") else task.ways  # embeddings only
    channels, size = image_shape(config)  # image_folder: the data's channels and size
    try:
        if model.name == "conv4":
            return Conv4(channels, model.filters, out_features=head, image_size=size)
        return ResNet12(channels, tuple(model.widths), out_features=head, image_size=size)
    except ValueError as e:  # inputs too small for the model's poolings
        raise ConfigError(
            f"model.name={model.name} on {size}x{size} images: {e}; set task.image_size to a larger size"
        ) from None


LEARNERS = {
    "maml": algorithms.MAML,
    "fomaml": algorithms.FOMAML,
    "metasgd": algorithms.MetaSGD,
    "anil": algorithms.ANIL,
    "reptile": algorithms.Reptile,
    "pretrained": algorithms.Pretrained,
    "protonets": algorithms.ProtoNets,
    "cnp": algorithms.CNP,
    "snail": algorithms.SNAIL,
}


def build_family(config: Config):
    """The meta-RL task family of ``config.task.name`` (``innerloop.rl.envs``).

    One object per setting, shared by the learner and the task splits, so that MuJoCo
    families build their simulators once.
    """
    options = {"horizon": config.rl.horizon} if config.rl.horizon else {}
    if config.task.name == "bandit":
        options["arms"] = config.rl.arms
    if config.task.name in ("halfcheetah-vel", "halfcheetah-dir", "ant-dir"):
        options["workers"] = config.rl.workers
    return _family(config.task.name, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=8)
def _family(name: str, options: tuple):
    from ..rl.envs import make_family

    return make_family(name, **dict(options))


def build_rl_learner(config: Config, model: nn.Module | None = None):
    """MAML-TRPO or ProMP over a policy for the config's task family."""
    from ..rl import MAMLTRPO, MetaPolicyLearner, ProMP, make_policy
    from ..rl.policies import Policy

    a, r = config.algorithm, config.rl
    family = build_family(config)
    if model is not None and getattr(model, "distribution", None) is None:
        raise ConfigError(
            f"meta-RL needs a policy (innerloop.rl.policies: a module with an action `distribution`), "
            f"got a {type(model).__name__}; pass none to build the default policy"
        )
    policy = (
        make_policy(family, hidden=tuple(config.model.hidden), init_std=r.init_std)
        if model is None
        else cast(Policy, model)
    )
    common: dict[str, Any] = dict(
        inner_lr=list(r.inner_lrs) if r.inner_lrs else a.inner_lr,
        inner_steps=a.inner_steps,
        episodes=r.episodes,
        first_order=a.first_order,
        gamma=r.gamma,
        gae_lambda=r.gae_lambda,
    )
    if r.estimator:
        common["estimator"] = r.estimator
    learner: MetaPolicyLearner
    if a.name == "maml-trpo":
        learner = MAMLTRPO(
            policy,
            family,
            max_kl=r.max_kl,
            cg_iterations=r.cg_iterations,
            cg_damping=r.cg_damping,
            backtrack_ratio=r.backtrack_ratio,
            max_backtracks=r.max_backtracks,
            **common,
        )
    else:
        learner = ProMP(
            policy,
            family,
            clip=r.clip,
            outer_steps=r.outer_steps,
            inner_kl_target=r.inner_kl_target,
            inner_kl_coef=r.inner_kl_coef,
            **common,
        )
    return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])


def build_learner(config: Config, model: nn.Module | None = None) -> algorithms.MetaLearner:
    """The learner of ``config.algorithm`` around ``model`` (default: ``build_model(config)``), on ``train.device`` and ``train.dtype``."""
    a = config.algorithm
    if is_rl(config):
        return build_rl_learner(config, model)
    if a.name == "cnp":
        # A CNP is its own network (encoder h and decoder g, widths model.hidden), not a model handed to an algorithm.
        if model is not None:
            raise ValueError(
                "cnp builds its encoder and decoder from model.hidden; pass no model (or build algorithms.CNP yourself)"
            )
        cnp = algorithms.CNP(hidden=list(config.model.hidden), strategy=a.strategy)
        return cnp.to(device=config.train.device, dtype=DTYPES[config.train.dtype])
    model = build_model(config) if model is None else model
    if a.name not in LEARNERS:
        raise ConfigError(f"unknown algorithm algorithm.name={a.name!r}; available: {', '.join(LEARNERS)}")
    kwargs: dict[str, Any] = dict(
        strategy=a.strategy, eval_steps=a.eval_steps, checkpoint_steps=a.checkpoint_steps, compile=a.compile
    )
    learner: algorithms.MetaLearner
    rule = None if a.update_rule == "sgd" else RULES[a.update_rule](a.inner_lr)
    if a.name in ("maml", "fomaml"):
        learner = LEARNERS[a.name](
            model,
            inner_lr=a.inner_lr if rule is None else None,
            inner_steps=a.inner_steps,
            adapt=a.adapt,
            update_rule=rule,
            **({} if a.name == "fomaml" else {"first_order": a.first_order}),
            **kwargs,
        )
    elif a.name == "anil":
        learner = algorithms.ANIL(
            model,
            inner_lr=a.inner_lr if rule is None else None,
            inner_steps=a.inner_steps,
            first_order=a.first_order,
            update_rule=rule,
            **kwargs,
        )
    elif a.name == "metasgd":
        learner = algorithms.MetaSGD(
            model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, **kwargs
        )
    elif a.name == "protonets":
        learner = algorithms.ProtoNets(model, strategy=a.strategy)
    elif a.name == "snail":
        # The embedding (no head) is read as a sequence of task.ways * task.shots + 1 elements.
        learner = algorithms.SNAIL(model, ways=config.task.ways, shots=config.task.shots, strategy=a.strategy)
    elif a.name == "reptile":
        learner = algorithms.Reptile(model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, **kwargs)
    else:
        learner = algorithms.Pretrained(model, inner_lr=a.inner_lr, strategy=a.strategy, eval_steps=a.eval_steps or 1)
    return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])


def learner_from_checkpoint(checkpoint: Checkpoint) -> algorithms.MetaLearner:
    """The learner ``checkpoint`` was trained as (built from its own config), holding its weights."""
    learner = build_learner(checkpoint.config)
    restore_learner(learner, checkpoint, checkpoint.config)
    return learner


def build_optimizer(config: Config, learner: nn.Module) -> torch.optim.Optimizer | None:
    """The meta-optimizer (None for maml-trpo, whose TRPO step is its own optimizer)."""
    t = config.train
    if config.algorithm.name == "maml-trpo":
        return None
    if t.optimizer == "adam":
        return torch.optim.Adam(learner.parameters(), lr=t.meta_lr)
    return torch.optim.SGD(learner.parameters(), lr=t.meta_lr)
