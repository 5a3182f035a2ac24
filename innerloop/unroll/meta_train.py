"""A resumable meta-training run of a learned update rule: meta-parameters, meta-optimizer, the persistent
inner runs (params, rule state, step, tasks, PES's xi) and the iteration, from which every perturbation and
task seed derives, so a run resumed from a checkpoint repeats the uninterrupted one exactly.

Checkpoint folder: ``state.pt`` (everything, read with ``weights_only=True``) and ``meta.safetensors`` (the
trained meta-parameters alone, what a user loads), each written beside its target and renamed over it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.params import Params
from ..errors import CheckpointError, TrainingDiverged
from ..tasks.seeding import derive_seed
from .estimators import Estimator
from .inner import InnerStates

STATE, META = "state.pt", "meta.safetensors"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class MetaTraining:
    """Meta-trains the rule behind ``estimator`` with Adam on its meta-parameters.

    Args:
        estimator: the gradient estimator (and through it the unroll, family and rule).
        lr: the meta-optimizer's learning rate.
        seed: the run's seed (tasks, perturbations).
        meta: initial meta-parameters (default: the rule's own, ``rule.meta()``).
    """

    def __init__(self, estimator: Estimator, lr: float = 1e-3, seed: int = 0, meta: Params | None = None) -> None:
        self.estimator, self.seed = estimator, int(seed)
        start = estimator.unroll.rule.meta() if meta is None else meta
        self.meta = {k: v.detach().clone() for k, v in start.items()}
        self.optimizer = torch.optim.Adam(list(self.meta.values()), lr=lr)
        self.states: InnerStates = estimator.init_states(derive_seed(self.seed, "tasks"))
        self.iteration = 0
        self.last_checkpoint: Path | None = None

    def step(self) -> dict[str, float]:
        """One meta-gradient estimate and one Adam step on the meta-parameters."""
        key = derive_seed(self.seed, "estimate", self.iteration)
        grad, states, metrics = self.estimator.estimate(self.meta, self.states, key)
        if not all(bool(torch.isfinite(g).all()) for g in grad.values()) or not math.isfinite(metrics["meta_loss"]):
            raise TrainingDiverged.at(
                self.iteration,
                f"the meta-gradient or meta-loss is not finite (meta_loss={metrics['meta_loss']})",
                self.last_checkpoint,
                "Lower the meta learning rate, or the optimizer's nominal step (lr), or ES's sigma.",
            )
        for k, p in self.meta.items():
            p.grad = grad[k].to(p)
        self.optimizer.step()
        self.states, self.iteration = states, self.iteration + 1
        return {"iteration": self.iteration, **metrics}

    def run(self, iterations: int) -> list[dict[str, float]]:
        """``iterations`` meta-steps; their metrics."""
        return [self.step() for _ in range(iterations)]

    def evaluate(self, tasks: int = 8, seed: int = 10**9) -> float:
        """The full-horizon meta-objective of the current meta-parameters, mean over ``tasks`` fresh held-out runs."""
        unroll = self.estimator.unroll
        states = unroll.start(seed, tasks)
        total = torch.zeros(tasks, dtype=torch.float64)
        with torch.no_grad():
            while True:
                objective, _, params, rule_state = unroll.run(self.meta, states)
                total += objective.double().cpu()
                if states.step + unroll.length(states) >= unroll.horizon:
                    return float(total.mean())
                states = unroll.advance(states, params, rule_state)

    def export(self) -> Params:
        """The meta-parameters, detached (``rule.load_state_dict(..., strict=False)`` or ``rule.run(..., meta)``)."""
        return {k: v.detach().clone() for k, v in self.meta.items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``state.pt`` and ``meta.safetensors`` into ``folder`` (created), each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = self.export()
        state = {
            "meta": meta,
            "optimizer": self.optimizer.state_dict(),
            "states": self.states.to_dict(),
            "iteration": self.iteration,
            "seed": self.seed,
            "estimator": self.estimator.describe(),
        }
        _atomic(folder / META, lambda p: save_file({k: v.contiguous() for k, v in meta.items()}, str(p)))
        _atomic(folder / STATE, lambda p: torch.save(state, p))
        self.last_checkpoint = folder
        return folder

    def load(self, folder: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save` for the same estimator settings."""
        path = Path(folder) / STATE
        if not path.is_file():
            raise CheckpointError(f"no meta-training checkpoint at {path}; give the folder MetaTraining.save wrote")
        state = torch.load(path, weights_only=True)
        if state["estimator"] != self.estimator.describe() or set(state["meta"]) != set(self.meta):
            raise CheckpointError(
                f"checkpoint {path} was written by {state['estimator']} with meta-parameters "
                f"{sorted(state['meta'])[:3]}..., not {self.estimator.describe()}; resume with the same settings"
            )
        with torch.no_grad():
            for k, v in self.meta.items():
                v.copy_(state["meta"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.states = InnerStates.from_dict(state["states"])
        self.iteration, self.seed = state["iteration"], state["seed"]


def load_meta(path: str | Path) -> Params:
    """The meta-parameters of a ``meta.safetensors`` (or of the checkpoint folder holding one)."""
    path = Path(path)
    return load_file(str(path / META if path.is_dir() else path))


__all__ = ["META", "STATE", "MetaTraining", "load_meta"]
