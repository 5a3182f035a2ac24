"""Meta-SGD.

Li, Zhou, Chen & Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning". https://arxiv.org/abs/1707.09835

MAML whose inner step uses a learned learning-rate tensor alpha of the same shape
as theta, meta-learned together with theta (eq. 4 of the paper)::

    theta'_i = theta - alpha ∘ grad_theta L_support_i(f_theta)
    min_{theta, alpha}  sum_i L_query_i(f_theta'_i)
"""

from __future__ import annotations

from ..core.rules import MetaSGDRates
from .maml import MAML


class MetaSGD(MAML):
    """MAML with per-coordinate learned inner rates (the paper initialises alpha in [0.005, 0.1]).

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization.
        inner_lr: the initial value of every learned rate alpha (default 0.01).
        init_range: ``(low, high)``: draw the initial rates uniformly instead.
        **kwargs: as :class:`MAML` (``inner_steps``, ``first_order``, ``adapt``, ...), except ``update_rule``.
    """

    def __init__(self, model, inner_lr: float = 0.01, init_range: tuple[float, float] | None = None, **kwargs):
        if "update_rule" in kwargs:
            raise ValueError("MetaSGD defines its own update rule; use MAML(update_rule=...) for another one")
        super().__init__(model, inner_lr=None, update_rule=MetaSGDRates(inner_lr, init_range), **kwargs)
