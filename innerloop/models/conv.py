"""Conv-4, the four-block convolutional backbone of the few-shot literature.

Vinyals et al. (2016, Matching Networks) introduced it; MAML (Finn et al. 2017) and
Prototypical Networks (Snell et al. 2017) use it for Omniglot and miniImageNet::

    4 x [conv 3x3 (padding 1) -> BatchNorm -> ReLU -> max-pool 2x2]  -> flatten

(computed as pool-then-ReLU, the same function with a quarter of the ReLU work).

``pool="stride"`` is the network of MAML's own Omniglot code (cbfinn/maml, ``--max_pool`` off):
each 3x3 convolution has stride 2 and no pooling follows (28 -> 14 -> 7 -> 4 -> 2), so it
computes a quarter of the output positions, and the embedding is the mean over the last
2x2 positions (64 features, ``tf.reduce_mean(hidden4, [1, 2])`` there). TensorFlow's ``SAME``
padding pads only the bottom/right for stride 2; PyTorch's ``padding=1`` pads both sides, which
gives the same output sizes.

Without ``out_features`` the network is the embedding ``f_phi`` of ProtoNets; with it a linear
head follows, registered last (``adapt="head"`` and ANIL pick it). Batch norm is transductive
inside innerloop, as in the papers. Sizes, layout and batch norm: docs/models.md.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class SliceableSequential(nn.Sequential):
    """``nn.Sequential`` whose slices are plain ``nn.Sequential`` (``model[:4]`` is the body).

    ``nn.Sequential`` slices by calling ``type(self)(OrderedDict)``, which subclasses
    with their own constructor arguments cannot accept.
    """

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


POOLS = ("max", "stride")  # how each block halves the side: a 2x2 max-pool, or a stride-2 convolution


def conv_block(in_channels: int, out_channels: int, pool: str = "max") -> nn.Sequential:
    """conv 3x3 (padding 1) -> BatchNorm2d -> ReLU -> max-pool 2x2; or, with ``pool="stride"``, a stride-2 conv.

    The pool runs before the ReLU: max-pooling commutes with any monotone function, so
    ``relu(maxpool(h)) == maxpool(relu(h))`` exactly (gradients included) and the ReLU
    touches a quarter of the activations.
    """
    if pool == "stride":
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.MaxPool2d(2), nn.ReLU())


class SpatialMean(nn.Module):
    """``(N, C, H, W) -> (N, C)``: the mean over positions that ends MAML's strided Omniglot network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def conv4_features(hidden: int = 64, image_size: int = 28, blocks: int = 4, pool: str = "max") -> int:
    """Size of the Conv-4 embedding for square ``image_size`` inputs (``hidden`` for ``pool="stride"``)."""
    side = image_size
    for _ in range(blocks):
        side = (side + 1) // 2 if pool == "stride" else side // 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for {blocks} 2x2 poolings (needs >= {2**blocks})")
    return hidden if pool == "stride" else hidden * side * side


class Conv4(SliceableSequential):
    """The 4-block conv net; an embedding network, or a classifier with ``out_features``.

    Args:
        in_channels: 1 for Omniglot, 3 for miniImageNet.
        hidden: filters per block (64 in ProtoNets and MAML-Omniglot, 32 in MAML-miniImageNet).
        out_features: classes of a linear head (e.g. the ways of MAML); ``None`` for an
            embedding-only network (ProtoNets).
        image_size: side of the square inputs; sizes the head and ``embedding_dim``
            (the forward pass itself accepts any size >= 16).
        channels_last: store the conv weights in ``torch.channels_last`` memory format,
            so that activations are NHWC whatever the input's layout (faster on CPU;
            ``model.to(memory_format=torch.channels_last)`` does the same later).
        pool: ``"max"`` (2x2 max-pools, the ProtoNets / Matching Networks network) or ``"stride"``
            (stride-2 convolutions and a mean over positions, MAML's Omniglot network).

    Parameter names: ``{block}.0.*`` conv, ``{block}.1.*`` batch norm for blocks 0..3,
    ``5.*`` the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        image_size: int = 28,
        channels_last: bool = False,
        pool: str = "max",
    ):
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(4):
            layers.append(conv_block(width, hidden, pool))
            width = hidden
        layers.append(SpatialMean() if pool == "stride" else nn.Flatten())
        embedding_dim = conv4_features(hidden, image_size, pool=pool)
        if out_features is not None:
            layers.append(nn.Linear(embedding_dim, out_features))
        super().__init__(*layers)
        self.embedding_dim = embedding_dim
        self.out_features = out_features if out_features is not None else embedding_dim
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; the stubs omit it
