"""Parameters as name -> tensor mappings, and choosing which of them adapt.

Everything in innerloop passes parameters explicitly as ``dict[str, Tensor]`` (the
names of ``nn.Module.named_parameters``) and calls models through
``torch.func.functional_call``. The module's own parameter slots are never replaced,
which is what makes the engine safe under ``vmap``, ``torch.compile`` and
``torch.distributed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import overload

import torch
from torch import nn

Params = dict[str, torch.Tensor]

# "all", "head", a regular expression over parameter names, an explicit list of
# names, or a predicate name -> bool.
AdaptSpec = str | Iterable[str] | Callable[[str], bool]


def named_params(module: nn.Module) -> Params:
    """``module.named_parameters()`` as a ``name -> tensor`` dict."""
    return dict(module.named_parameters())


def head_names(module: nn.Module) -> list[str]:
    """Names of the parameters of the last leaf module that has parameters.

    For ``Sequential(..., Linear)`` and for models whose classifier is registered last
    (the usual convention) this is the output layer, the part ANIL adapts.
    """
    last: list[str] = []
    for prefix, sub in module.named_modules():
        own = [n for n, _ in sub.named_parameters(recurse=False)]
        if own:
            last = [f"{prefix}.{n}" if prefix else n for n in own]
    if not last:
        raise ValueError("the model has no parameters, so there is no head to adapt")
    return last


def select_adapted(module: nn.Module, spec: AdaptSpec) -> list[str]:
    """Resolve an adapt specification into the ordered list of adapted parameter names."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    return select_names(names, spec, head_names(module) if isinstance(spec, str) and spec == "head" else None)


def select_names(names: Sequence[str], spec: AdaptSpec, head: Sequence[str] | None, what: str = "adapt") -> list[str]:
    """The names among ``names`` an adapt specification chooses (``head``: the output layer's, for ``"head"``)."""
    names = list(names)
    if isinstance(spec, str):
        if spec == "all":
            chosen = names
        elif spec == "head":
            if head is None:
                raise ValueError(f"{what}='head' needs the model's head; give the head's parameter names instead")
            chosen = list(head)
        else:
            try:
                pattern = re.compile(spec)
            except re.error as err:
                raise ValueError(
                    f"{what}={spec!r} is neither 'all', 'head' nor a valid regular expression ({err})"
                ) from None
            chosen = [n for n in names if pattern.search(n)]
    elif callable(spec):
        chosen = [n for n in names if spec(n)]
    else:
        wanted = list(spec)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"{what} names {unknown} are not parameters of the model; its parameters are {names}")
        chosen = [n for n in names if n in wanted]
    if not chosen:
        raise ValueError(
            f"{what}={spec!r} selects no parameter of the model, so the inner loop would do nothing. "
            f"Parameters are: {names}"
        )
    return chosen


def split(params: Mapping[str, torch.Tensor], adapted: Iterable[str]) -> tuple[Params, Params]:
    """(adapted, shared) views of ``params``; shared ones get only the outer gradient."""
    adapted = set(adapted)
    fast = {n: p for n, p in params.items() if n in adapted}
    shared = {n: p for n, p in params.items() if n not in adapted}
    return fast, shared


def slot(name: str) -> str:
    """A parameter name usable as an attribute/ParameterDict key ('.' is not allowed there)."""
    return name.replace(".", "__")


def flatten(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
    """All coordinates of ``tensors`` in one vector, in order (a mapping's values in the mapping's order).

    ``torch.nn.utils.parameters_to_vector`` for any tensors: gradients need not be contiguous, nor parameters.
    """
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return torch.cat([t.reshape(-1) for t in values])


@overload
def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params: ...
@overload
def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...
def unflatten(flat, like):
    """The inverse of :func:`flatten`: consecutive pieces of ``flat`` as views shaped like ``like`` (differentiable).

    A name -> tensor dict for a mapping, else a list.
    """
    shapes = like.values() if isinstance(like, Mapping) else like
    pieces, offset = [], 0
    for t in shapes:
        pieces.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return dict(zip(like.keys(), pieces)) if isinstance(like, Mapping) else pieces


def copy_flat_(tensors: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the consecutive pieces of ``flat`` into ``tensors`` in place (gradients, buffers, parameters).

    Unlike ``torch.nn.utils.vector_to_parameters``, which rebinds ``.data`` to views of ``flat``.
    """
    for t, piece in zip(tensors, unflatten(flat, tensors)):
        t.copy_(piece)
