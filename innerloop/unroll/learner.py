"""A learned optimizer as a learner of the one trainer (``innerloop train --config lopt-mlp-omniglot``).

Meta-training minimises the inner runs' loss over their horizon H (``objective=mean``; Metz et al. 2022,
"Practical tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs)::

    min_meta  E_tasks[ 1/H sum_t L(phi_t) ],   phi_{t+1} = phi_t + rule(grad L(phi_t), state_t; meta)

``meta_step`` is one outer step of an estimator of :mod:`.estimators` (Vicol et al. 2021 for PES) and one step
of the meta-optimizer on the rule's meta-parameters; the inner runs persist across meta-steps, and
``state_dict`` holds them (parameters, rule state, step, task seeds, PES's accumulated perturbations), so the
trainer's checkpoint resumes a run exactly. Its tasks (:class:`OptimizerTasks`) are task seeds of a family.

With a ``mixture`` of further families (other networks on the same data, say) the estimate's tasks are split
evenly over the families, each with its own persistent runs, and the meta-gradient is the mean of their
estimates: the expectation above over tasks of all of them (Metz et al. 2022 meta-train on many task families).
Validation and evaluation stay on the first family.
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
        mixture: further families meta-trained on at the same time (``tasks`` must divide evenly over all).
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
        mixture: Sequence[TaskFamily] = (),
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(f"algorithm.estimator={estimator!r} is not supported; choose one of {list(ESTIMATORS)}")
        families = [family, *mixture]
        if tasks % len(families):
            raise ConfigError(
                f"tasks={tasks} per estimate do not split evenly over {len(families)} task families (the family "
                f"and the mixture): use a multiple of {len(families)}"
            )
        self.family, self.rule, self.estimator_name = family, rule, estimator
        strategy = "vmap" if strategy == "auto" else strategy
        cls: Any = ESTIMATORS[estimator]
        each = tasks // len(families)
        self.estimators = []
        for f in families:
            unroll = Unroll(f, rule, horizon, truncation, objective, strategy)
            self.estimators.append(cls(unroll, each, sigma) if estimator in ("es", "pes") else cls(unroll, each))
        self.estimator, self.unroll = self.estimators[0], self.estimators[0].unroll
        self.run_seed = run_seed(seed)
        # the first family's runs are seeded as without a mixture, so a run without one is unchanged
        self.all_states: list[InnerStates] = [
            e.init_states(self.run_seed if i == 0 else derive_seed(self.run_seed, "family", i))
            for i, e in enumerate(self.estimators)
        ]

    @property
    def states(self) -> InnerStates:
        """The first family's persistent runs."""
        return self.all_states[0]

    @states.setter
    def states(self, value: InnerStates) -> None:
        self.all_states[0] = value

    def meta(self) -> dict[str, torch.Tensor]:
        """The meta-parameters, detached (``rule.run(..., meta)``)."""
        return {k: v.detach() for k, v in self.rule.meta().items()}

    # -- the trainer's protocol ------------------------------------------------------------
    def meta_step(self, batch: Any, optimizer: torch.optim.Optimizer, shard: Shard = Shard()) -> dict[str, float]:
        """One estimate on the persistent runs (seeded by ``shard.seed``), clipped, one ``optimizer`` step."""
        if not shard.alone:
            raise ConfigError("algorithm.name=lopt meta-trains on one process; run it without torchrun")
        meta, n = self.meta(), len(self.estimators)
        estimates = [
            e.estimate(meta, states, shard.seed if i == 0 else derive_seed(shard.seed, "family", i))
            for i, (e, states) in enumerate(zip(self.estimators, self.all_states))
        ]
        grad = {k: sum(g[k] for g, _, _ in estimates) / n for k in meta}
        metrics = {k: sum(m[k] for _, _, m in estimates) / n for k in estimates[0][2]}
        params = dict(self.rule.meta())
        finite = all(bool(torch.isfinite(g).all()) for g in grad.values()) and math.isfinite(metrics["meta_loss"])
        if not finite:
            raise TrainingDiverged(f"the meta-gradient or meta-loss is not finite (meta_loss={metrics['meta_loss']})")
        for k, p in params.items():
            p.grad = grad[k].to(p)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), shard.max_grad_norm or math.inf)
        optimizer.step()
        self.all_states = [states for _, states, _ in estimates]
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
    @staticmethod
    def _prefix(i: int) -> str:
        """The state_dict prefix of family ``i``'s runs (the first family's keys are those of a run without a mixture)."""
        return INNER if i == 0 else f"{INNER}family{i}."

    def _inner_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, (s, estimator) in enumerate(zip(self.all_states, self.estimators)):
            at = self._prefix(i)
            out |= {f"{at}params.{n}": p for n, p in s.params.items()}
            leaves, _ = tree_flatten(s.rule_state)
            out |= {f"{at}rule_state.{j}": x for j, x in enumerate(leaves) if isinstance(x, torch.Tensor)}
            counters = {"step": s.step, "resets": s.resets, "seed": s.seed}
            out |= {f"{at}{k}": torch.tensor(v, dtype=torch.int64) for k, v in counters.items()}
            out[f"{at}tasks"] = torch.tensor(s.tasks, dtype=torch.int64)
            if isinstance(estimator, PersistentES):
                xi = s.extra.get("xi")
                out[f"{at}has_xi"] = torch.tensor(xi is not None)
                zeros = {k: v.new_zeros((estimator.tasks, *v.shape)) for k, v in self.meta().items()}
                out |= {f"{at}xi.{k}": (xi[k] if xi is not None else z) for k, z in zeros.items()}
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
            self.all_states = [self._states_from(inner, i) for i in range(len(self.estimators))]
        return result

    def _states_from(self, inner: dict[str, torch.Tensor], i: int) -> InnerStates:
        s, at = self.all_states[i], self._prefix(i)
        like = next(iter(s.params.values()))
        params = {n: inner[f"{at}params.{n}"].to(like.device) for n in s.params}
        leaves, spec = tree_flatten(s.rule_state)
        leaves = [
            inner[f"{at}rule_state.{j}"].to(x.device) if isinstance(x, torch.Tensor) else x
            for j, x in enumerate(leaves)
        ]
        extra: dict[str, Any] = {}
        if isinstance(self.estimators[i], PersistentES) and bool(inner[f"{at}has_xi"]):
            extra["xi"] = {k: inner[f"{at}xi.{k}"].to(like.device) for k in self.rule.meta()}
        counters = {k: int(inner[f"{at}{k}"]) for k in ("step", "resets", "seed")}
        return InnerStates(
            params, tree_unflatten(leaves, spec), tasks=inner[f"{at}tasks"].tolist(), extra=extra, **counters
        )

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files written beside the weights of every checkpoint: ``meta.safetensors``, what a user loads with
        ``LearnedOptimizer.from_file(model.parameters(), "RUN/checkpoints/step-N/meta.safetensors")``."""
        tensors = {k: v.detach().contiguous().cpu().clone() for k, v in self.rule.meta().items()}
        metadata = {"rule": type(self.rule).__name__, "hparams": json.dumps(hparams(self.rule))}
        return {META_FILE: save(tensors, metadata=metadata)}

    def describe(self) -> str:
        """The estimator, families and rule."""
        families = " + ".join(e.unroll.family.describe() for e in self.estimators)
        return f"{self.estimator.describe()} on {families}, rule {self.rule.describe()}"


__all__ = ["META_FILE", "LearnedOptimizerLearner", "OptimizerTasks"]
