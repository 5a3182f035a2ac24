"""SNAIL's building blocks (Mishra et al. 2018, section 3.2 and figure 2), each concatenating its output to its input::

    DenseBlock(R, D):      a = tanh(W_f * h) . sigmoid(W_g * h)    causal conv, kernel 2, dilation R; out = [h, a]
    TCBlock(T, D):         DenseBlock(R_i, D), i = 1 .. ceil(log2 T), R_i = 1, 2, 4, ... (or 2, 4, 8, ...)
    AttentionBlock(K, V):  out_t = [h_t, sum_{s <= t} softmax_s(q_t . k_s / sqrt(K)) v_s]   single head, causal

The causal convolution of kernel 2 is one linear map of the pair ``(h[t - R], h[t])`` (the paper's
filter and gate convolutions are the two halves of its output). Every block maps ``(..., L, C)`` to
``(..., L, C + out)`` and has ``step(prefix, new)``: the prefix's outputs and each new row's output
as the element after the prefix (one query per sequence, the prefix computed once). docs/snail.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import positive_int


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
