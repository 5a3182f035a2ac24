"""Prototypical Networks.

Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.
https://arxiv.org/abs/1703.05175

An embedding network f_phi is meta-learned; a task is "adapted to" by averaging the
embedded support examples of each class k into a prototype (eq. 1)::

    c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f_phi(x_i)

and a query is classified by a softmax over negative squared Euclidean distances to
the prototypes (eq. 2)::

    p_phi(y = k | x) = exp(-||f_phi(x) - c_k||^2) / sum_k' exp(-||f_phi(x) - c_k'||^2)

Meta-training minimizes the negative log-probability of the query labels,
J(phi) = -log p_phi(y = k | x), averaged over the queries of a task and the tasks of
a meta-batch. There is no inner optimization, so :meth:`ProtoNets.evaluate` reports a
single "step", 0.

Implementation notes:

* Labels are integers ``0..N-1``; the number of ways N is read from the batch
  (``support_y.max() + 1``, one host sync per call), so any N works and training with
  more ways than testing (the paper's 60-way Omniglot training) needs nothing special.
  Prototypes are a one-hot matrix product (no data-dependent indexing), so the same
  code runs per task, under ``vmap`` and on a leading task dimension. A class with no
  support example gets logit -inf.
* Squared distances are computed as ``||z||^2 - 2 z.c + ||c||^2`` (one matrix
  product; no (queries x ways x features) intermediate).
* The support and query examples of a task are embedded in ONE forward pass. With a
  batch-norm network that makes the batch statistics those of the whole episode
  (support and query together), the transductive batch norm of the authors' code in
  training mode, used here at evaluation too (innerloop never uses running stats).
* ``flatten_tasks``: when it changes nothing (the network has no batch norm, or the
  meta-batch holds a single task, the paper's setting) the whole meta-batch is
  embedded in a single forward pass with the task dimension flattened into the batch,
  and the per-task arithmetic runs on a leading task dimension, skipping
  ``vmap``/the loop entirely. ``flatten_tasks=True`` forces it for batch-norm networks
  too, so statistics are then shared by all tasks of the meta-batch (faster, no longer
  per-task transductive); ``False`` always maps over tasks with ``strategy``.
  Batch-statistic layers other than ``nn.BatchNorm*`` (and innerloop's
  ``TransductiveBatchNorm``) are not detected: pass ``flatten_tasks=False`` for them.
* :meth:`adapt` and :meth:`predict` embed support and query in separate passes (the
  MAML convention), so with batch norm their numbers differ slightly from
  :meth:`evaluate`'s joint pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.batchnorm import TransductiveBatchNorm
from ..core.params import Params
from ..tasks.batch import TaskBatch
from .base import MetaLearner, check_class_labels


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: the mean embedding of each class, and the number of examples per class.

    ``embeddings (..., S, D)``, integer ``labels (..., S)`` in ``0..ways-1`` ->
    prototypes ``(..., ways, D)`` and counts ``(..., ways)``. Leading dimensions (tasks)
    are batched over; safe under ``vmap``. Absent classes get a zero prototype and count 0.
    """
    classes = torch.arange(ways, device=labels.device)
    one_hot = (labels.unsqueeze(-1) == classes).to(embeddings.dtype)  # (..., S, N)
    counts = one_hot.sum(-2)  # (..., N)
    sums = one_hot.transpose(-1, -2) @ embeddings  # (..., N, D)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||x_q - c_k||^2`` for ``x (..., Q, D)`` and ``prototypes (..., N, D)`` -> ``(..., Q, N)``."""
    cross = x @ prototypes.transpose(-1, -2)
    return x.pow(2).sum(-1, keepdim=True) - 2 * cross + prototypes.pow(2).sum(-1).unsqueeze(-2)


def _episode(z_support, y_support, z_query, y_query, ways: int) -> dict[str, torch.Tensor]:
    """Per-task query loss and accuracy (leading task dimensions allowed)."""
    prototypes, counts = class_prototypes(z_support, y_support, ways)
    logits = -squared_distances(z_query, prototypes)  # eq. 2, before the softmax
    logits = logits.masked_fill(counts.unsqueeze(-2) == 0, float("-inf"))
    log_p = logits.log_softmax(-1)
    loss = -log_p.gather(-1, y_query.unsqueeze(-1)).squeeze(-1).mean(-1)
    accuracy = (logits.argmax(-1) == y_query).to(logits.dtype).mean(-1)
    return {"loss": loss, "accuracy": accuracy}


class ProtoNets(MetaLearner):
    """Prototypical Networks: nearest class mean in a meta-learned embedding space.

    Args:
        model: the embedding network f_phi (e.g. ``Conv4()`` without ``out_features``);
            its output, flattened per example, is the embedding.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``; how tasks are mapped when they
            are not flattened into one forward pass (see ``flatten_tasks``).
        flatten_tasks: ``None`` (default) embeds the whole meta-batch in one forward
            pass whenever that is exact (no batch norm in the model, or one task);
            ``True`` always does (batch-norm statistics then span the meta-batch);
            ``False`` never does.

    ``adapt(support_x, support_y)`` returns the prototypes ``(N, D)``;
    ``predict(prototypes, x)`` the logits ``-||f(x) - c_k||^2``; ``learner(x)`` the
    embeddings.
    """

    eval_steps = 0  # no inner loop: evaluate() reports step 0 only

    def __init__(self, model: nn.Module, strategy: str = "auto", flatten_tasks: bool | None = None) -> None:
        if flatten_tasks not in (None, True, False):
            raise ValueError(f"flatten_tasks must be None, True or False, got {flatten_tasks!r}")
        super().__init__(model, loss_fn=None, strategy=strategy)
        self.flatten_tasks = flatten_tasks
        # After functional_model, torch's batch-norm layers are TransductiveBatchNorm.
        self.has_batch_norm = any(isinstance(m, (_BatchNorm, TransductiveBatchNorm)) for m in self.model.modules())

    # -- embeddings ---------------------------------------------------------------------
    def embed(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """f_phi(x), one row per example: ``(B, ...) -> (B, D)``."""
        return self(x, params).flatten(1)

    # -- adaptation = prototypes ----------------------------------------------------------
    def adapt(self, support_x, support_y, steps: int | None = None, ways: int | None = None) -> torch.Tensor:
        """Prototypes ``(ways, D)`` of one task (no task dimension). ``steps`` is ignored.

        ``ways`` defaults to ``support_y.max() + 1``; every class must have a support example.
        """
        self.check_task(support_x, support_y)
        check_class_labels("ProtoNets", support_y)
        prototypes, counts = class_prototypes(self.embed(support_x), support_y, self._ways(support_y, ways))
        if bool((counts == 0).any()):
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"classes {missing} have no support example; labels must cover 0..ways-1")
        return prototypes

    def predict(self, prototypes: torch.Tensor, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Logits ``-||f(x) - c_k||^2`` ``(B, ways)``; their softmax is eq. 2."""
        return -squared_distances(self.embed(x, params), prototypes)

    # -- episodes -------------------------------------------------------------------------
    @staticmethod
    def _ways(support_y: torch.Tensor, ways: int | None, query_y: torch.Tensor | None = None) -> int:
        """N from the labels (one host sync), checking that every label lies in 0..N-1."""
        labels = support_y if query_y is None else torch.cat([support_y.flatten(), query_y.flatten()])
        lo, hi, support_hi = torch.stack([labels.min(), labels.max(), support_y.max()]).tolist()
        ways = support_hi + 1 if ways is None else ways
        if lo < 0 or hi >= ways:
            raise ValueError(f"labels must lie in 0..{ways - 1} (the classes of the support set), got {lo}..{hi}")
        return ways

    def uses_flat_path(self, batch: TaskBatch) -> bool:
        """Whether the meta-batch is embedded in one forward pass (see ``flatten_tasks``)."""
        if self.flatten_tasks is not None:
            return self.flatten_tasks
        return not self.has_batch_norm or batch.num_tasks == 1

    def episode_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``loss`` (NLL of eq. 2) and ``accuracy``, each ``(T,)``."""
        self.check_batch(batch)
        check_class_labels("ProtoNets", batch.support_y, batch.query_y)
        ways = self._ways(batch.support_y, None, batch.query_y)
        params = self.model_params()
        shots = batch.support_x.shape[1]

        if self.uses_flat_path(batch):
            x = torch.cat([batch.support_x, batch.query_x], 1)  # (T, S + Q, ...)
            z = self.functional(params, x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])
            return _episode(z[:, :shots], batch.support_y, z[:, shots:], batch.query_y, ways)

        def task(support_x, support_y, query_x, query_y):
            z = self.functional(params, torch.cat([support_x, query_x])).flatten(1)
            return _episode(z[:shots], support_y, z[shots:], query_y, ways)

        return self.map_tasks(task, batch)

    # -- the MetaLearner interface ----------------------------------------------------------
    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Task by task when the tasks are mapped (not flattened) and run in a loop."""
        return not self.uses_flat_path(batch) and self.runs_tasks_in_a_loop(batch)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)``: the mean query NLL (eq. 2) of ``batch``, the batch means of ``loss`` and ``accuracy``."""
        per_task = self.episode_metrics(batch)
        loss = per_task["loss"].mean()
        return loss, {name: value.detach().mean() for name, value in per_task.items()}

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{0: {"loss": (T,), "accuracy": (T,)}}``: ProtoNets has no adaptation steps,
        so ``steps`` is ignored and the only key is 0."""
        return {0: self.episode_metrics(batch)}
