"""Turn a :class:`Config` into a network, a learner and a meta-optimizer, reading the registry's entries.

Task sources are built in ``training.task_sources`` (re-exported here).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import algorithms, registry
from ..errors import ConfigError
from .checkpoint import Checkpoint, restore_learner
from .config import Config
from .task_sources import (
    SPLITS,
    _folder_split,
    _load_folder,
    build_family,
    build_tasks,
    episode_tasks,
    image_shape,
    load_image_dataset,
    optional_tasks,
    split_note,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def build_model(config: Config) -> nn.Module:
    """The network of ``config.model`` for its task: for classification a ``task.ways`` head unless the
    algorithm's entry has none (protonets, snail: embeddings only); for regression the family's outputs."""
    entry, family = registry.algorithm(config.algorithm.name), registry.task_family(config.task.name)
    model = registry.model(config.model.name)
    if family.kind != "classification":
        return model.make(config, family.outputs, family.shape)
    channels, size = image_shape(config)  # image_folder: the data's channels and size
    try:
        return model.make(config, config.task.ways if entry.head else None, (channels, size, size))
    except ValueError as e:  # inputs too small for the model's poolings
        raise ConfigError(
            f"model.name={config.model.name} on {size}x{size} images: {e}; set task.image_size to a larger size"
        ) from None


def build_learner(config: Config, model: nn.Module | None = None) -> algorithms.MetaLearner:
    """The learner of ``config.algorithm`` around ``model`` (default: ``build_model(config)`` unless the entry builds
    its own network or policy), on ``train.device`` and ``train.dtype``."""
    entry = registry.algorithm(config.algorithm.name)
    family = build_family(config) if entry.rl else None
    if model is None and not entry.builds_model:
        model = build_model(config)
    tasks = functools.partial(build_tasks, config)  # for a builder that reads the data (baseline's base classes)
    learner = entry.make(registry.BuildInputs(config, config.algorithm, model, family, tasks))
    return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])


def build_rl_learner(config: Config, model: nn.Module | None = None) -> algorithms.MetaLearner:
    """:func:`build_learner` of a meta-RL config (``model``: a policy; default: an MLP policy for the family)."""
    return build_learner(config, model)


def learner_from_checkpoint(checkpoint: Checkpoint) -> algorithms.MetaLearner:
    """The learner ``checkpoint`` was trained as (built from its own config), holding its weights."""
    learner = build_learner(checkpoint.config)
    restore_learner(learner, checkpoint, checkpoint.config)
    return learner


def build_optimizer(config: Config, learner: nn.Module) -> torch.optim.Optimizer | None:
    """The meta-optimizer (None for an algorithm whose entry takes its own outer step, e.g. a TRPO step)."""
    t = config.train
    if not registry.algorithm(config.algorithm.name).meta_optimizer:
        return None
    if t.optimizer == "adam":
        return torch.optim.Adam(learner.parameters(), lr=t.meta_lr)
    return torch.optim.SGD(learner.parameters(), lr=t.meta_lr)


__all__ = [
    "DTYPES",
    "SPLITS",
    "_folder_split",
    "_load_folder",
    "build_family",
    "build_learner",
    "build_model",
    "build_optimizer",
    "build_rl_learner",
    "build_tasks",
    "episode_tasks",
    "image_shape",
    "learner_from_checkpoint",
    "load_image_dataset",
    "optional_tasks",
    "split_note",
]
