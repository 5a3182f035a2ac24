"""Matching Networks.

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), "Matching Networks for One Shot Learning",
NeurIPS. https://arxiv.org/abs/1606.04080

The embedding + head learner (:mod:`~innerloop.algorithms.metric`) whose head is an attention over the
support set (eqs. 1-2): a softmax over cosine similarities, summed per class::

    P(y = k | x, S) = sum_i a(x, x_i) [y_i = k],    a(x, x_i) = softmax_i(c * cos(f(x, S), g(x_i, S)))

With full context embeddings (FCE, appendix A) g is a bidirectional LSTM over the support embeddings and f
an attention LSTM reading the support set for K steps::

    g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i
    h_k, c_k = LSTM([f'(x), r_{k-1}], h_{k-1}, c_{k-1}) + (f'(x), 0),   r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)
    f(x, S) = h_K                       (h_0 = c_0 = 0, so r_0 is the mean of the g(x_i))

Without FCE, f = g = f_phi. Departures: ``scale`` c multiplies the cosines (1, the default, is the paper;
Chen et al.'s code uses 100); the LSTM reads [f', r] as its input, the same gates as the paper's LSTM with
state [h, r]; K defaults to the support size (as Chen et al.'s code). Notes: docs/learners.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rules.lstm import CoordinateLSTMCell
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .metric import EmbeddingHeadLearner, Head


def cosine_attention_logits(query_z: torch.Tensor, support_z: torch.Tensor, support_onehot: torch.Tensor, scale=1.0):
    """``log P(y = k | x)`` ``(..., Q, N)`` of eqs. 1-2: per class, the log of the attention mass (a softmax over
    ``scale * cos`` to the support embeddings ``(..., S, D)``) on its support examples; a log-sum-exp per class,
    exact where the mass underflows. A class without a support example gets a very negative finite value."""
    cos = F.normalize(query_z, dim=-1) @ F.normalize(support_z, dim=-1).transpose(-1, -2)  # (..., Q, S)
    scores = scale * cos
    member = support_onehot.transpose(-1, -2).unsqueeze(-3) > 0  # (..., 1, N, S)
    floor = torch.finfo(scores.dtype).min / 4  # finite: no NaN gradients from a class without support
    per_class = torch.where(member, scores.unsqueeze(-2), floor).logsumexp(-1)  # (..., Q, N)
    return per_class.log_softmax(-1)


class FullContextEmbedding(nn.Module):
    """FCE (Vinyals et al. 2016, appendix A): g, a bidirectional LSTM over the support set, and f, an attention
    LSTM reading it for ``steps`` steps. Written over leading dimensions (``(..., S, D)``), so it runs under
    ``vmap`` (torch's ``nn.LSTM`` has no batching rule).

    Args:
        features: D, the embedding size the LSTMs take and return.
        steps: K, the attention LSTM's read steps (None: one per support example).
    """

    def __init__(self, features: int, steps: int | None = None) -> None:
        super().__init__()
        self.features = positive_int("features", features)
        self.steps = None if steps is None else positive_int("fce_steps", steps)
        self.forward_lstm = CoordinateLSTMCell(features, features)
        self.backward_lstm = CoordinateLSTMCell(features, features)
        self.attention_lstm = CoordinateLSTMCell(2 * features, features)

    def _check(self, z: torch.Tensor, name: str) -> None:
        if z.shape[-1] != self.features:
            raise ValueError(
                f"Matching Networks' FCE was built for {self.features}-dimensional embeddings, got {name} of shape "
                f"{tuple(z.shape)}; pass feature_dim={z.shape[-1]} (the embedding network's output size)"
            )

    def _run(self, cell: CoordinateLSTMCell, z: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
        h = c = z.new_zeros((*z.shape[:-2], self.features))
        out: list[torch.Tensor] = [h] * z.shape[-2]
        for i in order:
            h, c = cell(z[..., i, :], (h, c))
            out[i] = h
        return torch.stack(out, -2)

    def support(self, support_z: torch.Tensor) -> torch.Tensor:
        """``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i``, ``(..., S, D)``."""
        self._check(support_z, "support embeddings")
        s = support_z.shape[-2]
        fwd = self._run(self.forward_lstm, support_z, range(s))
        bwd = self._run(self.backward_lstm, support_z, range(s - 1, -1, -1))
        return support_z + fwd + bwd

    def query(self, query_z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``f(x, S)``: K steps of the attention LSTM over ``g (..., S, D)`` from ``f'(x) = query_z (..., Q, D)``."""
        self._check(query_z, "query embeddings")
        h = c = torch.zeros_like(query_z)
        for _ in range(self.steps or g.shape[-2]):
            attention = (h @ g.transpose(-1, -2)).softmax(-1)  # (..., Q, S)
            read = attention @ g
            h, c = self.attention_lstm(torch.cat([query_z, read], -1), (h, c))
            h = h + query_z
        return h


class MatchingHead(Head):
    """Cosine attention over the support embeddings, summed per class (eqs. 1-2); with ``fce`` a
    :class:`FullContextEmbedding` first. State: ``(g(S) (..., S, D), support one-hot (..., S, N))``.

    Args:
        fce: the full context embedding applied to support and query embeddings (None: none).
        scale: c (positive), multiplying the cosine similarities before the softmax.
    """

    def __init__(self, fce: FullContextEmbedding | None = None, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (it multiplies the cosine similarities), got {scale!r}")
        self.fce = fce
        self.scale = float(scale)

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The support embeddings (through g with FCE) and their labels."""
        return (support_z if self.fce is None else self.fce.support(support_z)), support_onehot

    def logits(self, state: tuple[torch.Tensor, torch.Tensor], query_z: torch.Tensor) -> torch.Tensor:
        """``log P(y = k | x, S)`` ``(..., Q, N)``; its softmax is the attention mass of each class."""
        g, onehot = state
        f = query_z if self.fce is None else self.fce.query(query_z, g)
        return cosine_attention_logits(f, g, onehot, self.scale)


class MatchingNets(EmbeddingHeadLearner):
    """Matching Networks: cosine attention over the support set in a meta-learned embedding space.

    Args:
        model: the embedding network f' = g' (e.g. ``Conv4()`` without ``out_features``).
        fce: full context embeddings (a bidirectional LSTM over the support set, an attention LSTM for queries).
        fce_steps: K, the attention LSTM's read steps (None: one per support example).
        scale: c, multiplying the cosine similarities before the softmax (1: the paper).
        feature_dim: the embedding size the FCE LSTMs take (default: ``model.embedding_dim``).
        strategy, flatten_tasks: as :class:`~innerloop.algorithms.metric.EmbeddingHeadLearner`.

    ``adapt(support_x, support_y)`` returns ``(g(S), one-hot labels)``; ``predict(state, x)`` the log-probabilities
    ``(B, ways)``.
    """

    def __init__(
        self,
        model: nn.Module,
        fce: bool = False,
        fce_steps: int | None = None,
        scale: float = 1.0,
        feature_dim: int | None = None,
        strategy: str = "auto",
        flatten_tasks: bool | None = None,
    ) -> None:
        context = None
        if fce:
            feature_dim = feature_dim or getattr(model, "embedding_dim", None)
            if feature_dim is None:
                raise ValueError(
                    f"fce=True sizes its LSTMs by the embedding: pass feature_dim= (the output size of the "
                    f"{type(model).__name__}, which has no embedding_dim attribute)"
                )
            context = FullContextEmbedding(feature_dim, fce_steps)
        super().__init__(model, MatchingHead(context, scale), strategy=strategy, flatten_tasks=flatten_tasks)

    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{0: {"loss": (T,), "accuracy": (T,)}}``: no adaptation steps (as ProtoNets)."""
        return {0: super().evaluate(batch, [0])[0]}
