"""Checks at the boundary: what a user hands a learner, refused in one line before it becomes a wrong number.

Every learner entry point (``meta_loss``, ``meta_backward``, ``adapt``, ``evaluate``) and every
:class:`~innerloop.tasks.TaskBatch` call these functions, and only these:

* shapes (free): a task dimension, an example dimension, non-empty support and query sets,
  support and query examples of one shape, ``x`` and ``y`` of the same number of examples;
  with the default loss, a regression target of the model's output shape (an error, never a
  broadcast) and integer labels of the logits' shape;
* values (one cheap reduction per tensor and ONE host sync per batch): finite inputs, integer labels
  in ``0..ways-1`` (ways = the model's output size, with the default loss), float one-hot rows
  (which the default loss would fit by mean squared error);
* ``adapt`` given one task, not a batch of them.

Each failure raises :class:`~innerloop.errors.InputError` naming the tensor, the shapes seen and
expected, and the fix. Value checks run eagerly, outside ``vmap`` and outside a compiled
meta-loss. ``innerloop.set_checks(False)`` turns every check off, for the process or, as a
context manager (``with innerloop.set_checks(False): ...``), for a block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_leaves, tree_structure

from ..errors import InputError

_enabled = True


class set_checks:
    """Turn the boundary checks on or off: ``set_checks(False)`` for the rest of the process, or
    ``with set_checks(False): ...`` for a block (the previous setting comes back on exit), like
    ``torch.set_grad_enabled``.

    Args:
        enabled: whether learners and ``TaskBatch`` check their inputs (default on).
    """

    def __init__(self, enabled: bool) -> None:
        global _enabled
        self.previous = _enabled
        _enabled = bool(enabled)

    def __enter__(self) -> set_checks:
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self.previous


def checks_enabled() -> bool:
    """Whether boundary checks are on (``set_checks``)."""
    return _enabled


def value_checks_enabled() -> bool:
    """Checks that read tensor values (a host sync): on, and not inside a graph ``torch.compile`` traces."""
    return _enabled and not torch.compiler.is_compiling()


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


FIELDS = ("support_x", "support_y", "query_x", "query_y")


def leaves(name: str, tree: Any, where: str = "TaskBatch") -> list[tuple[str, torch.Tensor]]:
    """``(label, tensor)`` for every leaf of a field: ``[("support_x", t)]`` for a tensor, else labels such as
    ``support_x['input_ids']``; a leaf that is no tensor is refused naming it."""
    if isinstance(tree, torch.Tensor):
        return [(name, tree)]
    if not isinstance(tree, Mapping) or not tree:
        raise InputError(f"{where} {name} must be a torch.Tensor (or a dict of tensors), got {type(tree).__name__}")
    out = [(name + keystr(path), leaf) for path, leaf in tree_flatten_with_path(tree)[0]]
    for label, leaf in out:
        if not isinstance(leaf, torch.Tensor):
            raise InputError(f"{where} {label} must be a torch.Tensor, got {type(leaf).__name__}")
    return out


def examples(tree: Any, dim: int = 1) -> int:
    """The number of examples of a field (a tensor or pytree): its first leaf's size along ``dim``."""
    return tree_leaves(tree)[0].shape[dim]


def example_shape(tree: Any, lead: int = 2) -> tuple:
    """The shape of one example of a field after ``lead`` leading dimensions (per leaf, for a pytree)."""
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape[lead:])
    return tuple(tuple(t.shape[lead:]) for t in tree_leaves(tree))


def check_batch_shapes(support_x, support_y, query_x, query_y) -> None:
    """The shape rules of a ``TaskBatch``: ``x (T, S, *example)``, ``y (T, S, *target)``, same T, S >= 1
    (for pytree fields: every leaf, ``(T, S, ...)``, and support and query of one structure)."""
    trees = dict(zip(FIELDS, (support_x, support_y, query_x, query_y)))
    named = {name: leaves(name, tree) for name, tree in trees.items()}
    sizes = {label: t.shape[0] if t.dim() else None for name in FIELDS for label, t in named[name]}
    if not _enabled:
        if len(set(sizes.values())) != 1:
            raise InputError(f"TaskBatch tensors disagree on the number of tasks (leading dimension): {sizes}")
        return
    for name in FIELDS:
        for label, t in named[name]:
            if name.endswith("_x") and label == name and t.dim() < 3:
                raise InputError(
                    f"TaskBatch {name} has shape {_shape(t)}, expected (tasks, examples, *features) with at least 3 "
                    f"dimensions; for one task add the task dimension ({name}.unsqueeze(0)), for scalar inputs a "
                    f"feature dimension ({name}.unsqueeze(-1))"
                )
            if t.dim() < 2:
                raise InputError(
                    f"TaskBatch {label} has shape {_shape(t)}, expected (tasks, examples, ...): a batch needs a task "
                    f"dimension; for one task use {label}.unsqueeze(0)"
                )
    if len(set(sizes.values())) != 1:
        raise InputError(
            f"TaskBatch tensors disagree on the number of tasks (leading dimension): {sizes}. "
            "Stack every tensor over the same task dimension."
        )
    for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
        (first, t0), *others = named[x] + named[y]
        for label, t in others:
            if t.shape[1] != t0.shape[1]:
                raise InputError(
                    f"{first} has {t0.shape[1]} examples per task but {label} has {t.shape[1]} "
                    f"(shapes {_shape(t0)} and {_shape(t)}); they must match."
                )
        if t0.shape[1] == 0:
            role = x.split("_")[0]
            raise InputError(f"{first} has shape {_shape(t0)}: every task needs at least one {role} example")
    for support, query, what in (("support_x", "query_x", "examples"), ("support_y", "query_y", "targets")):
        if tree_structure(trees[support]) != tree_structure(trees[query]):
            raise InputError(
                f"{support} and {query} differ in structure ({[lab for lab, _ in named[support]]} and "
                f"{[lab for lab, _ in named[query]]}); give both the same keys"
            )
        for (ls, s), (lq, q) in zip(named[support], named[query]):
            if s.shape[2:] != q.shape[2:]:
                end = "support and query must be alike" if what == "examples" else "give both of one shape"
                raise InputError(
                    f"{ls} {what} have shape {_shape(s)[2:]} but {lq} {what} {_shape(q)[2:]} "
                    f"(batch shapes {_shape(s)} and {_shape(q)}); {end}"
                )


@dataclass(frozen=True)
class Labels:
    """The range of the integer labels a batch or a task holds.

    Args:
        low: the smallest label.
        high: the largest label.
    """

    low: int
    high: int


def _nonfinite(name: str, t: torch.Tensor, tasks: bool, where: str) -> InputError:
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    first = f", first in task {int(bad.flatten(1).any(1).nonzero()[0])}" if tasks and t.dim() > 1 else ""
    return InputError(
        f"{name} {_shape(t)} holds {count} NaN or infinite value(s){first}; {where} needs finite inputs: "
        "clean the data or drop those tasks"
    )


def _values(named: dict[str, torch.Tensor], one_hot: bool, tasks: bool, where: str) -> Labels | None:
    """Finite floats, non-negative integer labels, no one-hot float targets: one host sync for all of it."""
    targets = [n for n in named if n.split("[")[0].endswith("_y")]  # support_y, or a leaf: support_y['a']
    stats, meaning = [], []  # scalar tensors, and what each one says
    with torch.no_grad():
        for name, t in named.items():
            if t.is_floating_point():
                # NaN and inf survive a sum, many times cheaper than isfinite(t).all() (no mask); a sum that
                # overflows on finite values is told apart in the error path.
                stats.append(t.sum(dtype=torch.float32 if t.element_size() < 4 else None))
                meaning.append(("finite", name))
        labels = [named[n] for n in targets if not named[n].is_floating_point() and named[n].numel()]
        if labels and len(labels) == len(targets):
            for y in labels:
                stats += list(torch.aminmax(y))
                meaning += [("low", ""), ("high", "")]
        if one_hot:
            for name in targets:
                y = named[name]
                if y.is_floating_point() and y.dim() >= (3 if tasks else 2) and y.shape[-1] > 1 and y.numel():
                    stats.append(((y == 0) | (y == 1)).all() & (y.sum(-1) == 1).all())
                    meaning.append(("one_hot", name))
        if not stats:
            return None
        values = torch.stack([v.to(torch.float64) for v in stats]).tolist()  # the one host sync
    low = high = None
    for (kind, name), value in zip(meaning, values):
        if kind == "finite" and not math.isfinite(value) and not torch.isfinite(named[name]).all():
            raise _nonfinite(name, named[name], tasks, where)
        if kind == "one_hot" and value:
            raise InputError(
                f"{name} {_shape(named[name])} holds one-hot float rows, which the default loss would fit by mean "
                f"squared error; pass integer class labels ({name}.argmax(-1)) for cross-entropy, or a loss_fn of "
                "your own for soft targets"
            )
        if kind == "low":
            low = int(value) if low is None else min(low, int(value))
        if kind == "high":
            high = int(value) if high is None else max(high, int(value))
    if low is None or high is None:  # set together
        return None
    if low < 0:
        raise InputError(
            f"class labels of {where} range over {low}..{high}; labels must lie in 0..ways-1: "
            "relabel each task's classes 0..ways-1"
        )
    return Labels(low, high)


def check_batch_values(batch, one_hot: bool = True, where: str = "meta_loss") -> Labels | None:
    """Value checks of a ``TaskBatch``: finite inputs and targets, integer labels >= 0, no float one-hot
    targets (``one_hot``: the learner fits float targets with the default MSE). Returns the label range."""
    return _values(dict(lf for name in FIELDS for lf in leaves(name, getattr(batch, name))), one_hot, True, where)


def check_task(
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    seen_example: tuple | None = None,
    one_hot: bool = True,
    where: str = "adapt",
) -> Labels | None:
    """One task's support set (``adapt``): no task dimension, matching sizes, non-empty, finite values.

    ``seen_example`` is the shape of one input example the learner has seen in its batches (if any;
    :func:`example_shape`): a ``(T, S, *example)`` input is then recognised as a whole batch.
    Pytree inputs and targets (dicts of tensors) are checked leaf by leaf.
    """
    if not _enabled:
        return None
    xs, ys = (
        leaves("support_x", support_x, f"{where} needs tensors;"),
        leaves("support_y", support_y, f"{where} needs tensors;"),
    )
    batch_hint = (
        f"{where} takes ONE task (support_x (examples, ...), support_y (examples, ...)): for task i of a batch pass "
        f"batch.support_x[i], batch.support_y[i]; evaluate(batch, steps) adapts every task of a batch"
    )
    first = xs[0][1]
    if seen_example is not None and example_shape(support_x) == tuple(seen_example) != example_shape(support_x, 1):
        raise InputError(f"support_x has shape {_shape(first)}, a batch of {first.shape[0]} tasks; {batch_hint}")
    for label, t in xs:
        if t.dim() < 2:
            raise InputError(
                f"{label} has shape {_shape(t)}, expected (examples, *features): "
                f"for scalar inputs add a feature dimension ({label}.unsqueeze(-1))"
            )
    for label, y in ys:
        if not (y.is_floating_point() or y.is_complex()) and y.dim() != 1:
            raise InputError(
                f"{label} holds integer labels of shape {_shape(y)}, expected (examples,): "
                + (batch_hint if y.dim() == 2 else "one label per example")
            )
        for lx, x in xs:
            if y.dim() == 0 or x.shape[0] != y.shape[0]:
                raise InputError(
                    f"{lx} {_shape(x)} and {label} {_shape(y)} must hold the same number of examples (first dimension)"
                )
    for label, t in xs:
        if t.shape[0] != first.shape[0]:
            raise InputError(f"{xs[0][0]} {_shape(first)} and {label} {_shape(t)} hold different numbers of examples")
    if first.shape[0] == 0:
        raise InputError(f"support_x has shape {_shape(first)}: {where} needs at least one support example")
    if not torch.compiler.is_compiling():
        return _values(dict(xs + ys), one_hot, False, where)
    return None


def check_output_target(output: torch.Tensor, target: torch.Tensor, labels: Labels | None = None) -> None:
    """The default loss's shape rules, per task (valid under ``vmap``: shapes only): a float target of the
    output's shape (no broadcast), integer labels ``(examples,)`` beside logits ``(examples, classes)`` and,
    given the batch's label range, labels below the number of classes."""
    if not _enabled:
        return
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise InputError(
            f"the default loss takes a tensor output and target, got {type(output).__name__} and "
            f"{type(target).__name__}; give the learner a loss_fn of your own for pytree outputs or targets"
        )
    if target.is_floating_point():
        if output.shape != target.shape:
            fix = (
                " (y.unsqueeze(-1) for one output)"
                if output.shape == (*target.shape, 1)
                else " (y.squeeze(-1))"
                if target.shape == (*output.shape, 1)
                else ""
            )
            raise InputError(
                f"the model outputs {_shape(output)} but the regression target has shape {_shape(target)}; "
                f"the default loss (MSE) needs targets of the output's shape{fix}, it never broadcasts"
            )
        return
    if output.dim() < 1 or target.shape != output.shape[:-1]:
        raise InputError(
            f"integer class labels of shape {_shape(target)} beside logits {_shape(output)}: the default loss "
            f"(cross-entropy) needs one label per example, shape {_shape(output)[:-1]}"
        )
    classes = output.shape[-1]
    if labels is not None and labels.high >= classes:
        raise InputError(
            f"class labels reach {labels.high} but the model outputs {classes} classes (logits {_shape(output)}); "
            f"labels must lie in 0..{classes - 1}: relabel each task's classes 0..ways-1 or give the model "
            f"{labels.high + 1} outputs"
        )


def check_class_labels(learner: str, *labels: torch.Tensor) -> None:
    """Classification learners index by label: refuse float, complex and boolean labels clearly."""
    for y in labels:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise LabelDtypeError(
                f"{learner} needs integer class labels 0..N-1, got dtype {y.dtype} (shape {_shape(y)}); "
                "for one-hot rows pass y.argmax(-1), else y.long()"
            )


class LabelDtypeError(InputError, TypeError):
    """Class labels that are not integers."""


def check_points(x_dim: int, y_dim: int, where: str, **tensors: torch.Tensor) -> None:
    """Point-set learners (CNP): inputs ``(..., points, x_dim)`` and targets ``(..., points, y_dim)``."""
    if not _enabled:
        return
    for name, t in tensors.items():
        size = x_dim if name.endswith("_x") else y_dim
        if t.dim() < 2 or t.shape[-1] != size or not t.is_floating_point():
            kind = "inputs" if name.endswith("_x") else "targets"
            raise InputError(
                f"{where}: {name} has shape {_shape(t)} ({t.dtype}), expected float {kind} (..., points, {size}); "
                + (
                    f"add the feature dimension ({name}.unsqueeze(-1))"
                    if size == 1 and t.dim() >= 1 and t.shape[-1] != 1
                    else f"this CNP was built for x_dim={x_dim}, y_dim={y_dim}"
                )
            )
