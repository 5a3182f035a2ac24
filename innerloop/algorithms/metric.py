"""Embedding + head learners: one network embeds support and query, a head fit on the support embeddings
classifies the queries (no inner loop)::

    z = f_phi(x)                                  the same network for support and query
    state = head.fit(z_S, onehot(y_S))            class prototypes (ProtoNets), ridge weights (R2D2), ...
    logits = head.logits(state, z_Q)              a class with no support example gets -inf

Meta-training minimises the query cross-entropy, over phi and the head's own parameters. ProtoNets
is this base with :class:`~innerloop.algorithms.protonets.PrototypeHead`; the batching paths and the
batch-norm statistics are described in docs/learners.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.batchnorm import TransductiveBatchNorm
from ..core.params import Params
from ..tasks.batch import TaskBatch
from .base import check_class_labels
from .forward_pass import Episode, ForwardPassLearner
from .losses import classification_metrics


def one_hot(labels: torch.Tensor, ways: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels ``(..., S)`` -> ``(..., S, ways)`` rows of ``dtype``; a comparison, so it runs under ``vmap``."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


class Head(nn.Module):
    """A classifier fit on one task's support embeddings; its own ``nn.Parameter`` s are meta-learned.

    Both methods take leading (task) dimensions and must run under ``vmap`` (no data-dependent
    control flow, no ``.item()``):

    * ``fit(support_z (..., S, D), support_onehot (..., S, N)) -> state`` (a tensor or a tuple of them);
    * ``logits(state, query_z (..., Q, D)) -> (..., Q, N)``.
    """

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> Any:
        """The task state from the support embeddings and their one-hot labels."""
        raise NotImplementedError

    def logits(self, state: Any, query_z: torch.Tensor) -> torch.Tensor:
        """Class scores of the query embeddings (before the softmax)."""
        raise NotImplementedError


class EmbeddingHeadLearner(ForwardPassLearner):
    """An embedding network and a :class:`Head`: ``adapt`` fits the head, ``predict`` its logits at the queries.

    Args:
        model: the embedding network f_phi; its output, flattened per example, is the embedding.
        head: the :class:`Head` fit on each task's support embeddings.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``; how tasks are mapped when they are not
            flattened into one forward pass (see ``flatten_tasks``).
        flatten_tasks: ``None`` (default) embeds the whole meta-batch in one forward pass whenever
            that is exact (no batch norm in the model, or one task); ``True`` always does (batch-norm
            statistics then span the meta-batch); ``False`` never does.

    ``adapt(support_x, support_y)`` returns the head's state, ``predict(state, x)`` the logits ``(B, ways)``,
    ``learner(support_x, support_y, query_x)`` both in one call, ``embed(params, x)`` the embeddings.
    """

    def __init__(self, model: nn.Module, head: Head, strategy: str = "auto", flatten_tasks: bool | None = None) -> None:
        if flatten_tasks not in (None, True, False):
            raise ValueError(f"flatten_tasks must be None, True or False, got {flatten_tasks!r}")
        if not isinstance(head, Head):
            raise TypeError(f"head must be an innerloop.algorithms.metric.Head, got {type(head).__name__}")
        super().__init__(model, loss_fn=None, strategy=strategy)
        self.head = head
        self.flatten_tasks = flatten_tasks
        # After functional_model, torch's batch-norm layers are TransductiveBatchNorm.
        self.has_batch_norm = any(isinstance(m, (_BatchNorm, TransductiveBatchNorm)) for m in self.model.modules())

    # -- one task -------------------------------------------------------------------------
    def embed(self, params: Params | None, x: torch.Tensor) -> torch.Tensor:
        """f_phi(x) with ``params`` (None: the learner's own), one row per example: ``(B, ...) -> (B, D)``."""
        return self.functional(self.model_params() if params is None else params, x).flatten(1)

    def adapt(self, support_x, support_y, steps: int | None = None, ways: int | None = None) -> Any:
        """The head's state for one task (no task dimension). ``steps`` is ignored (no inner loop).

        ``ways`` defaults to ``support_y.max() + 1``; every class must have a support example.
        """
        self.check_task(support_x, support_y)
        check_class_labels(type(self).__name__, support_y)
        z = self.embed(None, support_x)
        labels = one_hot(support_y, self.ways_of(support_y, ways), z.dtype)
        missing = (labels.sum(0) == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"classes {missing} have no support example; labels must cover 0..ways-1")
        return self.head.fit(z, labels)

    def predict(self, state: Any, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The head's logits ``(B, ways)`` at inputs ``x`` of the task whose ``state`` ``adapt`` returned."""
        return self.head.logits(state, self.embed(params, x))

    # -- episodes -------------------------------------------------------------------------
    @staticmethod
    def ways_of(support_y: torch.Tensor, ways: int | None = None, query_y: torch.Tensor | None = None) -> int:
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

    def episode(self, batch: TaskBatch) -> tuple[Episode, TaskBatch]:
        """Per task: support and query embedded in ONE pass (batch statistics of the whole episode), the head fit
        on the support embeddings, cross-entropy and accuracy of its logits at the queries."""
        check_class_labels(type(self).__name__, batch.support_y, batch.query_y)
        ways = self.ways_of(batch.support_y, None, batch.query_y)
        params = self.model_params()

        def task(support_x, support_y, query_x, query_y):
            lead = support_y.dim() - 1  # 0 for one task, 1 on a leading task dimension
            x = torch.cat([support_x, query_x], lead)
            z = self.embed(params, x.flatten(0, lead)).unflatten(0, x.shape[: lead + 1])
            shots = support_x.shape[lead]
            return classification_metrics(self.logits(z[..., :shots, :], support_y, z[..., shots:, :], ways), query_y)

        return task, batch

    def logits(self, support_z, support_y, query_z, ways: int) -> torch.Tensor:
        """The head fit on ``support_z (..., S, D)`` and labels ``(..., S)``, at ``query_z (..., Q, D)``: ``(..., Q, N)``;
        classes without a support example get -inf."""
        labels = one_hot(support_y, ways, support_z.dtype)
        logits = self.head.logits(self.head.fit(support_z, labels), query_z)
        return logits.masked_fill(labels.sum(-2).unsqueeze(-2) == 0, float("-inf"))
