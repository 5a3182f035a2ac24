"""A learned optimizer as a learner of the one trainer (``innerloop train --config lopt-mlp-omniglot``).

Meta-training minimises the inner runs' loss over their horizon H (``objective=mean``; Metz et al. 2022,
"Practical tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs)::

    min_meta  E_tasks[ 1/H sum_t L(phi_t) ],   phi_{t+1} = phi_t + rule(grad L(phi_t), state_t; meta)

``meta_step`` is one outer step of an estimator of :mod:`.estimators` (Vicol et al. 2021 for PES) and one step
of the meta-optimizer on the rule's meta-parameters; the inner runs persist across meta-steps, and
``state_dict`` holds them (parameters, rule state, step, task seeds, PES's accumulated perturbations), so the
trainer's checkpoint resumes a run exactly. Its tasks (:class:`OptimizerTasks`) are task seeds of a family.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import save
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..algorithms.step import Shard
from ..core.optim import hparams
from ..core.rules import UpdateRule
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..tasks.seeding import derive_seed
from .compare import learned_curves
from .estimators import ESTIMATORS, PersistentES
from .families import TaskFamily
from .inner import InnerStates, Unroll

INNER = "inner."  # the state_dict keys of the persistent inner runs
META_FILE = "meta.safetensors"  # written into every checkpoint: ``LearnedOptimizer.from_file(params, path)``


class OptimizerTasks:
    """The task seeds of one split of an optimizer task family: task ``i`` is ``derive_seed(seed, "task", i)``.

    Args:
        seed: the split's seed.
        slots: when given, task ``i`` is instead the task run-slot ``i % slots`` trained on after ``i // slots``
            restarts (:meth:`Unroll.task_seeds`): the meta-training tasks themselves.
    """

    def __init__(self, seed: int, slots: int | None = None) -> None:
        self.seed, self.slots = int(seed), slots
        self.num_tasks: int | None = None  # set by :meth:`seen`: how many of the meta-training tasks validate

    def task_seeds(self, ids: Sequence[int]) -> list[int]:
        """The seeds of tasks ``ids``."""
        if self.slots:
            return [derive_seed(self.seed, "task", i % self.slots, i // self.slots) for i in ids]
        return [derive_seed(self.seed, "task", int(i)) for i in ids]

    def sample(self, draw: int, tasks: Sequence[int], dtype: Any = None) -> list[int]:
        """The seeds of tasks ``tasks`` (``draw`` is ignored: a learned optimizer's runs draw their own tasks)."""
        return self.task_seeds(tasks)

    def seen(self, seed: int, slots: int, num_tasks: int) -> OptimizerTasks:
        """The first ``num_tasks`` meta-training tasks of a learner built with ``seed`` (``train.seed``) and ``slots``
        runs (``train.val_train_tasks``)."""
        seen = OptimizerTasks(run_seed(seed), slots)
        seen.num_tasks = num_tasks
        return seen


def run_seed(seed: int) -> int:
    """The seed of the meta-training runs' tasks of a learner built with ``seed``."""
    return derive_seed(seed, "tasks")


class LearnedOptimizerLearner(nn.Module):
    """Meta-trains ``rule`` on ``family`` with one of :data:`ESTIMATORS` (module header).

    Args:
        family: the inner training problems (on the device and dtype of the run).
        rule: the learned optimizer; its meta-parameters are this module's parameters.
        estimator: ``full``, ``tbptt``, ``es`` or ``pes``.
        horizon: inner steps of a run before it restarts on a new task.
        truncation: inner steps per estimate (``full``: the horizon).
        tasks: tasks per estimate (es, pes: antithetic pairs, one task each).
        objective: ``mean``, ``log``, ``final`` or ``validation``.
        sigma: es, pes: the perturbations' standard deviation.
        strategy: ``vmap`` or ``loop`` over the runs (``auto``: vmap).
        seed: seeds the runs' tasks.
    """

    divergence_fix = "Lower train.meta_lr or algorithm.sigma, or set train.grad_clip."

    def __init__(
        self,
        family: TaskFamily,
        rule: UpdateRule,
        estimator: str = "pes",
        horizon: int = 200,
        truncation: int = 10,
        tasks: int = 8,
        objective: str = "mean",
        sigma: float = 0.01,
        strategy: str = "vmap",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(f"algorithm.estimator={estimator!r} is not supported; choose one of {list(ESTIMATORS)}")
        self.family, self.rule, self.estimator_name = family, rule, estimator
        self.unroll = Unroll(family, rule, horizon, truncation, objective, "vmap" if strategy == "auto" else strategy)
        cls: Any = ESTIMATORS[estimator]
        self.estimator = cls(self.unroll, tasks, sigma) if estimator in ("es", "pes") else cls(self.unroll, tasks)
        self.run_seed = run_seed(seed)
        self.states: InnerStates = self.estimator.init_states(self.run_seed)

    def meta(self) -> dict[str, torch.Tensor]:
        """The meta-parameters, detached (``rule.run(..., meta)``)."""
        return {k: v.detach() for k, v in self.rule.meta().items()}

    # -- the trainer's protocol ------------------------------------------------------------
    def meta_step(self, batch: Any, optimizer: torch.optim.Optimizer, shard: Shard = Shard()) -> dict[str, float]:
        """One estimate on the persistent runs (seeded by ``shard.seed``), clipped, one ``optimizer`` step."""
        if not shard.alone:
            raise ConfigError("algorithm.name=lopt meta-trains on one process; run it without torchrun")
        grad, states, metrics = self.estimator.estimate(self.meta(), self.states, shard.seed)
        params = dict(self.rule.meta())
        finite = all(bool(torch.isfinite(g).all()) for g in grad.values()) and math.isfinite(metrics["meta_loss"])
        if not finite:
            raise TrainingDiverged(f"the meta-gradient or meta-loss is not finite (meta_loss={metrics['meta_loss']})")
        for k, p in params.items():
            p.grad = grad[k].to(p)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), shard.max_grad_norm or math.inf)
        optimizer.step()
        self.states = states
        return {"loss": metrics["meta_loss"], **metrics, "grad_norm": float(norm)}

    @property
    def validation_steps(self) -> list[int]:
        """The training loss at the start and after a whole run (``horizon`` steps)."""
        return [0, self.unroll.horizon]

    def evaluate_tasks(self, source, ids, num_tasks, steps, device=None, dtype=None, **protocol):
        """``{step: {"loss": (len(ids),)}}``: the training loss of fresh runs of tasks ``ids`` trained by the rule."""
        curves = learned_curves(self.family, self.rule, self.meta(), source.task_seeds(list(ids)), max(steps))
        return {int(s): {"loss": curves[:, s]} for s in steps}

    def progress_fields(self, record: dict) -> dict[str, str]:
        """The meta-loss and the inner loss of the last truncation."""
        return {k: f"{record[k]:.4f}" for k in ("meta_loss", "inner_loss") if k in record}

    # -- checkpoints: the inner runs travel in the state dict --------------------------------
    def _inner_tensors(self) -> dict[str, torch.Tensor]:
        s = self.states
        out = {f"{INNER}params.{n}": p for n, p in s.params.items()}
        leaves, _ = tree_flatten(s.rule_state)
        out |= {f"{INNER}rule_state.{i}": x for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)}
        counters = {"step": s.step, "resets": s.resets, "seed": s.seed}
        out |= {f"{INNER}{k}": torch.tensor(v, dtype=torch.int64) for k, v in counters.items()}
        out[f"{INNER}tasks"] = torch.tensor(s.tasks, dtype=torch.int64)
        if isinstance(self.estimator, PersistentES):
            xi = s.extra.get("xi")
            out[f"{INNER}has_xi"] = torch.tensor(xi is not None)
            n = self.estimator.tasks
            zeros = {k: v.new_zeros((n, *v.shape)) for k, v in self.meta().items()}
            out |= {f"{INNER}xi.{k}": (xi[k] if xi is not None else z) for k, z in zeros.items()}
        return out

    def state_dict(self, *args, **kwargs):
        """The meta-parameters (``rule.*``) and the persistent inner runs (``inner.*``), all tensors."""
        out = super().state_dict(*args, **kwargs)
        out.update({k: v.detach() for k, v in self._inner_tensors().items()})
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """The inverse of :meth:`state_dict`: meta-parameters and inner runs."""
        inner = {k: v for k, v in state_dict.items() if k.startswith(INNER)}
        expected = set(self._inner_tensors())
        if strict and set(inner) != expected:
            raise CheckpointError(
                f"the checkpoint's inner runs {sorted(set(inner) ^ expected)[:3]} do not fit this learner; "
                "resume with the same algorithm and task settings"
            )
        result = super().load_state_dict({k: v for k, v in state_dict.items() if k not in inner}, strict, assign)
        if inner:
            self.states = self._states_from(inner)
        return result

    def _states_from(self, inner: dict[str, torch.Tensor]) -> InnerStates:
        s = self.states
        like = next(iter(s.params.values()))
        params = {n: inner[f"{INNER}params.{n}"].to(like.device) for n in s.params}
        leaves, spec = tree_flatten(s.rule_state)
        leaves = [
            inner[f"{INNER}rule_state.{i}"].to(x.device) if isinstance(x, torch.Tensor) else x
            for i, x in enumerate(leaves)
        ]
        extra: dict[str, Any] = {}
        if isinstance(self.estimator, PersistentES) and bool(inner[f"{INNER}has_xi"]):
            extra["xi"] = {k: inner[f"{INNER}xi.{k}"].to(like.device) for k in self.rule.meta()}
        counters = {k: int(inner[f"{INNER}{k}"]) for k in ("step", "resets", "seed")}
        return InnerStates(
            params, tree_unflatten(leaves, spec), tasks=inner[f"{INNER}tasks"].tolist(), extra=extra, **counters
        )

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files written beside the weights of every checkpoint: ``meta.safetensors``, what a user loads with
        ``LearnedOptimizer.from_file(model.parameters(), "RUN/checkpoints/step-N/meta.safetensors")``."""
        tensors = {k: v.detach().contiguous().cpu().clone() for k, v in self.rule.meta().items()}
        metadata = {"rule": type(self.rule).__name__, "hparams": json.dumps(hparams(self.rule))}
        return {META_FILE: save(tensors, metadata=metadata)}

    def describe(self) -> str:
        """The estimator, family and rule."""
        return f"{self.estimator.describe()} on {self.family.describe()}, rule {self.rule.describe()}"


__all__ = ["META_FILE", "LearnedOptimizerLearner", "OptimizerTasks"]
