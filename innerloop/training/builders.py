"""Turn a :class:`Config` into a task source, a model and a learner."""

from __future__ import annotations

import torch
from torch import nn

from .. import algorithms
from ..core.update_rules import RULES
from ..errors import ConfigError
from ..models import MLP
from ..tasks import SinusoidTasks
from ..tasks.seeding import derive_seed
from .config import Config

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# Which task splits exist: training tasks, held-out validation tasks, test tasks.
SPLITS = ("train", "val", "test")


def build_tasks(config: Config, split: str = "train", shots: int | None = None, queries: int | None = None):
    """The task source of ``split``. Sinusoid splits differ by seed (the family is infinite)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    task = config.task
    seed = config.train.seed if split == "train" else derive_seed(config.train.seed, split)
    if task.name == "sinusoid":
        return SinusoidTasks(shots=shots or task.shots, queries=queries or task.queries, seed=seed)
    raise ConfigError(f"unknown task family task.name={task.name!r}; available: sinusoid")


def build_model(config: Config) -> nn.Module:
    model = config.model
    if model.name == "mlp":
        return MLP(1, model.hidden, 1)
    raise ConfigError(f"unknown model model.name={model.name!r}; available: mlp")


LEARNERS = {
    "maml": algorithms.MAML,
    "fomaml": algorithms.FOMAML,
    "metasgd": algorithms.MetaSGD,
    "anil": algorithms.ANIL,
    "reptile": algorithms.Reptile,
    "pretrained": algorithms.Pretrained,
}


def build_learner(config: Config, model: nn.Module | None = None) -> algorithms.MetaLearner:
    a = config.algorithm
    model = build_model(config) if model is None else model
    if a.name not in LEARNERS:
        raise ConfigError(f"unknown algorithm algorithm.name={a.name!r}; available: {', '.join(LEARNERS)}")
    kwargs = dict(strategy=a.strategy, eval_steps=a.eval_steps)
    if a.name in ("maml", "fomaml"):
        rule = None if a.update_rule == "sgd" else RULES[a.update_rule](a.inner_lr)
        learner = LEARNERS[a.name](
            model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, adapt=a.adapt, update_rule=rule,
            **({} if a.name == "fomaml" else {"first_order": a.first_order}), **kwargs,
        )
    elif a.name in ("metasgd", "anil"):
        learner = LEARNERS[a.name](model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, **kwargs)
    elif a.name == "reptile":
        learner = algorithms.Reptile(model, inner_lr=a.inner_lr, inner_steps=a.inner_steps, **kwargs)
    else:
        learner = algorithms.Pretrained(model, inner_lr=a.inner_lr, strategy=a.strategy, eval_steps=a.eval_steps or 1)
    return learner.to(device=config.train.device, dtype=DTYPES[config.train.dtype])


def build_optimizer(config: Config, learner: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(learner.parameters(), lr=t.meta_lr)
    return torch.optim.SGD(learner.parameters(), lr=t.meta_lr)
