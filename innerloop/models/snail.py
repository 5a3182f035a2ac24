"""SNAIL's few-shot classification network (Mishra et al. 2018, appendix; as we read it, the same for
Omniglot and miniImageNet, 5- and 20-way, 1- and 5-shot)::

    u_i = [f_phi(x_i), onehot(y_i)] (i = 1 .. N*K),  u_T = [f_phi(x_q), 0]     T = N*K + 1
    f_phi -> Attention(64, 32) -> TC(T, 128) -> Attention(256, 128) -> TC(T, 128)
          -> Attention(512, 256) -> 1x1 conv (a linear map per position) to N logits

Departures: the embedding's batch norm takes each task's support statistics (``SupportBatchNorm``),
and dilations start at 1 (``first_dilation=2``: the pseudocode's 2, 4, 8). docs/snail.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batchnorm import support_statistics, use_support_batch_norm_
from ..validate import positive_int
from .snail_blocks import AttentionBlock, TCBlock

#: The few-shot classification network of the paper's appendix: ("attention", key size, value size)
#: and ("tc", filters) blocks, in order; a linear map to the N classes follows.
FEW_SHOT_ARCHITECTURE = (
    ("attention", 64, 32),
    ("tc", 128),
    ("attention", 256, 128),
    ("tc", 128),
    ("attention", 512, 256),
)


class SNAILNet(nn.Module):
    """Embedding + the paper's few-shot classification blocks, for N-way K-shot sequences.

    ``forward(support_x, support_y, query_x) -> logits (..., Q, N)``: one sequence per query,
    the support set (in the order given) as its prefix. Leading (task) dimensions are batched.
    ``sequence(u)`` is the plain causal forward over sequences ``u (..., L, D + N)`` of
    embedded, label-concatenated elements, returning the logits at every position.

    The embedding's batch-norm layers are replaced (in place) by :class:`SupportBatchNorm`.

    Args:
        embedding: f_phi, images -> ``(n, embedding_dim)`` features.
        ways, shots: N and K of the sequences it reads (length N*K + 1).
        embedding_dim: features per image of ``embedding`` (default: its ``embedding_dim`` attribute).
        first_dilation: the first dilation of each TC block (1, or the pseudocode's 2).
        architecture: the blocks, ``("attention", key_size, value_size)`` and ``("tc", filters)``.
    """

    def __init__(
        self,
        embedding: nn.Module,
        ways: int,
        shots: int,
        embedding_dim: int | None = None,
        first_dilation: int = 1,
        architecture: Sequence[tuple] = FEW_SHOT_ARCHITECTURE,
    ) -> None:
        super().__init__()
        self.ways = positive_int("ways", ways)
        self.shots = positive_int("shots", shots)
        if embedding_dim is None:
            embedding_dim = getattr(embedding, "embedding_dim", None)
            if embedding_dim is None:
                raise ValueError(
                    f"cannot tell the output size of the embedding {type(embedding).__name__}: pass embedding_dim "
                    "(the number of features per example) or give it an embedding_dim attribute"
                )
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        self.length = self.ways * self.shots + 1  # T: the support pairs and one query
        self.embedding = embedding
        self.norms = use_support_batch_norm_(embedding)
        channels = self.embedding_dim + self.ways
        blocks: list[AttentionBlock | TCBlock] = []
        for spec in architecture:
            if spec[0] == "attention" and len(spec) == 3:
                blocks.append(AttentionBlock(channels, spec[1], spec[2]))
            elif spec[0] == "tc" and len(spec) == 2:
                blocks.append(TCBlock(channels, self.length, spec[1], first_dilation))
            else:
                raise ValueError(
                    f"architecture entries are ('attention', key_size, value_size) or ('tc', filters), got {spec!r}"
                )
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels, self.ways)  # the paper's final 1x1 convolution with N filters

    def embed(self, x: torch.Tensor, support: int) -> torch.Tensor:
        """f_phi of images ``(..., n, C, H, W) -> (..., n, D)``; batch norm uses the first ``support``
        of the n images of each leading index (a task's support set) for its statistics."""
        lead, rows = x.shape[:-4], x.shape[-4]
        with support_statistics(self.norms, rows, support):
            z = self.embedding(x.reshape(-1, *x.shape[-3:]))
        return z.reshape(*lead, rows, -1)

    def one_hot(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(..., S) integer labels -> (..., S, N); a comparison, so it runs under ``vmap``."""
        return (labels.unsqueeze(-1) == torch.arange(self.ways, device=labels.device)).to(dtype)

    def inputs(self, support_x, support_y, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence elements: support ``(..., S, D + N)`` and queries ``(..., Q, D + N)`` (zero label)."""
        support = support_x.shape[-4]
        z = self.embed(torch.cat([support_x, query_x], -4), support)
        z_support, z_query = z[..., :support, :], z[..., support:, :]
        labels = self.one_hot(support_y, z.dtype)
        return torch.cat([z_support, labels], -1), F.pad(z_query, (0, self.ways))  # the query's label: zeros

    def sequence(self, u: torch.Tensor) -> torch.Tensor:
        """The causal network over whole sequences: ``(..., L, D + N) -> logits (..., L, N)``."""
        for block in self.blocks:
            u = block(u)
        return self.head(u)

    def forward(self, support_x, support_y, query_x) -> torch.Tensor:
        """Logits ``(..., Q, N)`` at the last position of each sequence ``support + [query_q]``."""
        prefix, new = self.inputs(support_x, support_y, query_x)
        for block in self.blocks:
            prefix, new = block.step(prefix, new)  # type: ignore[operator]  # ModuleList items are typed Module
        return self.head(new)
