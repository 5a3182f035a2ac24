"""SNAIL, the Simple Neural AttentIve Learner.

Mishra, Rohaninejad, Chen & Abbeel (2018), "A Simple Neural Attentive Meta-Learner", ICLR.
https://arxiv.org/abs/1707.03141

A forward-pass learner: a causal sequence network (:class:`~innerloop.models.snail.SNAILNet`) reads
an N-way K-shot task's labelled support set and then one unlabelled query, and predicts the query's
label at the last position; meta-training minimises that cross-entropy::

    u_i = [f_phi(x_i), onehot(y_i)]  (i = 1 .. N*K),   u_T = [f_phi(x_q), 0],   T = N*K + 1

Departures (docs/snail.md): the support order is a deterministic function of the support set
(``support_order="content"``; the paper shuffles), the embedding's batch norm takes each task's
support statistics, dilations start at 1, and the network is built for one N and K (others refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..core.batchnorm import SupportBatchNorm, use_support_batch_norm_
from ..models.snail import FEW_SHOT_ARCHITECTURE, SNAILNet
from ..models.snail_blocks import AttentionBlock, DenseBlock, TCBlock
from ..tasks.batch import TaskBatch
from .base import check_class_labels
from .forward_pass import Episode, ForwardPassLearner
from .losses import classification_metrics

__all__ = [  # the network's pieces are re-exported: innerloop.algorithms.snail was their home
    "FEW_SHOT_ARCHITECTURE",
    "SNAIL",
    "SUPPORT_ORDERS",
    "AttentionBlock",
    "DenseBlock",
    "SNAILContext",
    "SNAILNet",
    "SupportBatchNorm",
    "TCBlock",
    "content_order",
    "use_support_batch_norm_",
]

SUPPORT_ORDERS = ("content", "batch")


class SNAILContext(NamedTuple):
    """What SNAIL "adapts" to: the task's support set, in sequence order."""

    support_x: torch.Tensor
    support_y: torch.Tensor


def _projection(numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A fixed random direction of the pixel space (seed 0, the same in every process)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(numel, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def content_order(support_x: torch.Tensor) -> torch.Tensor:
    """Positions ``(..., S)`` sorting each support set by a fixed random projection of its pixels."""
    dtype = torch.promote_types(support_x.dtype, torch.float32)
    flat = support_x.reshape(*support_x.shape[:-3], -1).to(dtype)
    keys = flat @ _projection(flat.shape[-1], dtype, flat.device)
    return keys.argsort(dim=-1, stable=True)


class SNAIL(ForwardPassLearner):
    """SNAIL: adapts to an N-way K-shot task in one causal forward pass over its support set.

    Args:
        model: the embedding network f_phi; default ``Conv4(1, 64)`` without head (28x28
            Omniglot, 64 features, as ProtoNets uses). Its batch-norm layers are replaced in
            place by :class:`SupportBatchNorm` (same parameters).
        ways, shots: N and K; fix the output layer (N classes) and the sequence length
            N*K + 1 (the temporal-convolution depth).
        embedding_dim: features per example of ``model`` (default: its ``embedding_dim``).
        first_dilation: 1 (default) gives the dilations 1, 2, 4, ...; 2 gives 2, 4, 8, ..., the
            literal reading of the paper's pseudocode (docs/snail.md).
        architecture: the blocks after the embedding, ``("attention", key_size, value_size)``
            and ``("tc", filters)`` entries; default the paper's ``FEW_SHOT_ARCHITECTURE``.
        support_order: ``"content"`` (default; a deterministic order by the pixels, docs/snail.md)
            or ``"batch"`` (the order of the batch).
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``: how tasks are mapped when they are not
            flattened (``flatten_tasks=False``).
        flatten_tasks: ``True`` (default) runs the whole meta-batch at once; exact here.

    ``parameters()`` are exactly the meta-parameters (embedding and sequence network).
    ``adapt(support_x, support_y)`` returns the :class:`SNAILContext` of one task,
    ``predict(context, query_x)`` the logits ``(Q, N)``, ``learner(support_x, support_y,
    query_x)`` the same in one call.
    """

    model: SNAILNet

    def __init__(
        self,
        model: nn.Module | None = None,
        ways: int = 5,
        shots: int = 1,
        embedding_dim: int | None = None,
        first_dilation: int = 1,
        architecture: Sequence[tuple] = FEW_SHOT_ARCHITECTURE,
        support_order: str = "content",
        strategy: str = "auto",
        flatten_tasks: bool = True,
    ) -> None:
        if support_order not in SUPPORT_ORDERS:
            raise ValueError(f"support_order must be one of {SUPPORT_ORDERS}, got {support_order!r}")
        if flatten_tasks not in (True, False):
            raise ValueError(f"flatten_tasks must be True or False, got {flatten_tasks!r}")
        if model is None:
            from ..models import Conv4

            model = Conv4(1, 64)
        net = SNAILNet(model, ways, shots, embedding_dim, first_dilation, architecture)
        super().__init__(net, loss_fn=None, strategy=strategy)
        self.ways, self.shots = self.model.ways, self.model.shots
        self.support_order = support_order
        self.flatten_tasks = flatten_tasks

    # -- the support set as a sequence ------------------------------------------------------
    def order(self, support_x: torch.Tensor, support_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The support set ``(..., S, C, H, W), (..., S)`` in sequence order (see ``support_order``)."""
        if self.support_order == "batch":
            return support_x, support_y
        perm = content_order(support_x)
        return support_x.gather(-4, perm.reshape(*perm.shape, 1, 1, 1).expand_as(support_x)), support_y.gather(-1, perm)

    def _check(self, support_y: torch.Tensor, query_y: torch.Tensor | None = None) -> None:
        """Integer labels in 0..N-1 (one host sync) and a support set of N*K examples."""
        labels = (support_y,) if query_y is None else (support_y, query_y)
        check_class_labels("SNAIL", *labels)
        size = support_y.shape[-1]
        if size != self.ways * self.shots:
            raise ValueError(
                f"this SNAIL reads {self.ways}-way {self.shots}-shot sequences, i.e. {self.ways * self.shots} support "
                f"examples per task, got {size}; build SNAIL(ways=..., shots=...) for the tasks you give it"
            )
        flat = torch.cat([y.flatten() for y in labels])
        lo, hi = torch.stack([flat.min(), flat.max()]).tolist()
        if lo < 0 or hi >= self.ways:
            raise ValueError(f"labels must lie in 0..{self.ways - 1} (ways={self.ways}), got {lo}..{hi}")

    # -- one task ---------------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> SNAILContext:
        """The support set of one task, in sequence order. ``steps`` is ignored (no inner loop)."""
        self.check_task(support_x, support_y)
        self._check(support_y)
        return SNAILContext(*self.order(support_x, support_y))

    def predict(self, context: SNAILContext, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``(Q, N)``: each query read as the last element after the support sequence."""
        return self.model(context.support_x, context.support_y, query_x)

    # -- episodes ---------------------------------------------------------------------------
    def episode(self, batch: TaskBatch) -> tuple[Episode, TaskBatch]:
        """Per task: cross-entropy and accuracy of the logits at the query position; the support sets in sequence
        order (the whole meta-batch at once unless ``flatten_tasks=False``: batch statistics are per task anyway)."""
        self._check(batch.support_y, batch.query_y)
        support_x, support_y = self.order(batch.support_x, batch.support_y)

        def task(support_x, support_y, query_x, query_y):
            return classification_metrics(self.model(support_x, support_y, query_x), query_y)

        return task, TaskBatch(support_x, support_y, batch.query_x, batch.query_y)
