"""Combinators over update rules, in the way of optax: ``chain``, ``partition`` and ``first_order``.

* ``chain(a, b)``: ``b`` transforms what ``a`` returns, ``u = b(a(g))``; each keeps its own state.
* ``partition((spec, rule), ...)``: each parameter group (an ``adapt=`` spec: ``"all"``, ``"head"``, a regular
  expression, a list of names or a predicate; the first group that names a parameter takes it) gets its own rule.
* ``first_order(rule)``: ``rule`` sees the inner gradients and loss as constants (FOMAML's d theta'/d theta = I).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from torch import nn

from ..params import AdaptSpec, select_names
from .base import State, UpdateRule, stop_gradient


def _rule(rule: object, where: str) -> UpdateRule:
    if not isinstance(rule, UpdateRule):
        raise TypeError(f"{where} takes innerloop UpdateRules, got {type(rule).__name__}")
    return rule


class Chain(UpdateRule):
    """``u = r_n(... r_1(g))``: every rule transforms the updates of the one before (``chain(*rules)``).

    Args:
        *rules: the rules, applied in order; meta-parameter keys ``rules.<i>.<key>``.
    """

    rules: nn.ModuleList

    def __init__(self, *rules: UpdateRule) -> None:
        super().__init__()
        if not rules:
            raise ValueError("chain() needs at least one update rule")
        self.rules = nn.ModuleList(_rule(r, "chain") for r in rules)

    def bind_children(self, shapes, steps, like, head):
        """Every rule serves all the parameters."""
        for rule in self.rules:
            rule.bind(shapes, steps, like, head)

    def init_state(self, params):
        """One state per rule."""
        return tuple(rule.init_state(params) for rule in self.rules)

    def forward(self, grads, state, params, step, loss):
        """The rules in order, each on the previous one's updates."""
        updates, states = grads, []
        for rule, own in zip(self.rules, state):
            updates, own = rule(updates, own, params, step, loss)
            states.append(own)
        return updates, tuple(states)

    def describe(self) -> str:
        """``chain(a, b, ...)``."""
        return f"chain({', '.join(cast(UpdateRule, r).describe() for r in self.rules)})"


chain = Chain


class Partition(UpdateRule):
    """Different rules for different parameter groups, chosen by ``adapt=`` specs.

    A parameter belongs to the first group whose spec selects it; every adapted parameter must
    belong to one group (end with ``("all", rule)`` for the rest) and every group must get one.

    Args:
        *groups: ``(spec, rule)`` pairs, or one ``{spec: rule}`` mapping (string or predicate specs).
    """

    groups: nn.ModuleList

    def __init__(self, *groups: tuple[AdaptSpec, UpdateRule] | Mapping[AdaptSpec, UpdateRule]) -> None:
        super().__init__()
        pairs: list[tuple[AdaptSpec, UpdateRule]] = []
        for group in groups:
            if isinstance(group, Mapping):
                pairs.extend(group.items())
            elif isinstance(group, tuple) and len(group) == 2:
                pairs.append(group)
            else:
                raise TypeError(f"partition takes (spec, rule) pairs or a {{spec: rule}} mapping, got {group!r}")
        if not pairs:
            raise ValueError('partition() needs at least one (spec, rule) group, e.g. ("head", SGD(0.1))')
        self.specs: list[AdaptSpec] = [spec for spec, _ in pairs]
        self.groups = nn.ModuleList(_rule(rule, "partition") for _, rule in pairs)
        self.names: list[list[str]] = []

    def bind_children(self, shapes, steps, like, head):
        """Assign every parameter to its group, then bind each group's rule to its parameters only."""
        remaining = list(shapes)
        names: list[list[str]] = []
        for i, spec in enumerate(self.specs):
            chosen = set(select_names(list(shapes), spec, head, what=f"partition group {i}"))
            mine = [n for n in remaining if n in chosen]
            if not mine:
                raise ValueError(
                    f"partition group {i} ({_show(spec)}) gets no parameter: the groups before it take {sorted(chosen)}"
                )
            names.append(mine)
            remaining = [n for n in remaining if n not in chosen]
        if remaining:
            raise ValueError(
                f"partition leaves {remaining} without a rule; add a group for them, e.g. ('all', SGD(lr)) last"
            )
        for rule, group in zip(self.groups, names):
            rule.bind({n: shapes[n] for n in group}, steps, like, head)
        self.names = names

    def _subsets(self, tree: Mapping) -> Iterable[dict]:
        for group in self.names:
            yield {n: tree[n] for n in group}

    def init_state(self, params):
        """One state per group, over that group's parameters."""
        self._bound()
        return tuple(rule.init_state(sub) for rule, sub in zip(self.groups, self._subsets(params)))

    def forward(self, grads, state, params, step, loss):
        """Each group's rule on its own gradients and parameters; the updates merged in ``grads``' order."""
        self._bound()
        updates: dict = {}
        states: list[State] = []
        for rule, own, g, p in zip(self.groups, state, self._subsets(grads), self._subsets(params)):
            u, own = rule(g, own, p, step, loss)
            updates.update(u)
            states.append(own)
        return {n: updates[n] for n in grads}, tuple(states)

    def _bound(self) -> None:
        if not self.names:
            raise ValueError("a partition rule is used before a learner bound it to its parameters")

    def describe(self) -> str:
        """``partition(spec: rule, ...)``."""
        groups = (f"{_show(s)}: {cast(UpdateRule, r).describe()}" for s, r in zip(self.specs, self.groups))
        return "partition(" + ", ".join(groups) + ")"


partition = Partition


def _show(spec: AdaptSpec) -> str:
    if isinstance(spec, str):
        return repr(spec)
    if callable(spec):
        return getattr(spec, "__name__", "predicate")
    return repr(list(spec))


class FirstOrder(UpdateRule):
    """``rule`` on constant gradients and loss (``stop_gradient``): a first-order inner loop for any rule.

    ``MAML(model, update_rule=first_order(SGD(a)))`` is ``FOMAML(model, inner_lr=a)``; the rule's own
    meta-parameters (e.g. Meta-SGD's rates) still get their gradient.

    Args:
        rule: the rule to run first order (its keys become ``rule.<key>``).
    """

    def __init__(self, rule: UpdateRule) -> None:
        super().__init__()
        self.rule = _rule(rule, "first_order")

    def bind_children(self, shapes, steps, like, head):
        """The wrapped rule serves the same parameters."""
        self.rule.bind(shapes, steps, like, head)

    def init_state(self, params):
        """The wrapped rule's state."""
        return self.rule.init_state(params)

    def forward(self, grads, state, params, step, loss):
        """The wrapped rule on detached gradients and loss."""
        grads, loss = stop_gradient(grads, loss)
        return self.rule(grads, state, params, step, loss)

    def describe(self) -> str:
        """``first_order(rule)``."""
        return f"first_order({self.rule.describe()})"


first_order = FirstOrder
