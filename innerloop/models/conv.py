"""Conv-4, the four-block convolutional backbone of the few-shot literature.

Vinyals et al. (2016, Matching Networks) introduced it; MAML (Finn et al. 2017) and
Prototypical Networks (Snell et al. 2017) use it for Omniglot and miniImageNet::

    4 x [conv 3x3 (padding 1) -> BatchNorm -> ReLU -> max-pool 2x2]  -> flatten

(computed as pool-then-ReLU, the same function with a quarter of the ReLU work).

Each pool halves the spatial size (rounding down), so a side of ``s`` ends at
``s // 16``: 28x28 (Omniglot) -> 1x1, 84x84 (miniImageNet) -> 5x5. The embedding
therefore has ``hidden`` features on Omniglot and ``25 * hidden`` on miniImageNet
(1600 with the 64 filters of ProtoNets, 800 with the 32 filters of MAML).

Without ``out_features`` the network is the embedding ``f_phi`` of ProtoNets; with it
a linear classifier follows, registered last so that ``adapt="head"`` and ANIL pick
it. The model is an ``nn.Sequential`` ``(block0, block1, block2, block3, flatten[,
head])``, so ``ANIL(model)`` splits body from head by position.

Batch norm is used transductively, as in the papers: innerloop's functional core
(:func:`innerloop.core.engine.functional_model`) strips the running statistics, so
every forward pass normalizes with the statistics of the batch it is given (one
task's examples under ``vmap`` and under the loop alike).

The batch-norm layers are :class:`VmapSafeBatchNorm2d`: PyTorch's fused batch norm
gives wrong second derivatives under ``vmap`` (seen with torch 2.13 on CPU; compare
pytorch/functorch#534), so
second-order MAML with ``strategy="vmap"`` disagreed with the loop by up to 1e-1 in
float64. Under ``vmap`` this layer normalizes with primitive operations instead.

Inputs may be contiguous or ``channels_last``, and so may the weights
(``channels_last=True``); the output is the same.
"""

from __future__ import annotations

import torch
from torch import nn


def _inside_vmap() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (True if that cannot be determined)."""
    try:
        from torch._C._functorch import TransformType, get_interpreter_stack
    except ImportError:  # pragma: no cover - private API moved: take the always-correct path
        return True
    stack = get_interpreter_stack()
    return bool(stack) and any(level.key() == TransformType.Vmap for level in stack)


class VmapSafeBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose batch-statistics path is correct to second order under ``vmap``.

    Once innerloop's functional core has stripped the running statistics (transductive
    batch norm), a forward pass inside ``vmap`` computes::

        y = (x - mean) / sqrt(var + eps) * weight + bias      (biased variance over N, H, W)

    with ``var_mean`` and ``addcmul``, whose derivatives of every order batch correctly.
    Everywhere else (no ``vmap``, or running statistics present) it is exactly
    ``nn.BatchNorm2d``, fused kernel and all; state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.running_mean is not None or not _inside_vmap():
            return super().forward(x)
        self._check_input_dim(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.view(-1, 1, 1)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.view(-1, 1, 1)
        return torch.addcmul(shift, x, scale)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv 3x3 (padding 1) -> BatchNorm2d -> ReLU -> max-pool 2x2.

    The pool runs before the ReLU: max-pooling commutes with any monotone function, so
    ``relu(maxpool(h)) == maxpool(relu(h))`` exactly (gradients included) and the ReLU
    touches a quarter of the activations.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        VmapSafeBatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


def conv4_features(hidden: int = 64, image_size: int = 28, blocks: int = 4) -> int:
    """Size of the flattened Conv-4 embedding for square ``image_size`` inputs."""
    side = image_size
    for _ in range(blocks):
        side //= 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for {blocks} 2x2 poolings (needs >= {2 ** blocks})")
    return hidden * side * side


class Conv4(nn.Sequential):
    """The 4-block conv net; an embedding network, or a classifier with ``out_features``.

    Args:
        in_channels: 1 for Omniglot, 3 for miniImageNet.
        hidden: filters per block (64 in ProtoNets and MAML-Omniglot, 32 in MAML-miniImageNet).
        out_features: classes of a linear head (e.g. the ways of MAML); ``None`` for an
            embedding-only network (ProtoNets).
        image_size: side of the square inputs; only needed to size the head.
        channels_last: store the conv weights in ``torch.channels_last`` memory format,
            so that activations are NHWC whatever the input's layout (faster on CPU;
            ``model.to(memory_format=torch.channels_last)`` does the same later).

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
    ):
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(4):
            layers.append(conv_block(width, hidden))
            width = hidden
        layers.append(nn.Flatten())
        embedding_dim = conv4_features(hidden, image_size)
        if out_features is not None:
            layers.append(nn.Linear(embedding_dim, out_features))
        super().__init__(*layers)
        self.embedding_dim = embedding_dim
        self.out_features = out_features if out_features is not None else embedding_dim
        if channels_last:
            self.to(memory_format=torch.channels_last)
