"""ResNet-12, the residual backbone of few-shot learning.

Oreshkin, Rodriguez & Lacoste (2018), "TADAM: Task dependent adaptive metric for
improved few-shot learning", NeurIPS, https://arxiv.org/abs/1805.10123, and Lee, Maji,
Ravichandran & Soatto (2019), "Meta-Learning with Differentiable Convex Optimization"
(MetaOptNet), CVPR, https://arxiv.org/abs/1904.03758.

Four residual blocks of widths (64, 160, 320, 640); each block is::

    h = LReLU(BN(conv3x3(x)));  h = LReLU(BN(conv3x3(h)));  h = BN(conv3x3(h))
    out = maxpool2x2(LReLU(h + BN(conv1x1(x))))          (LReLU: LeakyReLU, slope 0.1)

followed by global average pooling (84x84 inputs: 5x5x640 -> 640 features) and an
optional linear head, registered last so that ``adapt="head"`` and ANIL pick it.
``global_pool=False`` flattens instead (MetaOptNet's miniImageNet setting, 16000
features at 84x84). ``dropout`` (off by default) applies plain dropout after each
block; MetaOptNet's DropBlock is not implemented.

Like :class:`~innerloop.models.conv.Conv4` the model is an ``nn.Sequential``
``(block0, ..., block3, pool, flatten[, head])`` and its batch norm is transductive
under innerloop's functional core (see :mod:`innerloop.models.conv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .conv import SliceableSequential


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ResidualBlock(nn.Module):
    """Three 3x3 conv-BN layers with a 1x1 conv-BN shortcut, LeakyReLU(0.1), 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.1, dropout: float = 0.0):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, out_channels, 3)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, 3)
        self.conv3, self.bn3 = _conv_bn(out_channels, out_channels, 3)
        self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1))
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        # act(pool(.)) == pool(act(.)): LeakyReLU is monotone; a quarter of the work.
        return self.dropout(self.act(self.pool(h + self.shortcut(x))))


class ResNet12(SliceableSequential):
    """ResNet-12 embedding network, or a classifier with ``out_features``.

    Args:
        in_channels: input channels (3 for miniImageNet / tieredImageNet / CIFAR-FS).
        widths: output channels of the four blocks.
        out_features: classes of a linear head; ``None`` for an embedding-only network.
        global_pool: average over the final feature map (default) or flatten it.
        image_size: side of the square inputs; only used with ``global_pool=False``
            (to size the head and ``embedding_dim``).
        dropout: dropout rate after every block (0 = off).
        slope: negative slope of the LeakyReLU.
        channels_last: store the conv weights in ``torch.channels_last`` memory format
            (NHWC activations; faster on CPU).

    Parameter names: ``{block}.conv{1,2,3}.*``, ``{block}.bn{1,2,3}.*``,
    ``{block}.shortcut.{0,1}.*`` for blocks 0..3; the head is the last element
    (``6.*`` with global pooling, ``5.*`` without).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 160, 320, 640),
        out_features: int | None = None,
        global_pool: bool = True,
        image_size: int = 84,
        dropout: float = 0.0,
        slope: float = 0.1,
        channels_last: bool = False,
    ):
        widths = tuple(widths)
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_channels
        for w in widths:
            layers.append(ResidualBlock(width, w, slope, dropout))
            width = w
        if global_pool:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            embedding_dim = width
        else:
            side = image_size // 2 ** len(widths)
            if side < 1:
                raise ValueError(f"image_size={image_size} is too small for {len(widths)} 2x2 poolings")
            layers.append(nn.Flatten())
            embedding_dim = width * side * side
        if out_features is not None:
            layers.append(nn.Linear(embedding_dim, out_features))
        super().__init__(*layers)
        self.embedding_dim = embedding_dim
        self.out_features = out_features if out_features is not None else embedding_dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=slope)
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; the stubs omit it
