"""Prototypical Networks.

Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.
https://arxiv.org/abs/1703.05175

The embedding + head learner (:mod:`~innerloop.algorithms.metric`) whose head is the nearest class
mean: prototypes (eq. 1) and a softmax over negative squared Euclidean distances (eq. 2)::

    c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f_phi(x_i)
    p_phi(y = k | x) = exp(-||f_phi(x) - c_k||^2) / sum_k' exp(-||f_phi(x) - c_k'||^2)

Departures: batch norm is transductive over each episode (support and query embedded in one pass,
at evaluation too); any number of ways is read from the labels. Notes: docs/learners.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..tasks.batch import TaskBatch
from .metric import EmbeddingHeadLearner, Head, one_hot


def prototypes_of(embeddings: torch.Tensor, labels_one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 from one-hot labels: the class means ``(..., N, D)`` of ``embeddings (..., S, D)`` and the counts
    ``(..., N)``; a one-hot matrix product (no data-dependent indexing), absent classes get a zero prototype."""
    counts = labels_one_hot.sum(-2)  # (..., N)
    sums = labels_one_hot.transpose(-1, -2) @ embeddings  # (..., N, D)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 from integer ``labels (..., S)`` in ``0..ways-1``: prototypes ``(..., ways, D)`` and counts ``(..., ways)``."""
    return prototypes_of(embeddings, one_hot(labels, ways, embeddings.dtype))


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||x_q - c_k||^2`` for ``x (..., Q, D)`` and ``prototypes (..., N, D)`` -> ``(..., Q, N)``, as
    ``||x||^2 - 2 x.c + ||c||^2`` (one matrix product, no (queries x ways x features) intermediate)."""
    cross = x @ prototypes.transpose(-1, -2)
    return x.pow(2).sum(-1, keepdim=True) - 2 * cross + prototypes.pow(2).sum(-1).unsqueeze(-2)


class PrototypeHead(Head):
    """The nearest class mean: state = the prototypes ``(..., N, D)``, logits ``-||z - c_k||^2`` (eq. 2)."""

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
        """The class prototypes (eq. 1)."""
        return prototypes_of(support_z, support_onehot)[0]

    def logits(self, state: torch.Tensor, query_z: torch.Tensor) -> torch.Tensor:
        """Negative squared distances to the prototypes; their softmax is eq. 2."""
        return -squared_distances(query_z, state)


class ProtoNets(EmbeddingHeadLearner):
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

    ``adapt(support_x, support_y)`` returns the prototypes ``(N, D)``; ``predict(prototypes, x)``
    the logits ``-||f(x) - c_k||^2``; ``embed(params, x)`` the embeddings.
    """

    def __init__(self, model: nn.Module, strategy: str = "auto", flatten_tasks: bool | None = None) -> None:
        super().__init__(model, PrototypeHead(), strategy=strategy, flatten_tasks=flatten_tasks)

    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{0: {"loss": (T,), "accuracy": (T,)}}``: no adaptation steps, so ``steps`` is ignored and the only
        key is 0 (CNP and SNAIL repeat their metrics at every step asked for instead)."""
        return {0: super().evaluate(batch, [0])[0]}
