"""Learned optimizers as registry entries: the ``lopt`` algorithm and the optimizer task families (kind
``optimizer``: the inner training problems of ``innerloop.unroll``), built from a run's config.

A family's network widths are ``model.hidden`` (omniglot-conv: the channels of its blocks; quadratic, linear:
``[dim]``); image families classify ``task.ways`` classes of ``task.image_size`` Omniglot images of
``task.train_split`` (``task.test_split``: the held-out alphabets of ``innerloop eval``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from . import options as o
from .entries import AlgorithmEntry, BuildInputs, TaskFamilyEntry, task_family, update_rule

LOPT_RULES = ("lopt-mlp", "lopt-adafactor", "adam-correction")  # their meta-parameters fit any model
IMAGE_FAMILIES = ("omniglot-mlp", "omniglot-conv")
OPTIMIZER_FAMILIES = ("omniglot-mlp", "omniglot-conv", "sine-mlp", "char-lm", "quadratic", "linear")


def optimizer_family(config, split: str = "train", hidden: list[int] | None = None, name: str | None = None):
    """The ``innerloop.unroll`` family of ``config`` (``split``'s images; ``hidden``, ``name``: a variant of it)."""
    import torch

    from .. import unroll

    name = name or config.task.name
    widths = tuple(config.model.hidden if hidden is None else hidden)
    batch = config.algorithm.batch_size
    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[config.train.dtype]
    family: Any
    if name in IMAGE_FAMILIES:
        t = config.task
        size = t.image_size or task_family(name).image_size
        images = task_family("omniglot").load(t.root, getattr(t, f"{split}_split"), size, t.download, t.resample)
        if name == "omniglot-mlp":
            family = unroll.ImageMLPTasks(images, widths, classes=t.ways, batch_size=batch, dtype=dtype)
        else:
            family = unroll.ImageConvTasks(images, widths, classes=t.ways, batch_size=batch, dtype=dtype)
    elif name == "sine-mlp":
        family = unroll.SinusoidMLPTasks(widths, batch_size=batch, dtype=dtype)
    elif name == "char-lm":
        family = unroll.CharLMTasks(hidden=widths, batch_size=batch, dtype=dtype)
    elif name == "quadratic":
        family = unroll.QuadraticTasks(widths[0], dtype=dtype)
    else:
        family = unroll.LinearRegressionTasks(widths[0], batch_size=batch, dtype=dtype)
    return family.to(config.train.device)


def build_rule(config):
    """The update rule ``algorithm.rule`` at the nominal step ``algorithm.inner_lr``."""
    a = config.algorithm
    scaled = (
        {"scale_mult": a.scale_mult, "max_scale": a.max_scale, "guard": a.guard, "guard_decay": a.guard_decay}
        if a.scale_mult
        else {}
    )
    return update_rule(a.rule).make(a.inner_lr, **scaled)


def _build_lopt(entry: AlgorithmEntry, inputs: BuildInputs):
    c, a = inputs.config, inputs.options
    return entry.learner_class()(
        optimizer_family(c),
        build_rule(c),
        estimator=a.estimator,
        horizon=a.horizon,
        truncation=a.truncation,
        tasks=c.train.meta_batch_size,
        objective=a.objective,
        sigma=a.sigma,
        strategy=a.strategy,
        seed=c.train.seed,
        mixture=[optimizer_family(c, hidden=list(h)) for h in a.mix_hidden],
    )


def _check_lopt(config) -> None:
    """Each estimator, objective and rule spelled out; truncation within the horizon, full = the horizon."""
    from ..unroll import ESTIMATORS, OBJECTIVES

    a, fix = config.algorithm, "(the lopt-mlp-omniglot preset shows a working set)"
    if task_family(config.task.name).kind != "optimizer":
        raise ConfigError(
            f"algorithm.name=lopt meta-trains an optimizer on optimizer task families ({', '.join(OPTIMIZER_FAMILIES)}); "
            f"got task.name={config.task.name!r} {fix}"
        )
    for key, allowed in (("estimator", tuple(ESTIMATORS)), ("objective", OBJECTIVES), ("rule", LOPT_RULES)):
        if getattr(a, key) not in allowed:
            raise ConfigError(
                f"algorithm.{key}={getattr(a, key)!r} is not supported; choose one of: {', '.join(allowed)}"
            )
    for key in ("horizon", "truncation", "batch_size", "tune_tasks"):
        if not isinstance(getattr(a, key), int) or getattr(a, key) < 1:
            raise ConfigError(f"algorithm.{key} must be a positive integer, got {getattr(a, key)!r}")
    if a.truncation > a.horizon:
        raise ConfigError(
            f"algorithm.truncation={a.truncation} exceeds algorithm.horizon={a.horizon}: a truncation is part of a run; "
            "lower the truncation or raise the horizon"
        )
    if a.estimator == "full" and a.truncation != a.horizon:
        raise ConfigError(
            f"algorithm.estimator=full backpropagates through whole runs, so algorithm.truncation must equal "
            f"algorithm.horizon={a.horizon} (got {a.truncation}); or choose tbptt, es or pes for truncated runs"
        )
    if a.estimator in ("es", "pes") and not a.sigma > 0:
        raise ConfigError(f"algorithm.sigma must be positive for algorithm.estimator={a.estimator}, got {a.sigma}")
    if not a.scale_mult >= 0:
        raise ConfigError(f"algorithm.scale_mult must be zero or positive, got {a.scale_mult}")
    if a.scale_mult and a.rule != "adam-correction":
        raise ConfigError(
            f"algorithm.scale_mult scales Adam's step in algorithm.rule=adam-correction; set it to 0 for "
            f"algorithm.rule={a.rule}"
        )
    if a.max_scale and not (a.max_scale > 1 and a.scale_mult):
        raise ConfigError(
            f"algorithm.max_scale bounds the multiplier of Adam's step that algorithm.scale_mult turns on: give it above 1 "
            f"with scale_mult > 0, or 0 for no bound (got max_scale={a.max_scale}, scale_mult={a.scale_mult})"
        )
    if a.guard and not (a.guard > 0 and a.scale_mult):
        raise ConfigError(
            f"algorithm.guard gates the multiplier of Adam's step that algorithm.scale_mult turns on: give it above 0 "
            f"with scale_mult > 0, or 0 for no guard (got guard={a.guard}, scale_mult={a.scale_mult})"
        )
    if not 0 <= a.guard_decay < 1:
        raise ConfigError(f"algorithm.guard_decay must be in [0, 1), got {a.guard_decay}")
    if not a.tune_lrs or any(lr <= 0 for lr in a.tune_lrs):
        raise ConfigError(f"algorithm.tune_lrs must be a non-empty list of positive rates, got {list(a.tune_lrs)}")
    mix = [list(h) for h in a.mix_hidden]
    if any(not h or any(not isinstance(w, int) or w < 1 for w in h) for h in mix) or list(config.model.hidden) in mix:
        raise ConfigError(
            f"algorithm.mix_hidden must list networks other than model.hidden={list(config.model.hidden)}, each a "
            f"non-empty list of positive widths (e.g. [[16], [64]]); got {mix}"
        )
    n = 1 + len(mix)
    if config.train.meta_batch_size % n:
        raise ConfigError(
            f"train.meta_batch_size={config.train.meta_batch_size} tasks per estimate do not split evenly over the "
            f"{n} networks of model.hidden and algorithm.mix_hidden: use a multiple of {n}"
        )
    if config.task.name in ("quadratic", "linear"):
        for key, widths in [("model.hidden", list(config.model.hidden)), *(("algorithm.mix_hidden", h) for h in mix)]:
            if len(widths) != 1:
                raise ConfigError(f"task.name={config.task.name} takes its dimension from {key}=[dim]; got {widths}")


def _optimizer_tasks(config, split: str, shots, queries, seed: int):
    from ..unroll.learner import OptimizerTasks

    return OptimizerTasks(seed)


LOPT_ALGORITHMS = [
    AlgorithmEntry(
        "lopt",
        "innerloop.unroll.learner:LearnedOptimizerLearner",
        o.LoptOptions,
        _build_lopt,
        kinds=("optimizer",),
        head=False,
        builds_model=True,
        preset="lopt-mlp-omniglot",
        check=_check_lopt,
    )
]
LOPT_FAMILIES = [
    TaskFamilyEntry(name, "optimizer", tasks=_optimizer_tasks, image_size=14 if name in IMAGE_FAMILIES else None)
    for name in OPTIMIZER_FAMILIES
]
