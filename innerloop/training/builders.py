"""Turn a :class:`Config` into a task source, a model and a learner."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import algorithms
from ..core.update_rules import RULES
from ..errors import ConfigError
from ..models import MLP
from ..tasks import SinusoidTasks
from ..tasks.seeding import derive_seed
from .checkpoint import Checkpoint, restore_learner
from .config import Config, is_rl

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
    if is_rl(config):
        from ..rl.trainer import RLTasks

        return RLTasks(build_family(config), config, split)
    task = config.task
    seed = config.train.seed if split == "train" else derive_seed(config.train.seed, split)
    if split == "test":
        seed = derive_seed(config.eval.seed, "test")
    if task.name == "sinusoid":
        return SinusoidTasks(shots=shots or task.shots, queries=queries or task.queries, seed=seed)
    from ..data import EpisodicTasks

    ways = task.ways if split == "train" else (config.eval.ways or task.ways)
    if split != "train":
        shots = shots or config.eval.shots[0]
        queries = queries or config.eval.queries
    dataset = load_image_dataset(config, getattr(task, f"{split}_split"))
    return EpisodicTasks(dataset, ways, shots or task.shots, queries or task.queries, seed=seed)


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
    if name == "image_folder":
        if root is None:
            raise ConfigError("task.name=image_folder needs task.root=<folder> holding <split>/<class>/<image> folders")
        return data.image_folder(f"{root}/{split}", image_size, resample=resample)
    raise ConfigError(f"unknown task family task.name={name!r}")


def load_image_dataset(config: Config, split: str):
    task = config.task
    size = task.image_size or IMAGE_SIZES.get(task.name, 84)
    return _dataset(task.name, task.root, split, size, task.download, task.resample)


def build_model(config: Config) -> nn.Module:
    model, task = config.model, config.task
    if model.name == "mlp":
        return MLP(1, model.hidden, 1)
    from ..models import Conv4, ResNet12

    head = None if config.algorithm.name in ("protonets", "snail") else task.ways  # embeddings only
    size = task.image_size or IMAGE_SIZES.get(task.name, 84)
    channels = CHANNELS.get(task.name, 3)
    if model.name == "conv4":
        return Conv4(channels, model.filters, out_features=head, image_size=size)
    return ResNet12(channels, tuple(model.widths), out_features=head, image_size=size)


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
    from ..rl import MAMLTRPO, ProMP, make_policy

    a, r = config.algorithm, config.rl
    family = build_family(config)
    policy = make_policy(family, hidden=tuple(config.model.hidden), init_std=r.init_std) if model is None else model
    common = dict(inner_lr=list(r.inner_lrs) if r.inner_lrs else a.inner_lr, inner_steps=a.inner_steps, episodes=r.episodes, first_order=a.first_order,
                  gamma=r.gamma, gae_lambda=r.gae_lambda)
    if r.estimator:
        common["estimator"] = r.estimator
    if a.name == "maml-trpo":
        learner = MAMLTRPO(policy, family, max_kl=r.max_kl, cg_iterations=r.cg_iterations, cg_damping=r.cg_damping,
                           backtrack_ratio=r.backtrack_ratio, max_backtracks=r.max_backtracks, **common)
    else:
        learner = ProMP(policy, family, clip=r.clip, outer_steps=r.outer_steps, inner_kl_target=r.inner_kl_target,
                        inner_kl_coef=r.inner_kl_coef, **common)
    return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])


def build_learner(config: Config, model: nn.Module | None = None) -> algorithms.MetaLearner:
    a = config.algorithm
    if is_rl(config):
        return build_rl_learner(config, model)
    if a.name == "cnp":
        # A CNP is its own network (encoder h and decoder g, widths model.hidden), not a model handed to an algorithm.
        if model is not None:
            raise ValueError("cnp builds its encoder and decoder from model.hidden; pass no model (or build algorithms.CNP yourself)")
        learner = algorithms.CNP(hidden=list(config.model.hidden), strategy=a.strategy)
        return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])
    model = build_model(config) if model is None else model
    if a.name not in LEARNERS:
        raise ConfigError(f"unknown algorithm algorithm.name={a.name!r}; available: {', '.join(LEARNERS)}")
    kwargs = dict(strategy=a.strategy, eval_steps=a.eval_steps, checkpoint_steps=a.checkpoint_steps, compile=a.compile)
    rule = None if a.update_rule == "sgd" else RULES[a.update_rule](a.inner_lr)
    if a.name in ("maml", "fomaml"):
        learner = LEARNERS[a.name](
            model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, adapt=a.adapt, update_rule=rule,
            **({} if a.name == "fomaml" else {"first_order": a.first_order}), **kwargs,
        )
    elif a.name == "anil":
        learner = algorithms.ANIL(
            model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, update_rule=rule, **kwargs
        )
    elif a.name == "metasgd":
        learner = algorithms.MetaSGD(model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, **kwargs)
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
