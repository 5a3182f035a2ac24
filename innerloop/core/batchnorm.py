"""Transductive batch norm that stays correct under ``vmap`` + second-order gradients.

MAML and ProtoNets use batch norm with the statistics of the batch being processed
(support or query set), never running averages. Differentiating *twice* through
``torch.nn.functional.batch_norm`` inside ``torch.func.vmap`` gives a wrong meta-gradient
(the per-task loop is exact; benchmarks/RESULTS.md, "Batch norm under vmap"). Writing the
normalisation with elementary ops avoids the faulty batching rule, so innerloop swaps every
``nn.BatchNorm{1,2,3}d`` for :class:`TransductiveBatchNorm`, reusing the very same ``weight``/``bias`` parameters
(names and optimizer references are unchanged). Outside ``vmap`` (and ``torch.compile``)
the layer uses the fused kernel, which is exact there and faster (same section).
Under ``torch.compile`` on CPU the batch statistics are summed in float64 (see :func:`_statistics_dtype`).
A second mode takes the statistics of each task's support rows only (:func:`support_statistics`; SNAIL).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

try:  # private, but the only way to ask whether a vmap transform is active
    from torch._C._functorch import TransformType, get_interpreter_stack

    def _inside_vmap() -> bool:
        stack = get_interpreter_stack()
        return bool(stack) and any(i.key() == TransformType.Vmap for i in stack)

except ImportError:  # pragma: no cover - other torch versions: always take the safe path

    def _inside_vmap() -> bool:
        return True


def _statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of the batch statistics under ``torch.compile``.

    Inductor's C++ (CPU) reductions add each SIMD lane sequentially over chunks of thousands of elements,
    where eager's sum is pairwise. On conv outputs with many equal values (the blank background of
    Omniglot's strokes) that biases a float32 batch mean by far more than eager's rounding, and
    second-order MAML amplifies it into the meta-gradient. float64 sums restore eager's accuracy; on
    other devices (GPU reductions are trees; MPS has no float64) the input dtype is kept.
    """
    return torch.float64 if x.device.type == "cpu" else x.dtype


_Norm = TypeVar("_Norm", bound="TransductiveBatchNorm")


class TransductiveBatchNorm(nn.Module):
    """y = (x - mean_B(x)) / sqrt(var_B(x) + eps) * weight + bias, statistics over batch and space.

    Args:
        num_features: C, the channels.
        eps: added to the variance.
        affine: learn ``weight`` and ``bias`` (else none).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        #: ``(rows, support)``: the support-statistics mode (``support_statistics``), else None.
        self.groups: tuple[int, int] | None = None

    @classmethod
    def like(cls: type[_Norm], bn: nn.modules.batchnorm._BatchNorm | TransductiveBatchNorm) -> _Norm:
        """The same layer as a torch (or another transductive) batch norm, sharing its very ``weight`` and ``bias``."""
        new = cls(bn.num_features, bn.eps, affine=False)
        if bn.weight is not None:
            new.weight, new.bias = bn.weight, bn.bias  # the same Parameter objects
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, ...)`` normalised with its own batch statistics per channel (or per group: ``groups``)."""
        if self.groups is not None:
            return _support_normalize(x, *self.groups, self.weight, self.bias, self.eps)
        # Under torch.compile the elementary form is traced (the interpreter-stack query would break the
        # graph at every layer) and the compiler fuses its elementwise ops itself.
        compiling = torch.compiler.is_compiling()
        if not compiling and not _inside_vmap():
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        dims = [0, *range(2, x.dim())]
        acc = _statistics_dtype(x) if compiling else x.dtype
        mean = x.mean(dims, keepdim=True, dtype=acc)
        var = (x - mean).pow(2).mean(dims, keepdim=True)  # two-pass variance, in the accumulation dtype
        y = (x - mean.to(x.dtype)) * torch.rsqrt(var + self.eps).to(x.dtype)
        if self.weight is not None:
            shape = [1, -1] + [1] * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, transductive"


def use_transductive_batch_norm_(module: nn.Module) -> nn.Module:
    """Replace every torch batch-norm layer below ``module`` (in place); returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, TransductiveBatchNorm.like(child))
        else:
            use_transductive_batch_norm_(child)
    return module


# --------------------------------------------------------------------------- support statistics (SNAIL)


def _support_normalize(x: torch.Tensor, rows: int, support: int, weight, bias, eps: float) -> torch.Tensor:
    """``x (groups * rows, C, ...)``, each group normalised with the statistics of its first ``support`` rows."""
    groups = x.reshape(-1, rows, *x.shape[1:])  # (G, rows, C, ...)
    dims = [1, *range(3, groups.dim())]
    var, mean = torch.var_mean(groups[:, :support], dims, correction=0, keepdim=True)  # (G, 1, C, 1, ...)
    scale = torch.rsqrt(var + eps)
    if weight is not None and bias is not None:
        shape = [1, 1, -1] + [1] * (x.dim() - 2)
        scale = scale * weight.view(shape)
        shift = bias.view(shape) - mean * scale
    else:
        shift = -mean * scale
    # y = (x - mean) / sqrt(var + eps) * weight + bias as one fused x * scale + shift
    return torch.addcmul(shift, groups, scale).reshape(x.shape)


class SupportBatchNorm(TransductiveBatchNorm):
    """A :class:`TransductiveBatchNorm` whose statistics come from each task's support set (SNAIL).

    Inside :func:`support_statistics` a batch is ``groups x rows`` examples (a group: one task, its
    support rows first) and every group is normalised with the per-channel mean and variance of its
    first ``support`` rows; a query's output then depends on the support set and on itself only.
    Outside it, the transductive batch norm. The class only names the mode (reports say which one ran).
    """

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, support statistics"


def use_support_batch_norm_(module: nn.Module) -> list[SupportBatchNorm]:
    """Replace every batch-norm layer below ``module`` (torch or transductive) in place; returns the new layers."""
    replaced = []
    for name, child in list(module.named_children()):
        if isinstance(child, SupportBatchNorm):
            replaced.append(child)
        elif isinstance(child, (nn.modules.batchnorm._BatchNorm, TransductiveBatchNorm)):
            new = SupportBatchNorm.like(child)
            setattr(module, name, new)
            replaced.append(new)
        else:
            replaced += use_support_batch_norm_(child)
    return replaced


@contextmanager
def support_statistics(norms: Sequence[TransductiveBatchNorm], rows: int, support: int) -> Iterator[None]:
    """Within the block, ``norms`` take their statistics from the first ``support`` of every ``rows`` examples."""
    for norm in norms:
        norm.groups = (rows, support)
    try:
        yield
    finally:
        for norm in norms:
            norm.groups = None
