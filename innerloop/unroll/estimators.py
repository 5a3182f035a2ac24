"""Meta-gradient estimators over long unrolls, one interface: ``estimate(meta, states, seed) -> (grad, states, metrics)``.

* ``FullBPTT``: backprop through a whole run of H steps from a fresh start (exact dF/dmeta; short horizons).
* ``TruncatedBPTT``: backprop through the current truncation only, the runs persisting across calls
  (biased: it ignores the truncation's start state's dependence on meta; Williams & Peng 1990).
* ``AntitheticES``: the gradient of the Gaussian-smoothed truncation objective,
  g = 1/(2 N sigma^2) sum_i eps_i (L(meta + eps_i) - L(meta - eps_i)) (Salimans et al. 2017).
  Departs: both particles start from the task's state and the run continues from the positive one's.
* ``PersistentES``: Vicol, Metz & Sohl-Dickstein (2021), "Unbiased Gradient Estimation in Unrolled Computation
  Graphs with Persistent Evolution Strategies", ICML (Algorithm 2, antithetic): every particle keeps its own run
  and the sum xi of the perturbations it was unrolled with since its restart,
  xi_i <- xi_i + eps_i,  g = 1/(2 N sigma^2) sum_i xi_i (L_i^+ - L_i^-),
  unbiased for the smoothed objective of the whole run, summed over its truncations; xi resets with the run.

``seed`` makes an estimate deterministic (the perturbations are drawn from it), so a resumed run repeats exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch.utils._pytree import tree_map

from ..core.params import Params
from ..tasks.seeding import seeded_generator
from ..validate import positive_int
from .inner import InnerStates, Unroll

Metrics = dict[str, float]


class Estimator:
    """Base: ``init_states(seed)`` starts the runs, ``estimate`` returns one meta-gradient and advances them.

    Args:
        unroll: the inner training (family, rule, horizon, truncation, objective).
        tasks: tasks per estimate (ES, PES: antithetic pairs, one task each).
    """

    repeat = 1  # runs per task (antithetic estimators keep two)

    def __init__(self, unroll: Unroll, tasks: int) -> None:
        self.unroll, self.tasks = unroll, positive_int("tasks", tasks)

    def init_states(self, seed: int) -> InnerStates:
        """The runs before the first estimate."""
        return self.unroll.start(seed, self.tasks, repeat=self.repeat)

    def estimate(self, meta: Params, states: InnerStates, seed: int) -> tuple[Params, InnerStates, Metrics]:
        """(meta-gradient, next states, metrics)."""
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:
        """Name and settings."""
        u = self.unroll
        return f"{type(self).__name__}(tasks={self.tasks}, H={u.horizon}, T={u.truncation}, objective={u.objective})"


def _backprop(unroll: Unroll, meta: Params, states: InnerStates) -> tuple[Params, torch.Tensor, Any]:
    leaves = {k: v.detach().requires_grad_(True) for k, v in meta.items()}
    objective, losses, params, rule_state = unroll.run(leaves, states)
    grads = torch.autograd.grad(objective.mean(), list(leaves.values()), allow_unused=True)
    grad = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
    return grad, objective.detach(), (losses.detach(), params, rule_state)


class TruncatedBPTT(Estimator):
    """Backprop through the current truncation of persistent runs (mean over tasks)."""

    def estimate(self, meta, states, seed):
        """The gradient of the truncation's objective, the runs' start states held constant."""
        grad, objective, (losses, params, rule_state) = _backprop(self.unroll, meta, states)
        metrics = {"meta_loss": float(objective.mean()), "inner_loss": float(losses[:, -1].mean())}
        return grad, self.unroll.advance(states, params, rule_state), metrics


class FullBPTT(Estimator):
    """Backprop through whole runs of H steps, each estimate on new tasks (requires truncation = horizon)."""

    def __init__(self, unroll: Unroll, tasks: int) -> None:
        if unroll.truncation < unroll.horizon:
            raise ValueError(
                f"FullBPTT unrolls whole runs: give truncation={unroll.horizon} (the horizon), got {unroll.truncation}"
            )
        super().__init__(unroll, tasks)

    def estimate(self, meta, states, seed):
        """dF/dmeta of the full-horizon objective on fresh runs (``states`` counts the restarts)."""
        fresh = self.unroll.start(states.seed, self.tasks, states.resets)
        grad, objective, (losses, _, _) = _backprop(self.unroll, meta, fresh)
        metrics = {"meta_loss": float(objective.mean()), "inner_loss": float(losses[:, -1].mean())}
        return grad, replace(states, resets=states.resets + 1), metrics


class _Antithetic(Estimator):
    """Shared by ES and PES: draws the perturbations and evaluates +/- particles in one batch."""

    def __init__(self, unroll: Unroll, tasks: int, sigma: float = 0.01) -> None:
        super().__init__(unroll, tasks)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def noise(self, meta: Params, seed: int) -> Params:
        """eps ~ N(0, sigma^2 I) per task for every meta-parameter, shape ``(tasks, *meta.shape)``."""
        g = seeded_generator(seed, "perturbation")
        return {
            k: (self.sigma * torch.randn((self.tasks, *v.shape), generator=g, dtype=torch.float64)).to(v)
            for k, v in meta.items()
        }

    def evaluate(self, meta: Params, eps: Params, states: InnerStates):
        """Objectives ``(L+, L-)`` per task and the runs' new parameters and rule states (``2 * tasks`` runs)."""
        particles = {k: torch.cat([v + eps[k], v - eps[k]]) for k, v in meta.items()}
        with torch.no_grad():
            objective, losses, params, rule_state = self.unroll.run(particles, states, batched_meta=True)
        n = self.tasks
        return objective[:n], objective[n:], losses, params, rule_state

    def combine(self, weights: Params, plus: torch.Tensor, minus: torch.Tensor) -> Params:
        """1/(2 N sigma^2) sum_i w_i (L_i^+ - L_i^-)."""
        diff = (plus - minus) / (2 * self.tasks * self.sigma**2)
        return {k: torch.tensordot(diff.to(w), w, dims=1) for k, w in weights.items()}

    def describe(self) -> str:
        return super().describe()[:-1] + f", sigma={self.sigma:g})"


class AntitheticES(_Antithetic):
    """Antithetic ES on each truncation; both particles of a pair start from the task's one run."""

    def estimate(self, meta, states, seed):
        """The smoothed truncation objective's gradient; the runs continue from the positive particles."""
        eps = self.noise(meta, seed)
        doubled = InnerStates(
            params={k: torch.cat([v, v]) for k, v in states.params.items()},
            rule_state=_cat_self(states.rule_state),
            step=states.step,
            tasks=states.tasks * 2,
            resets=states.resets,
            seed=states.seed,
            extra={},
        )
        plus, minus, losses, params, rule_state = self.evaluate(meta, eps, doubled)
        n = self.tasks
        keep_params = {k: v[:n] for k, v in params.items()}
        keep_state = _head(rule_state, n)
        metrics = {"meta_loss": float((plus + minus).mean() / 2), "inner_loss": float(losses[:, -1].mean())}
        return self.combine(eps, plus, minus), self.unroll.advance(states, keep_params, keep_state), metrics


class PersistentES(_Antithetic):
    """Persistent ES with antithetic pairs: each pair of runs keeps its accumulated perturbation xi."""

    repeat = 2

    def init_states(self, seed):
        """``tasks`` pairs of runs (+ particles first) and xi = 0."""
        return self.unroll.start(seed, self.tasks, repeat=2)

    def estimate(self, meta, states, seed):
        """xi += eps, g = 1/(2 N sigma^2) sum_i xi_i (L_i^+ - L_i^-); xi and the runs restart together."""
        eps = self.noise(meta, seed)
        xi = states.extra.get("xi")
        xi = eps if xi is None else {k: xi[k] + eps[k] for k in eps}
        plus, minus, losses, params, rule_state = self.evaluate(meta, eps, states)
        grad = self.combine(xi, plus, minus)
        new = self.unroll.advance(states, params, rule_state, repeat=2)
        new.extra = {"xi": xi} if new.step > 0 else {}
        metrics = {"meta_loss": float((plus + minus).mean() / 2), "inner_loss": float(losses[:, -1].mean())}
        return grad, new, metrics


def _cat_self(tree: Any) -> Any:
    return tree_map(lambda x: torch.cat([x, x]) if isinstance(x, torch.Tensor) else x, tree)


def _head(tree: Any, n: int) -> Any:
    return tree_map(lambda x: x[:n] if isinstance(x, torch.Tensor) else x, tree)


ESTIMATORS = {"full": FullBPTT, "tbptt": TruncatedBPTT, "es": AntitheticES, "pes": PersistentES}
