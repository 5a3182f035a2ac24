"""Config checks: each value or combination innerloop cannot run is one ConfigError naming the key and the fix.

What an algorithm, network or task family accepts is read from its registry entry. (This module
reads a ``training.config.Config`` without importing it: ``config`` imports this module.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import registry
from ..errors import ConfigError
from ..models.conv import POOLS
from ..models.mlp import ACTIVATIONS
from ..rl.estimators import ESTIMATORS as RL_ESTIMATORS
from ..validate import positive_int


def choices() -> dict[str, tuple[str, ...]]:
    """The accepted values of each key with a fixed set of them (the registry's names for its four tables)."""
    return {
        "algorithm.name": tuple(registry.algorithms()),
        "algorithm.update_rule": tuple(registry.update_rules()),
        "algorithm.strategy": ("vmap", "loop", "auto"),
        "task.name": tuple(registry.task_families()),
        "model.name": tuple(registry.models()),
        "train.optimizer": ("adam", "sgd"),
        "train.lr_schedule": ("step", "cosine"),
        "train.dtype": ("float32", "float64", "bfloat16"),
        "train.best_mode": ("auto", "min", "max"),
    }


def _names(**capabilities: Any) -> tuple[str, ...]:
    """The algorithms whose entries have every one of ``capabilities`` (``rl=True``, ``forward_pass=True``, ...)."""
    return tuple(
        n for n, e in registry.algorithms().items() if all(getattr(e, c) == v for c, v in capabilities.items())
    )


def _families(kind: str) -> tuple[str, ...]:
    return tuple(n for n, f in registry.task_families().items() if f.kind == kind)


# The name lists of before the registry, kept importable from training.config (computed on access).
DERIVED = {
    "CHOICES": choices,
    "RULE_USERS": lambda: _names(update_rule=True),
    "FORWARD_PASS_LEARNERS": lambda: _names(forward_pass=True),
    "FORWARD_PASS_PRESETS": lambda: {n: e.preset for n, e in registry.algorithms().items() if e.forward_pass},
    "RL_ALGORITHMS": lambda: _names(rl=True),
    "RL_FAMILIES": lambda: _families("rl"),
}
POSITIVE = (
    "task.shots",
    "task.queries",
    "task.ways",
    "train.iterations",
    "train.meta_batch_size",
    "train.val_every",
    "train.val_tasks",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "eval.queries",
    "eval.tasks",
    "eval.batch_size",
)


def task_kind(config: Any) -> str:
    """What the run's tasks are: regression | classification | rl (its task family's kind)."""
    return registry.task_family(config.task.name).kind


def _get(config: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key, None)


def validate(config: Any) -> None:
    """Raise :class:`ConfigError` naming the key and the fix for a value or a combination innerloop cannot run."""
    a = config.algorithm
    for dotted, allowed in choices().items():
        value = _get(config, dotted)
        if value not in allowed and not (dotted == "algorithm.update_rule" and value is None):
            raise ConfigError(f"{dotted}={value!r} is not supported; choose one of: {', '.join(allowed)}")
    entry, family = registry.algorithm(a.name), registry.task_family(config.task.name)
    for dotted in POSITIVE:
        positive_int(dotted, _get(config, dotted), error=ConfigError)
    if getattr(a, "inner_steps", 0) < 0:
        raise ConfigError(f"algorithm.inner_steps must be >= 0, got {a.inner_steps}")
    if getattr(a, "inner_lr", 1) <= 0:
        raise ConfigError(f"algorithm.inner_lr must be positive, got {a.inner_lr}")
    if a.checkpoint_steps:
        first_order = getattr(a, "first_order", False)
        if not entry.checkpoint_steps or first_order:
            raise ConfigError(
                f"algorithm.checkpoint_steps recomputes second-order inner steps, but algorithm.name={a.name!r}"
                f"{' with algorithm.first_order=true' if first_order else ''} keeps no second-order inner graph; "
                f"drop algorithm.checkpoint_steps (it applies to {_listed(_names(checkpoint_steps=True))}, second order)"
            )
        if a.strategy == "vmap":
            raise ConfigError(
                "algorithm.checkpoint_steps runs the per-task loop (torch.utils.checkpoint cannot run under vmap); "
                "set algorithm.strategy=loop or auto"
            )
    if a.compile:
        capable = _listed(_names(compile=True), "or")
        if not entry.compile:
            raise ConfigError(
                f"algorithm.compile compiles the meta-loss of {capable} (got algorithm.name={a.name!r}); "
                "drop algorithm.compile, or choose one of those algorithms"
            )
        if a.strategy == "auto" or a.checkpoint_steps:
            raise ConfigError(
                f"algorithm.compile compiles the meta-loss of {capable} for one fixed strategy "
                f"(got algorithm.name={a.name!r}, strategy={a.strategy!r}, checkpoint_steps={a.checkpoint_steps}); "
                "set algorithm.strategy=vmap (small models) or loop, without checkpoint_steps"
            )
    _check_train_and_eval(config)
    _check_activation(config, entry)
    _check_image_task(config)
    if config.eval.ways is not None:
        positive_int("eval.ways", config.eval.ways, error=ConfigError)
    if entry.forward_pass:
        _check_forward_pass_learner(config, entry)
    if entry.check is not None:
        entry.check(config)
    if entry.rl or family.kind == "rl":
        _check_rl(config, entry, family)
        return
    _check_kinds(config, entry, family)
    if family.kind == "classification" and entry.fixed_ways and config.eval.ways not in (None, config.task.ways):
        raise ConfigError(
            f"{a.name} has an output layer of task.ways={config.task.ways} classes, so it cannot be "
            f"evaluated on eval.ways={config.eval.ways}; set them equal "
            f"(only {_listed(_names(fixed_ways=False))} test with other ways)"
        )


def _listed(names: tuple[str, ...], last: str = "and") -> str:
    """``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}" if names else "none"


def _check_train_and_eval(config: Any) -> None:
    t = config.train
    if t.meta_lr <= 0:
        raise ConfigError(f"train.meta_lr must be positive, got {t.meta_lr}")
    if t.lr_decay_every is not None and t.lr_decay_every < 1:
        raise ConfigError(f"train.lr_decay_every must be a positive integer (or null), got {t.lr_decay_every}")
    if t.lr_schedule == "cosine" and t.lr_decay_every is not None:
        raise ConfigError("train.lr_schedule=cosine replaces the step decay: set train.lr_decay_every=null")
    if not 0 <= t.min_lr <= t.meta_lr:
        raise ConfigError(f"train.min_lr must be in [0, train.meta_lr={t.meta_lr}], got {t.min_lr}")
    if t.dist_timeout <= 0:
        raise ConfigError(f"train.dist_timeout must be a positive number of seconds, got {t.dist_timeout}")
    if t.val_train_tasks is not None:
        positive_int("train.val_train_tasks", t.val_train_tasks, allow_zero=True, error=ConfigError)
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive (or null to disable), got {t.grad_clip}")
    bad = [s for s in config.eval.shots if s < 1] + [s for s in config.eval.steps if s < 0]
    if bad or not config.eval.shots or not config.eval.steps:
        raise ConfigError("eval.shots must be positive integers and eval.steps non-negative integers (both non-empty)")
    m = config.model
    if any(h < 1 for h in [*m.hidden, *m.widths, m.filters]):
        raise ConfigError("model.hidden, model.widths and model.filters must be positive")
    if m.pool not in POOLS:
        raise ConfigError(f"model.pool must be one of {', '.join(POOLS)}, got {m.pool!r}")


def _check_activation(config: Any, entry: registry.AlgorithmEntry) -> None:
    """model.activation is one the MLP knows, and a network that is built reads it."""
    m = config.model
    if m.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {m.activation!r}")
    reads = entry.activation if entry.builds_model else registry.model(m.name).activation
    if m.activation != "relu" and not reads:
        network = f"{entry.name}'s own networks" if entry.builds_model else f"model.name={m.name!r}"
        raise ConfigError(f"model.activation={m.activation!r} does not apply to {network}: leave model.activation=relu")


def _check_kinds(config: Any, entry: registry.AlgorithmEntry, family: registry.TaskFamilyEntry) -> None:
    """The algorithm runs on the task family's kind of tasks, and the network fits them."""
    a, kind = config.algorithm, family.kind
    if kind not in entry.kinds:
        others = [
            n for n, e in registry.algorithms().items() if kind in e.kinds and e.forward_pass == entry.forward_pass
        ]
        families = [n for n, f in registry.task_families().items() if f.kind in entry.kinds]
        raise ConfigError(
            f"algorithm.name={a.name} is implemented for {' and '.join(entry.kinds)} only; use task.name="
            f"{' or '.join(families[:2])} (got task.name={config.task.name!r}), or {_listed(tuple(others), 'or')} for {kind}"
        )
    model = registry.model(config.model.name)
    if kind not in model.kinds:
        fits = {k: [n for n, m in registry.models().items() if k in m.kinds] for k in ("regression", "classification")}
        raise ConfigError(
            f"model.name={config.model.name!r} does not fit task.name={config.task.name!r}: use model.name="
            f"{' or '.join(fits['regression'])} for {', '.join(_families('regression'))} and "
            f"{' or '.join(fits['classification'])} for image tasks"
        )


FOLDER_ONLY = ("mode", "invert", "split_fractions", "split_seed", "cache", "cache_dir")  # keys of folder families alone


def _check_image_task(config: Any) -> None:
    """The image-data keys of the task section: values in range, and image_folder's keys only with image_folder."""
    t = config.task
    defaults = {
        f.name: f.default_factory() if callable(f.default_factory) else f.default for f in dataclasses.fields(t)
    }
    if not registry.task_family(t.name).folder:
        given = [k for k in FOLDER_ONLY if getattr(t, k) != defaults[k]]
        if given:
            folders = [n for n, f in registry.task_families().items() if f.folder]
            raise ConfigError(
                f"task.{given[0]} applies to task.name={' or '.join(folders)} only (got task.name={t.name!r}); drop it"
            )
    if t.image_size is not None and t.image_size < 1:
        raise ConfigError(f"task.image_size must be a positive integer (or null), got {t.image_size}")
    if t.mode not in ("auto", "L", "RGB"):
        raise ConfigError(f"task.mode={t.mode!r} is not supported; choose one of: auto, L, RGB")
    if t.rotations is not None:
        r = list(t.rotations)
        if not r or len(set(r)) != len(r) or any(a not in (0, 90, 180, 270) for a in r):
            raise ConfigError(
                f"task.rotations must be distinct angles from 0, 90, 180, 270 (e.g. [0, 90, 180, 270]; "
                f"[0] for none, null for the dataset's), got {r}"
            )
    if t.normalize is not None and (
        len(t.normalize) != 2
        or len(t.normalize[0]) != len(t.normalize[1])
        or len(t.normalize[0]) not in (1, 3)
        or any(v <= 0 for v in t.normalize[1])
    ):
        raise ConfigError(
            f"task.normalize must be [[mean, ...], [std, ...]] with 1 or 3 values each and std > 0, got {t.normalize}"
        )
    f = list(t.split_fractions)
    if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0:
        raise ConfigError(
            f"task.split_fractions must be 3 fractions train, val, test (train > 0, none negative) "
            f"summing to 1, e.g. [0.7, 0.15, 0.15]; got {f}"
        )


def _check_forward_pass_learner(config: Any, entry: registry.AlgorithmEntry) -> None:
    """A learner that adapts in one forward pass has no inner loop: refuse any config asking for one.

    Silently ignoring inner steps would print a table of identical "1 step", "5 steps"
    columns, or train something other than what the config says.
    """
    a = config.algorithm
    problems = []  # (what the config asks for, how to fix it)
    if getattr(a, "inner_steps", 0) != 0:
        problems.append((f"algorithm.inner_steps={a.inner_steps}", "set algorithm.inner_steps=0"))
    if getattr(a, "eval_steps", None) not in (None, 0):
        problems.append((f"algorithm.eval_steps={a.eval_steps}", "leave algorithm.eval_steps unset"))
    if any(s != 0 for s in config.eval.steps):
        problems.append((f"eval.steps={list(config.eval.steps)}", "set eval.steps=[0]"))
    if problems:
        preset = f" (the {entry.preset} preset does)" if entry.preset else ""
        raise ConfigError(
            f"algorithm.name={a.name} adapts to a task in one forward pass, with no inner gradient steps, but the config "
            f"asks for {', '.join(p for p, _ in problems)}; {', '.join(f for _, f in problems)}{preset}"
        )


def _check_rl(config: Any, entry: registry.AlgorithmEntry, family: registry.TaskFamilyEntry) -> None:
    """Meta-RL needs a meta-RL algorithm on a task family, a policy MLP, and sane RL settings."""
    a, r = config.algorithm, config.rl
    if not entry.rl or family.kind != "rl":
        raise ConfigError(
            f"algorithm.name={a.name!r} with task.name={config.task.name!r}: meta-RL pairs an algorithm of "
            f"{', '.join(_names(rl=True))} with a task family of {', '.join(_families('rl'))} "
            "(e.g. the maml-trpo-nav2d preset); supervised tasks take the other algorithms"
        )
    if "rl" not in registry.model(config.model.name).kinds:
        raise ConfigError(
            f"meta-RL policies are MLPs (model.name=mlp, widths model.hidden); got model.name={config.model.name!r}"
        )
    if getattr(a, "inner_steps", 1) < 1:  # rl2 has no inner steps: it adapts through its hidden state
        raise ConfigError(
            f"meta-RL adapts with at least one policy-gradient step; set algorithm.inner_steps >= 1 (got {a.inner_steps})"
        )
    if r.estimator is not None and r.estimator not in RL_ESTIMATORS:
        raise ConfigError(f"rl.estimator={r.estimator!r} is not supported; choose one of: {', '.join(RL_ESTIMATORS)}")
    for name in ("episodes", "eval_episodes", "cg_iterations", "outer_steps", "arms", "workers", "max_backtracks"):
        positive_int(f"rl.{name}", getattr(r, name), error=ConfigError)
    positive_int("rl.success_episodes", r.success_episodes, error=ConfigError)
    if r.reward_version not in ("v1", "v2"):
        raise ConfigError(f"rl.reward_version={r.reward_version!r} is not supported; choose v1 or v2 (Meta-World's)")
    if r.horizon is not None and r.horizon < 1:
        raise ConfigError(f"rl.horizon must be a positive integer (or null for the family's), got {r.horizon}")
    for name in ("max_kl", "init_std", "clip", "inner_kl_target"):
        if not getattr(r, name) > 0:
            raise ConfigError(f"rl.{name} must be positive, got {getattr(r, name)}")
    if not (0 < r.gamma <= 1 and 0 <= r.gae_lambda <= 1 and 0 < r.backtrack_ratio < 1):
        raise ConfigError(
            f"need 0 < rl.gamma <= 1, 0 <= rl.gae_lambda <= 1, 0 < rl.backtrack_ratio < 1; got {r.gamma}, {r.gae_lambda}, {r.backtrack_ratio}"
        )
    if r.inner_lrs is not None and (
        not r.inner_lrs or any(lr <= 0 for lr in r.inner_lrs) or len(r.inner_lrs) > a.inner_steps
    ):
        raise ConfigError(
            f"rl.inner_lrs must hold 1 to algorithm.inner_steps={a.inner_steps} positive rates (the last repeats), "
            f"got {list(r.inner_lrs)}; or leave it null to use algorithm.inner_lr at every step"
        )
    if not r.eval_lrs or any(lr <= 0 for lr in r.eval_lrs):
        raise ConfigError(f"rl.eval_lrs must be a non-empty list of positive step sizes, got {list(r.eval_lrs)}")
