"""What a trainer calls on a learner: one meta-step on this process's shard, held-out evaluation.

``learner.meta_step(batch, optimizer, shard)`` is the whole meta-update of one iteration. The
:class:`Shard` says which tasks of the global meta-batch this process holds and how to sum over
the processes, so one trainer drives one process or many (``training.distributed``) alike: each
process computes ``weight * d L_shard / d theta`` and the sums make it the meta-batch's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.params import copy_flat_, flatten
from ..errors import ConfigError, TrainingDiverged
from ..tasks.fixed import EVAL_DRAW

#: The fix a divergence message proposes for a learner stepping a torch optimizer on its meta-gradient.
DIVERGENCE_FIX = "Lower train.meta_lr or algorithm.inner_lr, or set train.grad_clip."


def _alone(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the processes of a process alone: ``tensor`` itself."""
    return tensor


@dataclass(frozen=True)
class Shard:
    """This process's part of one meta-step (a single process holds all of it).

    ``task_ids`` name the tasks of the global meta-batch this process computes (and their random
    streams), ``weight`` is their share of the meta-batch, ``reduce`` sums a tensor over the
    processes (an all-reduce). Objectives are local means times ``weight``; reducing their gradients,
    Fisher-vector products and values gives those of the whole meta-batch on every process.
    ``seed`` seeds what the step draws itself (meta-RL's rollouts), ``device`` and ``dtype`` say where
    a batch of tensors is computed, ``max_grad_norm`` clips the summed meta-gradient.
    """

    task_ids: Sequence[int] | None = None
    weight: float = 1.0
    reduce: Callable[[torch.Tensor], torch.Tensor] = _alone
    seed: int = 0
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    max_grad_norm: float | None = None

    @property
    def alone(self) -> bool:
        """Whether this process holds the whole meta-batch (nothing to sum)."""
        return self.reduce is _alone

    def mean(self, local_mean: torch.Tensor) -> torch.Tensor:
        """The meta-batch mean of a detached per-shard mean."""
        return self.reduce(local_mean.detach() * self.weight)

    def sum_(self, tensors: list[torch.Tensor], metrics: dict[str, float] | None = None) -> dict[str, float]:
        """Sum ``tensors`` (in place) and ``weight * metrics`` over the processes in one collective; the metrics."""
        metrics = metrics or {}
        if self.alone:
            return metrics
        names = sorted(metrics)
        device = tensors[0].device if tensors else self.device
        weighted = torch.tensor([metrics[k] * self.weight for k in names], dtype=torch.float64, device=device)
        everything = [*tensors, weighted]
        copy_flat_(everything, self.reduce(flatten(everything)))
        return dict(zip(names, weighted.tolist()))


def gradient_step(learner, batch, optimizer: torch.optim.Optimizer | None, shard: Shard = Shard()) -> dict[str, float]:
    """``learner.meta_backward`` on the shard, gradients summed over processes, clipped, one ``optimizer.step()``.

    Raises :class:`TrainingDiverged` (without stepping) where the meta-loss or the meta-gradient is not
    finite; the metrics are the meta-batch means plus ``grad_norm`` (before clipping).
    """
    if optimizer is None:
        raise ConfigError(f"{type(learner).__name__}.meta_step steps a torch optimizer on the meta-gradient: give one")
    if shard.device is not None or shard.dtype is not None:
        batch = batch.to(device=shard.device, dtype=shard.dtype)
    optimizer.zero_grad(set_to_none=True)
    metrics = {k: float(v) for k, v in learner.meta_backward(batch, weight=shard.weight).items()}
    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    metrics = shard.sum_(grads, metrics)
    if not grads:
        raise ConfigError(
            f"no meta-parameter of {type(learner).__name__} received a gradient; check the model and algorithm.adapt"
        )
    limit = shard.max_grad_norm if shard.max_grad_norm else math.inf
    norm = torch.nn.utils.clip_grad_norm_(learner.parameters(), limit)
    if not math.isfinite(metrics["loss"]):
        raise TrainingDiverged(f"meta-loss {metrics['loss']}")
    if not torch.isfinite(norm):
        raise TrainingDiverged(f"meta-gradient norm {float(norm)}")
    optimizer.step()
    metrics["grad_norm"] = float(norm)
    return metrics


def evaluate_held_out(learner, source, ids: range, steps: Sequence[int], device=None, dtype=None) -> dict:
    """``learner.evaluate`` on tasks ``ids`` of ``source``'s fixed evaluation set (``tasks.fixed``)."""
    batch = source.sample(EVAL_DRAW, ids, torch.float32)  # what FixedTasks yields for these tasks
    batch = batch.to(device=device, dtype=dtype) if device or dtype else batch
    return learner.evaluate(batch, steps)
