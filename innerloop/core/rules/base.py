"""The update-rule contract: ``(grads, state, params, step, loss) -> (updates, state)``, as in optax.

One inner step of a task is ``theta' = apply_updates(theta, updates)`` with ``theta + u`` per tensor.
A rule's meta-parameters (learned rates, preconditioners, LSTM weights) are its ``nn.Parameter`` s;
:meth:`UpdateRule.meta` hands them out as an explicit ``name -> tensor`` pytree and
:meth:`UpdateRule.run` evaluates the rule at any such pytree (``torch.func.functional_call``), so the
learner that registers the rule owns them and the engine passes them in explicitly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ...errors import ConfigError
from ..params import Params

State = Any


def apply_updates(params: Params, updates: Mapping[str, torch.Tensor]) -> Params:
    """``theta + u`` for every tensor that has an update (the others unchanged)."""
    return {n: p + updates[n] if n in updates else p for n, p in params.items()}


def stop_gradient(grads: Params, loss: torch.Tensor) -> tuple[Params, torch.Tensor]:
    """First order: the inner gradients and the support loss as constants (d theta' / d theta = I)."""
    return {n: g.detach() for n, g in grads.items()}, loss.detach()


def _positional_arity(fn) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in parameters)


class UpdateRule(nn.Module):
    """Base class: :meth:`forward` maps ``(grads, state, params, step, loss)`` to ``(updates, state)``.

    ``grads``, ``params`` and ``updates`` are ``name -> tensor`` dicts of the adapted parameters;
    ``state`` is the rule's per-task state (:meth:`init_state`; None for stateless rules), never
    mutated in place; ``loss`` is the support loss at ``params``. Meta-parameters are created by
    :meth:`setup` once the adapted shapes are known (``bind``), so a rule value can exist before its model.
    """

    def setup(self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor) -> None:
        """Create the rule's meta-parameters for these adapted parameters (default: none)."""

    def bind(
        self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor, head: list[str] | None = None
    ) -> None:
        """``setup`` once; a rule already serving other parameters is refused (its meta-parameters fit those).

        ``head`` names the model's output-layer parameters (for ``partition``'s ``"head"`` groups).
        """
        self._check_contract()
        dims = {name: tuple(shape) for name, shape in shapes.items()}
        bound = getattr(self, "_shapes", None)
        if bound is not None and bound != dims:
            raise ValueError(
                f"{self.describe()} was already set up for other parameters ({len(bound)} tensors, e.g. "
                f"{next(iter(bound.items()))}); create a new update rule for each learner"
            )
        if bound is None:
            self.bind_children(shapes, steps, like, head)
            self.setup(shapes, steps, like)
            self._shapes = dims

    def bind_children(
        self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor, head: list[str] | None
    ) -> None:
        """Bind the rules this one is built from (combinators), before its own ``setup``."""

    def _check_contract(self) -> None:
        """Refuse, in one line, a subclass written for the contract before issue 19 (rules returned params)."""
        cls = type(self)
        old = cls.update is not UpdateRule.update or (
            cls.forward is not UpdateRule.forward and _positional_arity(cls.forward) == 4
        )
        if old:
            raise ConfigError(
                f"{cls.__name__} implements the old rule contract (update(params, grads, step, state, loss) or "
                "forward(params, grads, step) returning new params); write forward(grads, state, params, step, loss) "
                "-> (updates, state) instead, the engine applies params + updates"
            )

    def init_state(self, params: Params) -> State:
        """Per-task state before the first inner step (stateless rules: None)."""
        return None

    def forward(
        self, grads: Params, state: State, params: Params, step: int, loss: torch.Tensor
    ) -> tuple[Params, State]:  # pragma: no cover
        """One inner step: the updates ``u`` (``theta' = theta + u``) and the next state."""
        raise NotImplementedError

    def meta(self) -> Params:
        """The rule's meta-parameters as a ``name -> tensor`` pytree (keys of ``named_parameters``)."""
        return dict(self.named_parameters())

    def run(
        self,
        grads: Params,
        state: State,
        params: Params,
        step: int,
        loss: torch.Tensor,
        meta: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[Params, State]:
        """:meth:`forward` with the meta-parameters ``meta`` (default: the rule's own)."""
        if not meta:
            return self(grads, state, params, step, loss)
        return functional_call(self, dict(meta), (grads, state, params, step, loss))

    def update(
        self, params: Params, grads: Params, step: int, state: State, loss: torch.Tensor
    ) -> tuple[Params, State]:
        """One step applied: ``(params + updates, state)`` (a convenience; the rule itself is :meth:`forward`)."""
        updates, state = self(grads, state, params, step, loss)
        return apply_updates(params, updates), state

    def describe(self) -> str:
        """A short human-readable name with the rule's settings, e.g. ``SGD(lr=0.01)``."""
        return type(self).__name__
