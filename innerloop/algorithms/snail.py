"""SNAIL, the Simple Neural AttentIve Learner.

Mishra, Rohaninejad, Chen & Abbeel (2018), "A Simple Neural Attentive Meta-Learner", ICLR.
https://arxiv.org/abs/1707.03141

A black-box (model-based) meta-learner: a causal sequence network reads a task's labelled
support set and then an unlabelled query, and predicts the query's label at the last
position. There is no inner gradient step; the "adaptation" is the forward pass itself.

The sequence of an N-way K-shot task, length T = N*K + 1 (section 3 of the paper)::

    u_i = [f_phi(x_i), onehot(y_i)]   i = 1 .. N*K     the support pairs, in a fixed order
    u_T = [f_phi(x_q), 0]                               one query, its label unknown (zeros)

f_phi is an embedding network (Conv-4 here, as in the paper's Omniglot experiments). Three
building blocks (the paper's section 3.2, pseudocode in its figure 2), each *concatenating*
its output to its input, so the feature size grows along the network:

    DenseBlock(R, D):   a = tanh(W_f * h) . sigmoid(W_g * h)      causal conv, kernel 2, dilation R,
                        out = [h, a]                               D filters each (gated activation)
    TCBlock(T, D):      DenseBlock(R_i, D) for i = 1 .. ceil(log2 T), R_i exponentially growing
    AttentionBlock(K, V): q_t, k_t = affine_K(h_t), v_t = affine_V(h_t)
                        p_t = softmax_{s <= t}(q_t . k_s / sqrt(K))  causally masked, single head
                        out_t = [h_t, sum_{s <= t} p_ts v_s]

and the few-shot classification network of the paper's appendix (as we read it, the same
for Omniglot and miniImageNet, 5- and 20-way, 1- and 5-shot)::

    f_phi -> Attention(64, 32) -> TC(T, 128) -> Attention(256, 128) -> TC(T, 128)
          -> Attention(512, 256) -> 1x1 conv (a linear map per position) to N logits

Meta-training minimizes the cross-entropy of the logits at the query position (the last
one), averaged over the query sequences of a task and the tasks of a meta-batch.

What this implementation follows, and where it departs:

* Blocks, their sizes and their order are the paper's (``FEW_SHOT_ARCHITECTURE``;
  ``architecture=`` builds other stacks of the same blocks). The causal convolution of
  kernel 2 and dilation R is written as what it is, one linear map of the pair
  ``(h[t - R], h[t])`` (zero before the sequence start); the paper's two convolutions
  (filter and gate) are the two halves of its output. Same function, same parameter count.
* Dilations: the default is 1, 2, 4, ..., 2^(ceil(log2 T) - 1) (1, 2, 4 for T = 6): the
  receptive field, 2^ceil(log2 T) >= T, covers every earlier position, which is what the
  paper's text asks of a TC block. Its pseudocode (figure 2) literally runs
  ``i = 1 .. ceil(log2 T)`` with dilation ``2^i``, i.e. 2, 4, 8, as does the PyTorch port
  eambutu/snail-pytorch: a receptive field of even offsets only (the query of a 5-way
  1-shot sequence reaches supports 1 and 3 through the TC blocks, the others through
  attention alone), and a dilation-8 tap that only ever reads the zero padding.
  ``first_dilation=2`` reproduces that reading.
* Embedding: for Omniglot the paper uses the Conv-4 embedding of Vinyals et al. (64
  filters, 64 features on 28x28). innerloop's :class:`~innerloop.models.Conv4` (ReLU, as in
  ProtoNets) is the default; any network with an ``embedding_dim`` works (ResNet-12 for
  miniImageNet, whose embedding in the paper is a different ResNet).
* Batch norm: each task's support set provides the statistics, applied to its support and
  query images alike (:class:`SupportBatchNorm` replaces the embedding's batch-norm
  layers, keeping their parameters). A query's prediction therefore depends on the
  support set and on that query only, never on the other queries evaluated beside it,
  which is what the paper's one-query sequences mean, and the support positions stay the
  same for every query of a task. The paper does not say which statistics it used.
* One sequence per query: a task with Q queries is Q sequences sharing the same N*K
  support prefix. Causal masking means the support positions never see the query, so the
  prefix is computed once per task and each query only adds its last position (the
  "key/value cache" of autoregressive decoding): every block's ``step(prefix, new)`` gives
  the prefix outputs and, for each new element, its output as position ``len(prefix)``.
  :meth:`SNAILNet.sequence` is the plain full-sequence forward; the tests check that both
  agree.
* Support order: SNAIL reads a sequence, so the order matters. The paper presents the
  support set in random order. Here the order is a deterministic function of the support
  set (``support_order="content"``, the default): its examples are sorted by a fixed random
  projection of their pixels. So results are reproducible with no random draw, the same
  under ``vmap``, the loop and on any number of ranks; reordering a task's support set
  changes nothing; and the position of an example says nothing about its label.
  (:class:`~innerloop.data.EpisodicTasks` lists the support set class-major, labels
  0,0,..,1,1,..: fed in that order a network can read the label off the position and
  ignore the label input.) ``support_order="batch"`` keeps the order of the batch.
* The architecture is built for one N and K: the output layer has N classes and the
  temporal-convolution depth is ceil(log2(N*K + 1)). Support sets of another size are
  refused (ValueError) rather than silently run on sequences the network never saw, and
  ``training.config.validate`` refuses configs evaluating other ways or shots.
* ``evaluate(batch, steps)`` accepts adaptation step counts only to share the evaluation
  protocol of the other learners; every requested step gets the same per-task metrics,
  and configs for ``snail`` must ask for step 0 only (as for ``cnp``).
* Tasks: by default (``flatten_tasks=True``) the whole meta-batch goes through the
  embedding in one forward pass and the sequence network on a leading task dimension;
  this is exact, because the batch statistics are per task by construction.
  ``flatten_tasks=False`` maps a per-task function over the tasks with ``strategy``
  (``"vmap"``, ``"loop"`` or ``"auto"``); all three give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batchnorm import TransductiveBatchNorm
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .base import MetaLearner, check_class_labels

SUPPORT_ORDERS = ("content", "batch")
#: The few-shot classification network of the paper's appendix: ("attention", key size, value size)
#: and ("tc", filters) blocks, in order; a linear map to the N classes follows.
FEW_SHOT_ARCHITECTURE = (
    ("attention", 64, 32),
    ("tc", 128),
    ("attention", 256, 128),
    ("tc", 128),
    ("attention", 512, 256),
)


# --------------------------------------------------------------------------- batch norm


class SupportBatchNorm(nn.Module):
    """Batch norm whose statistics come from each task's support set.

    Inside :meth:`SNAILNet.embed` the batch is ``groups x rows`` examples (a group = one
    task: its support images first, then its queries) and every group is normalized with
    the mean and variance, over its first ``support`` rows and space, of each channel.
    Outside it (``layout`` None) the whole batch gives the statistics (transductive
    batch norm). Elementary operations only, so it is exact under ``vmap`` and autograd.

    Args:
        num_features: C, the channels.
        eps: added to the variance.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_parameter("weight", None)  # set by ``like``: the replaced layer's own parameters
        self.register_parameter("bias", None)
        self.layout: tuple[int, int] | None = None  # (rows per group, support rows), set by SNAILNet.embed

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm | TransductiveBatchNorm) -> SupportBatchNorm:
        """The same parameters (the very ``Parameter`` objects) as a torch or transductive batch norm."""
        new = cls(bn.num_features, bn.eps)
        new.weight, new.bias = bn.weight, bn.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (groups * rows, C, ...)`` normalised per group with its support rows' statistics."""
        rows, support = self.layout if self.layout is not None else (x.shape[0], x.shape[0])
        groups = x.reshape(-1, rows, *x.shape[1:])  # (G, rows, C, ...)
        dims = [1, *range(3, groups.dim())]
        var, mean = torch.var_mean(groups[:, :support], dims, correction=0, keepdim=True)  # (G, 1, C, 1, ...)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:  # affine: both
            shape = [1, 1, -1] + [1] * (x.dim() - 2)
            scale = scale * self.weight.view(shape)
            shift = self.bias.view(shape) - mean * scale
        else:
            shift = -mean * scale
        # y = (x - mean) / sqrt(var + eps) * weight + bias as one fused x * scale + shift
        return torch.addcmul(shift, groups, scale).reshape(x.shape)

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, support statistics"


def use_support_batch_norm_(module: nn.Module) -> list[SupportBatchNorm]:
    """Replace every batch-norm layer below ``module`` in place; returns the new layers."""
    replaced = []
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.modules.batchnorm._BatchNorm, TransductiveBatchNorm)):
            new = SupportBatchNorm.like(child)
            setattr(module, name, new)
            replaced.append(new)
        elif isinstance(child, SupportBatchNorm):
            replaced.append(child)
        else:
            replaced += use_support_batch_norm_(child)
    return replaced


# --------------------------------------------------------------------------- the blocks
#
# Every block maps a sequence (..., L, C) to (..., L, C + out), leading dimensions batched,
# and has ``step(prefix, new)``: the outputs of the prefix sequence (..., S, C) and, for each
# row of new (..., Q, C), its output as element S of its own sequence ``prefix + [new_q]``.


class DenseBlock(nn.Module):
    """Causal conv (kernel 2, dilation R) with a gated activation; output concatenated to the input.

    Args:
        in_channels: C, features per sequence element.
        filters: D, the gated activation's outputs per element.
        dilation: R, the distance of the past tap.
    """

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.in_channels, self.filters = in_channels, filters
        self.dilation = positive_int("dilation", dilation)
        # Kernel 2, dilation R: one linear map of (h[t - R], h[t]) (input columns: the two taps),
        # outputs: the filter and gate pre-activations xf, xg.
        self.conv = nn.Linear(2 * in_channels, 2 * filters)

    def activations(self, past: torch.Tensor | None, now: torch.Tensor) -> torch.Tensor:
        """tanh(xf) * sigmoid(xg) from the taps h[t - R] (``past``; None: all before the start, zeros) and h[t]."""
        w_past, w_now = self.conv.weight.split(self.in_channels, 1)
        pre = F.linear(now, w_now, self.conv.bias)
        if past is not None:
            pre = pre + F.linear(past, w_past)
        xf, xg = pre.chunk(2, -1)
        return torch.tanh(xf) * torch.sigmoid(xg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (..., L, C) -> (..., L, C + filters)``: the gated causal convolution concatenated to h."""
        length = h.shape[-2]
        past = F.pad(h[..., : length - self.dilation, :], (0, 0, self.dilation, 0)) if self.dilation < length else None
        return torch.cat([h, self.activations(past, h)], -1)

    def step(self, prefix: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix's outputs and each new row's output as the element after the prefix."""
        position = prefix.shape[-2]
        past = None
        if self.dilation <= position:
            past = prefix[..., position - self.dilation, :].unsqueeze(-2).expand_as(new)
        return self(prefix), torch.cat([new, self.activations(past, new)], -1)


class TCBlock(nn.Module):
    """ceil(log2 T) DenseBlocks of dilations ``first_dilation * 2^j``: 1, 2, 4, ... (or 2, 4, 8, ...).

    Args:
        in_channels: features per sequence element at the input.
        length: T, the sequence length (sets the depth).
        filters: D of each dense block.
        first_dilation: the first block's dilation.
    """

    def __init__(self, in_channels: int, length: int, filters: int, first_dilation: int = 1) -> None:
        super().__init__()
        depth = (positive_int("length", length) - 1).bit_length()  # ceil(log2 T) for T >= 2
        self.blocks = nn.ModuleList(
            DenseBlock(in_channels + j * filters, filters, first_dilation * 2**j) for j in range(depth)
        )
        self.out_channels = in_channels + len(self.blocks) * filters

    @property
    def dilations(self) -> list[int]:
        """The dilations of the dense blocks, in order."""
        return [b.dilation for b in self.blocks]  # type: ignore[misc]  # ModuleList items are typed Module

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The dense blocks in order: ``(..., L, C) -> (..., L, out_channels)``."""
        for block in self.blocks:
            h = block(h)
        return h

    def step(self, prefix: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix's outputs and each new row's output as the element after the prefix."""
        for block in self.blocks:
            prefix, new = block.step(prefix, new)  # type: ignore[operator]  # ModuleList items are typed Module
        return prefix, new


class AttentionBlock(nn.Module):
    """Causal single-head key/query/value attention; the read is concatenated to the input.

    Args:
        in_channels: features per sequence element.
        key_size: K, the size of queries and keys.
        value_size: V, the size of values (of the read).
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_channels = in_channels + value_size

    def _causal(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's output over the sequence h, and its keys and values."""
        q, k, v = self.query(h), self.key(h), self.value(h)
        logits = q @ k.transpose(-1, -2) * self.scale  # (..., L, L): row t attends to columns s
        length = h.shape[-2]
        future = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(1)  # s > t
        probs = logits.masked_fill(future, float("-inf")).softmax(-1)
        return torch.cat([h, probs @ v], -1), k, v

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (..., L, C) -> (..., L, C + value_size)``: the causal attention read concatenated to h."""
        return self._causal(h)[0]

    def step(self, prefix: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix's outputs and each new row's output, attending to the prefix and to itself."""
        prefix_out, k_prefix, v_prefix = self._causal(prefix)
        # Each new element attends to the whole prefix and to itself.
        q, k, v = self.query(new), self.key(new), self.value(new)
        logits = torch.cat([q @ k_prefix.transpose(-1, -2), (q * k).sum(-1, keepdim=True)], -1) * self.scale
        p = logits.softmax(-1)  # (..., Q, S + 1)
        length = prefix.shape[-2]
        read = p[..., :length] @ v_prefix + p[..., length:] * v
        return prefix_out, torch.cat([new, read], -1)


# --------------------------------------------------------------------------- the network


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

    @contextmanager
    def _support_statistics(self, rows: int, support: int):
        for norm in self.norms:
            norm.layout = (rows, support)
        try:
            yield
        finally:
            for norm in self.norms:
                norm.layout = None

    def embed(self, x: torch.Tensor, support: int) -> torch.Tensor:
        """f_phi of images ``(..., n, C, H, W) -> (..., n, D)``; batch norm uses the first ``support``
        of the n images of each leading index (a task's support set) for its statistics."""
        lead, rows = x.shape[:-4], x.shape[-4]
        with self._support_statistics(rows, support):
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


# --------------------------------------------------------------------------- the learner


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


class SNAIL(MetaLearner):
    """SNAIL: adapts to an N-way K-shot task in one causal forward pass over its support set.

    Args:
        model: the embedding network f_phi; default ``Conv4(1, 64)`` without head (28x28
            Omniglot, 64 features, as ProtoNets uses). Its batch-norm layers are replaced in
            place by :class:`SupportBatchNorm` (same parameters).
        ways, shots: N and K; fix the output layer (N classes) and the sequence length
            N*K + 1 (the temporal-convolution depth).
        embedding_dim: features per example of ``model`` (default: its ``embedding_dim``).
        first_dilation: 1 (default) gives the dilations 1, 2, 4, ...; 2 gives 2, 4, 8, ..., the
            literal reading of the paper's pseudocode (see the module notes).
        architecture: the blocks after the embedding, ``("attention", key_size, value_size)``
            and ``("tc", filters)`` entries; default the paper's ``FEW_SHOT_ARCHITECTURE``.
        support_order: ``"content"`` (default; a deterministic order by the pixels, see the
            module notes) or ``"batch"`` (the order of the batch).
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``: how tasks are mapped when they are not
            flattened (``flatten_tasks=False``).
        flatten_tasks: ``True`` (default) runs the whole meta-batch at once; exact here.

    ``parameters()`` are exactly the meta-parameters (embedding and sequence network).
    ``adapt(support_x, support_y)`` returns the :class:`SNAILContext` of one task,
    ``predict(context, query_x)`` the logits ``(Q, N)``, ``learner(support_x, support_y,
    query_x)`` the same in one call.
    """

    model: SNAILNet

    eval_steps = 0  # no inner loop: the trainer validates at step 0

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

    def forward(self, support_x, support_y, query_x) -> torch.Tensor:  # type: ignore[override]  # forward-pass learner: a whole task
        """Logits ``(Q, N)`` of one task's queries: ``predict(adapt(support_x, support_y), query_x)``."""
        return self.predict(self.adapt(support_x, support_y), query_x)

    # -- the MetaLearner interface ------------------------------------------------------------
    def episode_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``loss`` (cross-entropy at the query position) and ``accuracy``, each ``(T,)``."""
        self.check_batch(batch)
        self._check(batch.support_y, batch.query_y)
        support_x, support_y = self.order(batch.support_x, batch.support_y)

        def task(support_x, support_y, query_x, query_y):
            logits = self.model(support_x, support_y, query_x)  # (..., Q, N)
            log_p = logits.log_softmax(-1)
            loss = -log_p.gather(-1, query_y.unsqueeze(-1)).squeeze(-1).mean(-1)
            accuracy = (logits.argmax(-1) == query_y).to(logits.dtype).mean(-1)
            return {"loss": loss, "accuracy": accuracy}

        if self.flatten_tasks:
            return task(support_x, support_y, batch.query_x, batch.query_y)
        return self.map_tasks(task, TaskBatch(support_x, support_y, batch.query_x, batch.query_y))

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, metrics)``: the mean query cross-entropy of ``batch``, the batch means of ``loss`` and ``accuracy``."""
        per_task = self.episode_metrics(batch)
        return per_task["loss"].mean(), {name: value.detach().mean() for name, value in per_task.items()}

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{s: {"loss": (T,), "accuracy": (T,)}}`` for each ``s`` in ``steps``, all the same metrics:
        SNAIL has no adaptation steps; ``steps`` only exists to share the evaluation protocol."""
        steps = sorted({positive_int("steps", s, allow_zero=True) for s in steps})
        per_task = self.episode_metrics(batch)
        return {s: dict(per_task) for s in steps}
