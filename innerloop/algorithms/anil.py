"""ANIL: Almost No Inner Loop.

Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML", ICLR. https://arxiv.org/abs/1909.09157

MAML in which only the head (the final layer) adapts in the inner loop; the body's
parameters phi are shared across tasks and learned by the outer loop alone::

    z = f_phi(x)                                   (computed once per task)
    w'_i = w - alpha * grad_w L_support_i(g_w(z))
    min_{phi, w}  sum_i L_query_i(g_w'_i(f_phi(x_query)))

Because phi does not change during adaptation, the body's features are computed once
per task rather than at every inner step.
"""

from __future__ import annotations

from torch import nn
from torch.func import functional_call

from ..core.engine import functional_model
from ..core.params import Params
from .gradient import DEFAULT_INNER_LR
from .maml import MAML


class ANIL(MAML):
    """MAML adapting the head only.

    ``model`` is an ``nn.Sequential`` whose last element is the head, or pass the body
    and the head explicitly: ``ANIL(body, head=head_module)``; the learner's model is
    then ``Sequential(body, head)`` with parameter names ``0.*`` and ``1.*``.

    Args:
        model: the body and head as an ``nn.Sequential`` (head last), or the body when ``head`` is given.
        inner_lr: alpha of the head's SGD inner loop (default 0.01; not with ``update_rule=``).
        head: the head module, if ``model`` is the body alone.
        **kwargs: as :class:`MAML` (``inner_steps``, ``first_order``, ``update_rule``, ...), except ``adapt``.
    """

    def __init__(
        self, model: nn.Module, inner_lr: float | None = DEFAULT_INNER_LR, head: nn.Module | None = None, **kwargs
    ):
        if head is not None:
            model = nn.Sequential(model, head)
        if not isinstance(model, nn.Sequential) or len(model) < 2:
            raise ValueError(
                "ANIL needs to know where the head starts: pass an nn.Sequential whose last element is "
                "the head, or ANIL(body, head=head_module)"
            )
        head_prefix = f"{len(model) - 1}."
        if "adapt" in kwargs:
            raise ValueError("ANIL adapts the head only; use MAML(adapt=...) to choose other parameters")
        super().__init__(model, inner_lr=inner_lr, adapt=lambda name: name.startswith(head_prefix), **kwargs)
        self._head_prefix = head_prefix
        self._body = functional_model(nn.Sequential(*list(model)[:-1]))  # a function, not a sub-module

    def _sub(self, params: Params, inside_head: bool) -> Params:
        n = len(self._head_prefix)
        if inside_head:
            return {k[n:]: v for k, v in params.items() if k.startswith(self._head_prefix)}
        return {k: v for k, v in params.items() if not k.startswith(self._head_prefix)}

    def embed(self, params, x):
        """The body's features of ``x`` (computed once per task)."""
        return self._body(self._sub(params, inside_head=False), x)

    def head_forward(self, params, z):
        """The head on the body's features ``z``."""
        return functional_call(self.model[-1], self._sub(params, inside_head=True), (z,))
