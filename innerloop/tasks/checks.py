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
from dataclasses import dataclass

import torch

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


def check_batch_shapes(support_x, support_y, query_x, query_y) -> None:
    """The shape rules of a ``TaskBatch``: ``x (T, S, *example)``, ``y (T, S, *target)``, same T, S >= 1."""
    tensors = dict(zip(FIELDS, (support_x, support_y, query_x, query_y)))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"TaskBatch {name} must be a torch.Tensor, got {type(t).__name__}")
    sizes = {name: t.shape[0] if t.dim() else None for name, t in tensors.items()}
    if not _enabled:
        if len(set(sizes.values())) != 1:
            raise InputError(f"TaskBatch tensors disagree on the number of tasks (leading dimension): {sizes}")
        return
    for name in ("support_x", "query_x"):
        t = tensors[name]
        if t.dim() < 3:
            raise InputError(
                f"TaskBatch {name} has shape {_shape(t)}, expected (tasks, examples, *features) with at least 3 "
                f"dimensions; for one task add the task dimension ({name}.unsqueeze(0)), for scalar inputs a "
                f"feature dimension ({name}.unsqueeze(-1))"
            )
    for name in ("support_y", "query_y"):
        t = tensors[name]
        if t.dim() < 2:
            raise InputError(
                f"TaskBatch {name} has shape {_shape(t)}, expected (tasks, examples, ...): a batch needs a task "
                f"dimension; for one task use {name}.unsqueeze(0)"
            )
    if len(set(sizes.values())) != 1:
        raise InputError(
            f"TaskBatch tensors disagree on the number of tasks (leading dimension): {sizes}. "
            "Stack every tensor over the same task dimension."
        )
    for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
        if tensors[x].shape[1] != tensors[y].shape[1]:
            raise InputError(
                f"{x} has {tensors[x].shape[1]} examples per task but {y} has {tensors[y].shape[1]} "
                f"(shapes {_shape(tensors[x])} and {_shape(tensors[y])}); they must match."
            )
        if tensors[x].shape[1] == 0:
            role = x.split("_")[0]
            raise InputError(f"{x} has shape {_shape(tensors[x])}: every task needs at least one {role} example")
    if support_x.shape[2:] != query_x.shape[2:]:
        raise InputError(
            f"support_x examples have shape {_shape(support_x)[2:]} but query_x examples {_shape(query_x)[2:]} "
            f"(batch shapes {_shape(support_x)} and {_shape(query_x)}); support and query must be alike"
        )
    if support_y.shape[2:] != query_y.shape[2:]:
        raise InputError(
            f"support_y targets have shape {_shape(support_y)[2:]} but query_y targets {_shape(query_y)[2:]} (batch "
            f"shapes {_shape(support_y)} and {_shape(query_y)}); give both of one shape"
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
    targets = [n for n in named if n.endswith("_y")]
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
    return _values({name: getattr(batch, name) for name in FIELDS}, one_hot, True, where)


def check_task(
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    example_shape: tuple[int, ...] | None = None,
    one_hot: bool = True,
    where: str = "adapt",
) -> Labels | None:
    """One task's support set (``adapt``): no task dimension, matching sizes, non-empty, finite values.

    ``example_shape`` is the shape of one input example the learner has seen in its batches (if any):
    a ``(T, S, *example)`` tensor is then recognised as a whole batch.
    """
    if not _enabled:
        return None
    for name, t in (("support_x", support_x), ("support_y", support_y)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{where} needs tensors; {name} is a {type(t).__name__}")
    batch_hint = (
        f"{where} takes ONE task (support_x (examples, ...), support_y (examples, ...)): for task i of a batch pass "
        f"batch.support_x[i], batch.support_y[i]; evaluate(batch, steps) adapts every task of a batch"
    )
    if example_shape is not None and tuple(support_x.shape[2:]) == tuple(example_shape) != tuple(support_x.shape[1:]):
        raise InputError(
            f"support_x has shape {_shape(support_x)}, a batch of {support_x.shape[0]} tasks; {batch_hint}"
        )
    if support_x.dim() < 2:
        raise InputError(
            f"support_x has shape {_shape(support_x)}, expected (examples, *features): "
            "for scalar inputs add a feature dimension (support_x.unsqueeze(-1))"
        )
    labels = not (support_y.is_floating_point() or support_y.is_complex())
    if labels and support_y.dim() != 1:
        raise InputError(
            f"support_y holds integer labels of shape {_shape(support_y)}, expected (examples,): "
            + (batch_hint if support_y.dim() == 2 else "one label per example")
        )
    if support_y.dim() == 0 or support_x.shape[0] != support_y.shape[0]:
        raise InputError(
            f"support_x {_shape(support_x)} and support_y {_shape(support_y)} must hold the same number "
            "of examples (first dimension)"
        )
    if support_x.shape[0] == 0:
        raise InputError(f"support_x has shape {_shape(support_x)}: {where} needs at least one support example")
    if not torch.compiler.is_compiling():
        return _values({"support_x": support_x, "support_y": support_y}, one_hot, False, where)
    return None


def check_output_target(output: torch.Tensor, target: torch.Tensor, labels: Labels | None = None) -> None:
    """The default loss's shape rules, per task (valid under ``vmap``: shapes only): a float target of the
    output's shape (no broadcast), integer labels ``(examples,)`` beside logits ``(examples, classes)`` and,
    given the batch's label range, labels below the number of classes."""
    if not _enabled:
        return
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
