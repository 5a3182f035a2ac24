"""Inner training that persists across truncations: the state of a batch of inner runs and one truncation.

An inner run trains a model of a task family with an update rule whose meta-parameters are ``meta``:

    g_t = grad l(theta_t; b_t),   (u_t, s_{t+1}) = rule(g_t, s_t, theta_t, t, l(theta_t; b_t)),   theta_{t+1} = theta_t + u_t

for t = 0 .. H-1 (the horizon), then restarts on a new task. The meta-objective is a sum of per-step terms,
F = sum_t f_t, so that it splits exactly over truncations (what makes Persistent ES unbiased):
``mean``: f_t = l(theta_t; b_t) / H; ``log``: f_t = log l(theta_t; b_t) / H (every step's relative progress
weighs the same, so the end of a run, where the loss is small, counts as much as its start);
``validation``: f_t = l(theta_{t+1}; v_t) / H on held-out batches v_t; ``final``: f_{H-1} = l(theta_H; b_H), zero
elsewhere. Runs are batched over particles with ``torch.func.vmap`` (``strategy="vmap"``) or a loop (``"loop"``,
same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.func import grad_and_value
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..core.params import Params
from ..core.rules import UpdateRule, apply_updates
from ..errors import ConfigError
from ..tasks.seeding import derive_seed
from ..validate import positive_int
from .families import TaskFamily
from .trees import STRATEGIES, index_tree, map_particles

OBJECTIVES = ("mean", "log", "final", "validation")
LOG_FLOOR = 1e-12  # ``log``: losses are clamped here, so a loss of exactly 0 does not give -inf


@dataclass
class InnerStates:
    """A batch of inner runs, every tensor with a leading particle dimension ``P``.

    ``params``: the models' parameters; ``rule_state``: the rule's per-run state (None for stateless
    rules); ``step``: the inner step every run is at (runs advance in lock-step); ``tasks``: the task seed of
    each run; ``resets``: how many times the runs were restarted (new tasks are derived from it);
    ``seed``: the seed the task seeds derive from; ``extra``: an estimator's own per-run state (PES's xi).
    """

    params: Params
    rule_state: Any
    step: int
    tasks: list[int]
    resets: int
    seed: int
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain containers of tensors, ints and lists (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "params": self.params,
            "rule_state": self.rule_state,
            "step": self.step,
            "tasks": list(self.tasks),
            "resets": self.resets,
            "seed": self.seed,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InnerStates:
        """The inverse of :meth:`to_dict`."""
        return cls(**d)


class Unroll:
    """Truncated inner training of ``family``'s models by ``rule``: the pure function every estimator differentiates.

    Args:
        family: the task family (initial parameters, loss, seeded data stream).
        rule: an update rule, bound here to the family's parameter shapes (its meta-parameters: ``rule.meta()``).
        horizon: H, inner steps of one run before it restarts on a new task.
        truncation: T, inner steps per truncation (the last truncation of a run may be shorter).
        objective: ``"mean"``, ``"log"``, ``"final"`` or ``"validation"`` (module docstring).
        strategy: ``"vmap"`` or ``"loop"`` over particles.
    """

    def __init__(
        self,
        family: TaskFamily,
        rule: UpdateRule,
        horizon: int,
        truncation: int,
        objective: str = "mean",
        strategy: str = "vmap",
    ) -> None:
        self.family, self.rule = family, rule
        self.horizon = positive_int("horizon", horizon)
        self.truncation = positive_int("truncation", truncation)
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.objective, self.strategy = objective, strategy
        like = index_tree(family.inits([0]), 0)  # on the family's device (``family.to`` before building the unroll)
        rule.bind({n: p.shape for n, p in like.items()}, self.horizon, next(iter(like.values())))

    def task_seeds(self, seed: int, slots: int, resets: int) -> list[int]:
        """The task seed of each of ``slots`` runs after ``resets`` restarts."""
        return [derive_seed(seed, "task", slot, resets) for slot in range(slots)]

    def start(self, seed: int, slots: int, resets: int = 0, repeat: int = 1, extra=None) -> InnerStates:
        """Fresh runs at step 0 on new tasks: ``slots`` tasks, each run ``repeat`` times (antithetic pairs: 2)."""
        tasks = self.task_seeds(seed, slots, resets) * repeat
        params = self.family.inits(tasks)
        stateless = self.rule.init_state(index_tree(params, 0)) is None
        rule_state = None if stateless else map_particles(self.rule.init_state, (params,), len(tasks), self.strategy)
        return InnerStates(params, rule_state, 0, tasks, resets, seed, dict(extra or {}))

    def length(self, states: InnerStates) -> int:
        """Inner steps of the next truncation from ``states``."""
        return min(self.truncation, self.horizon - states.step)

    def data(self, states: InnerStates, length: int) -> tuple[Any, Any]:
        """The train batches of the next ``length`` steps (plus batch H for ``final``) and the held-out ones."""
        start, last = states.step, states.step + length == self.horizon
        count = length + (1 if self.objective == "final" and last else 0)
        train = self.family.batches(states.tasks, start, count, "train")
        val = self.family.batches(states.tasks, start, length, "val") if self.objective == "validation" else None
        return train, val

    def run_one(self, meta, params, rule_state, train, val, start: int, length: int):
        """One particle's truncation: ``(objective terms summed, inner losses (length,), params, rule_state)``."""
        loss_fn, H = self.family.loss, self.horizon
        total = params[next(iter(params))].new_zeros(())
        losses = []
        for k in range(length):
            t = start + k
            grads, loss = grad_and_value(loss_fn)(params, index_tree(train, k))
            updates, rule_state = self.rule.run(grads, rule_state, params, t, loss, meta)
            params = apply_updates(params, updates)
            losses.append(loss)
            if self.objective == "mean":
                total = total + loss / H
            elif self.objective == "log":
                total = total + loss.clamp_min(LOG_FLOOR).log() / H
            elif self.objective == "validation":
                total = total + loss_fn(params, index_tree(val, k)) / H
            elif t == H - 1:
                total = total + loss_fn(params, index_tree(train, k + 1))
        return total, torch.stack(losses), params, rule_state

    def run(self, meta: Params, states: InnerStates, batched_meta: bool = False):
        """The next truncation of every run: ``(objective (P,), losses (P, T), params, rule_state)``.

        ``meta`` is shared by all runs, or (``batched_meta``) one pytree per particle (ES, PES).
        """
        length = self.length(states)
        train, val = self.data(states, length)
        start, P = states.step, len(states.tasks)
        if batched_meta:

            def fn(m, p, s, b, v):
                return self.run_one(m, p, s, b, v, start, length)

            return map_particles(fn, (meta, states.params, states.rule_state, train, val), P, self.strategy)

        def shared(p, s, b, v):
            return self.run_one(meta, p, s, b, v, start, length)

        return map_particles(shared, (states.params, states.rule_state, train, val), P, self.strategy)

    def advance(self, states: InnerStates, params: Params, rule_state: Any, repeat: int = 1) -> InnerStates:
        """The runs after a truncation (detached); restarted on new tasks once they reach the horizon."""
        step = states.step + self.length(states)
        if step >= self.horizon:
            slots = len(states.tasks) // repeat
            return self.start(states.seed, slots, states.resets + 1, repeat, extra=None)
        detach = tree_flatten(rule_state)
        rule_state = tree_unflatten([x.detach() if isinstance(x, torch.Tensor) else x for x in detach[0]], detach[1])
        params = {n: p.detach() for n, p in params.items()}
        return replace(states, params=params, rule_state=rule_state, step=step)
