"""Evaluation under task-distribution shift: in-distribution and shifted performance, 95% CI, and the change.

Each shift (``tasks.shift``) is evaluated on the run's test protocol (``eval.*``: the same seeded tasks,
steps and batch size); the change is ``shifted - in-distribution`` of the means, its 95% CI half-width
``sqrt(ci_a^2 + ci_b^2)`` (the two sets treated as independent samples of tasks).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from .. import registry
from ..errors import ConfigError
from ..tasks.shift import PROTOCOL, Shift, shift_source
from .config import Config, task_kind, validate
from .evaluate import evaluate_config, evaluate_rl
from .task_sources import build_tasks, load_image_dataset

_log = logging.getLogger(__name__)
IN_DISTRIBUTION = "in-distribution"
HIGHER_IS_BETTER = ("accuracy", "return", "success")


def shifted_config(config: Config, shift: Shift) -> Config:
    """A copy of ``config`` whose evaluation protocol ``shift`` changes (``ways``, ``shots``, ``split``), checked."""
    cfg = copy.deepcopy(config)
    kind, family = task_kind(cfg), registry.task_family(cfg.task.name)
    if shift.name in ("ways", "split") and kind != "classification":
        raise ConfigError(
            f"--shift {shift.label} applies to image classification; this run is task.name={cfg.task.name}"
        )
    if shift.name == "ways":
        if registry.algorithm(cfg.algorithm.name).fixed_ways:
            raise ConfigError(
                f"--shift {shift.label}: algorithm.name={cfg.algorithm.name} has a head of task.ways={cfg.task.ways} "
                "outputs and is evaluated at those ways only; a ways shift needs a learner without one (protonets, ...)"
            )
        cfg.eval.ways = shift.value
    elif shift.name == "shots":
        if kind == "rl":
            raise ConfigError(f"--shift {shift.label} does not apply to meta-RL (episodes, not shots)")
        cfg.eval.shots = [shift.value]
    elif shift.name == "split":
        if family.folder:
            raise ConfigError(f"--shift {shift.label}: an image_folder's splits are roles; set task.root to other data")
        cfg.task.test_split = shift.value
    validate(cfg)
    return cfg


def overlap(config: Config, shifted: Config) -> dict[str, int]:
    """Classes (and class groups, e.g. Omniglot alphabets: the part of a class name before '/') of the shifted
    test split that the training split also holds."""
    train = load_image_dataset(config, config.task.train_split).class_names
    test = load_image_dataset(shifted, shifted.task.test_split).class_names
    group = {str(n).split("/")[0] for n in train}
    return {
        "classes": len(set(map(str, test))),
        "shared_classes": len(set(map(str, train)) & set(map(str, test))),
        "groups": len({str(n).split("/")[0] for n in test}),
        "shared_groups": len({str(n).split("/")[0] for n in test} & group),
    }


def shifted_tasks(config: Config, shift: Shift | None, split: str = "test", shots=None, queries=None):
    """The ``split`` task source of ``config`` moved by ``shift`` (a protocol shift: ``shifted_config``'s)."""
    if shift is not None and shift.name in PROTOCOL:
        config = shifted_config(config, shift)
    source = build_tasks(config, split, shots=shots, queries=queries)
    if shift is None or shift.name in PROTOCOL:
        return source
    try:
        return shift_source(source, shift)
    except ValueError as err:
        raise ConfigError(f"{err} (this run: task.name={config.task.name})") from None


def evaluate_shift(learner, config: Config, shift: Shift | None = None, group=None) -> dict:
    """``{shots: {step: {metric: summary}}}`` of ``learner`` on the test tasks of ``config`` moved by ``shift``
    (None: the plain evaluation, exactly ``evaluate_config`` / ``evaluate_rl``; meta-RL under the key ``"rl"``)."""
    cfg = config if shift is None or shift.name not in PROTOCOL else shifted_config(config, shift)

    def tasks(c, split, shots=None, queries=None):
        return shifted_tasks(c, None if shift is not None and shift.name in PROTOCOL else shift, split, shots, queries)

    if task_kind(cfg) == "rl":
        return {"rl": evaluate_rl(learner, cfg, source=tasks(cfg, "test"))}
    return evaluate_config(learner, cfg, tasks, group=group)


def evaluate_shifts(learner, config: Config, shifts: list[Shift], group=None) -> dict:
    """The in-distribution results and those of each shift, ``{label: results}``, with ``"change"`` per shift
    (see :func:`changes`) and the class overlap of a ``split`` shift."""
    for shift in shifts:  # every shift fits the run (one line if not) before anything is evaluated
        shifted_tasks(config, shift)
    base = evaluate_shift(learner, config, None, group)
    table: dict[str, dict[str, Any]] = {IN_DISTRIBUTION: {"results": base}}
    for shift in shifts:
        results = evaluate_shift(learner, config, shift, group)
        size = None if math.isnan(shift.size) else shift.size  # a split has none
        entry: dict[str, Any] = {"shift": shift.name, "size": size, "results": results}
        entry["change"] = changes(base, results)
        if shift.name == "split":
            entry["overlap"] = overlap(config, shifted_config(config, shift))
            if entry["overlap"]["shared_classes"]:
                _log.warning(
                    "--shift %s: %d of its %d classes are in the training split %s too",
                    shift.label,
                    entry["overlap"]["shared_classes"],
                    entry["overlap"]["classes"],
                    config.task.train_split,
                )
        table[shift.label] = entry
    return table


def changes(base: dict, shifted: dict) -> dict:
    """``{shots: {step: {metric: {"mean", "ci95"}}}}``: shifted minus in-distribution mean at the same shots
    (the first in-distribution shots where the shift changed them) and the 95% CI of that difference."""
    out: dict = {}
    for k, per_step in shifted.items():
        reference = base.get(k, next(iter(base.values())))
        for step, metrics in per_step.items():
            for name, s in metrics.items():
                r = reference.get(step, {}).get(name)
                if r is not None:
                    out.setdefault(k, {}).setdefault(step, {})[name] = {
                        "mean": s["mean"] - r["mean"],
                        "ci95": math.sqrt(s["ci95"] ** 2 + r["ci95"] ** 2),
                    }
    return out


def primary_metric(results: dict) -> str:
    """The metric a shift table shows: accuracy, else return, else loss."""
    names = {n for per_step in results.values() for m in per_step.values() for n in m}
    return next((n for n in ("accuracy", "return") if n in names), "loss")


def format_shift_table(table: dict) -> str:
    """Rows: each condition at every (shots, step) of the in-distribution results: mean ± CI, and the change."""
    base = table[IN_DISTRIBUTION]["results"]
    metric = primary_metric(base)
    scale = 100.0 if metric == "accuracy" else 1.0
    worse = "lower" if metric in HIGHER_IS_BETTER else "higher"
    lines = [
        f"{metric}{' %' if scale != 1 else ''} (mean ± 95% CI; change = shifted - in-distribution, {worse} is worse)"
    ]
    for label, entry in table.items():
        results = entry["results"]
        cells = []
        for k, per_step in results.items():
            for step, metrics in per_step.items():
                s = metrics[metric]
                cell = f"{'' if k == 'rl' else f'{k}-shot '}{step} step{'s' if step != 1 else ''}: "
                cell += f"{s['mean'] * scale:.3f} ± {s['ci95'] * scale:.3f}"
                c = entry.get("change", {}).get(k, {}).get(step, {}).get(metric)
                if c is not None:
                    cell += f" ({c['mean'] * scale:+.3f} ± {c['ci95'] * scale:.3f})"
                if s.get("nonfinite"):  # diverged adaptations: the mean is meaningless, the count and median are not
                    cell += f" [{s['nonfinite']}/{s['n']} non-finite, median {s['median'] * scale:.3f}]"
                cells.append(cell)
        lines.append(f"{label:<22}" + " | ".join(cells))
    return "\n".join(lines)


def probe_network(config: Config):
    """The diversity coefficient's probe: ``config``'s network with a final layer of ``task.ways`` classes (or the
    regression outputs), initialised from ``train.seed``, in ``train.dtype``."""
    import torch

    from .builders import DTYPES, image_shape

    family, model = registry.task_family(config.task.name), registry.model(config.model.name)
    if family.kind == "rl":
        raise ConfigError("the diversity coefficient compares the examples of supervised tasks; this run is meta-RL")
    torch.manual_seed(config.train.seed)
    if family.kind == "regression":
        probe = model.make(config, family.outputs, family.shape)
    else:
        channels, size = image_shape(config)
        probe = model.make(config, config.task.ways, (channels, size, size))
    return probe.to(DTYPES[config.train.dtype])


def task_diversity(
    config: Config, shift: Shift | None = None, num_tasks: int = 20, queries: int | None = None, **task2vec_options
) -> dict:
    """The diversity coefficient (``tasks.diversity``) of ``config``'s meta-training tasks (``queries`` query
    examples each, default task.queries: more give a steadier Fisher), moved by ``shift`` (a task-source shift),
    with :func:`probe_network` as the probe: a summary over the pairs of tasks."""
    from ..tasks.diversity import diversity_coefficient

    if shift is not None and shift.name in PROTOCOL:
        raise ConfigError(
            f"--shift {shift.label} changes the evaluation protocol; for the diversity of another training "
            "distribution give its config instead (e.g. task.ways=20 or task.shots=1)"
        )
    return diversity_coefficient(
        probe_network(config), shifted_tasks(config, shift, "train", queries=queries), num_tasks, **task2vec_options
    )
