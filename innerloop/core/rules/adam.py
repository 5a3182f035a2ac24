"""Adam as an update rule, and Adam plus a learned correction (Metz et al. 2022, "Practical tradeoffs between memory,
compute, and performance in learned optimizers", https://arxiv.org/abs/2203.11860: the nominal-Adam MLP optimizers).

Adam (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980), as ``torch.optim.Adam`` computes it, t = step + 1:

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,   u_adam = -(lr / (1 - b1^t)) m / (sqrt(v / (1 - b2^t)) + eps)

``AdamCorrection``: u = exp(scale_mult * s) u_adam - correction * d * exp(exp_mult * s), (d, s) from the
per-parameter MLP of :mod:`.lopt` reading Adam's accumulators and direction; the MLP's last layer starts at zero, so
the untrained rule is exactly Adam(lr) (a tuned Adam when ``lr`` is the tuned rate), and ``log_lr`` is meta-learned
beside it. With ``scale_mult`` > 0 the log-magnitude output also scales Adam's own step per coordinate: the MLP
reads the training-progress feature, so it can learn a step-size schedule and per-parameter step sizes, which a
tuned constant-rate Adam does not have (the ``correction`` term alone stays small, 1e-3, as the nominal step).

The loss guard (``guard`` > 0), a soft form of the safeguards of Heaton et al. 2020 ("Safeguarded learned convex
optimization", https://arxiv.org/abs/2003.01880: fall back to the hand-written update when the loss rises above its
moving average) and Prémont-Schwarz et al. 2022 ("A Simple Guard for Learned Optimizers", ICML,
https://arxiv.org/abs/2201.12426): with ``r = relu(log l_t - ell_{t-1})`` the rise of the log loss over its moving
average ``ell`` (decay ``guard_decay``, ``ell_0 = log l_0``), every coordinate's log multiplier ``a`` becomes

    a - relu(a) (1 - exp(-r / guard))

so a run whose loss jumps falls back towards Adam's own step (the learned shrinking is kept), and steps past
Adam's return as the loss settles. For positive losses; the loss reaches the rule as ``step(closure)`` or
``step(loss=...)`` in the ``torch.optim`` form, which then takes the functional step (no in-place form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .base import UpdateRule
from .lopt import PerParameterMLP, in_place_matches


def _betas(betas: Sequence[float], eps: float) -> tuple[float, float]:
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or not eps >= 0:
        raise ValueError(f"Adam needs betas in [0, 1) and eps >= 0, got betas={tuple(betas)}, eps={eps}")
    return b1, b2


def adam_direction(m: torch.Tensor, v: torch.Tensor, step: int, betas: tuple[float, float], eps: float):
    """``(m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` in torch.optim.Adam's order of operations, t = step + 1."""
    t = step + 1
    # + tiny: a finite derivative of sqrt at v = 0 (a coordinate whose gradients were all zero) for second order
    denom = (v + torch.finfo(v.dtype).tiny).sqrt() / math.sqrt(1 - betas[1] ** t) + eps
    return (m / denom) / (1 - betas[0] ** t)


class Adam(UpdateRule):
    """Adam as an inner-loop rule (no meta-parameters); state ``{name: {"m", "v"}}`` of each tensor's shape.

    Args:
        lr: the step size.
        betas: the decays of the first and second moments.
        eps: added to the root of the second moment.
    """

    def __init__(self, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"Adam's lr must be positive, got {lr}")
        self.lr, self.eps = float(lr), float(eps)
        self.betas = _betas(betas, eps)

    def hparams(self) -> dict:
        """The constructor's arguments."""
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps}

    def init_state(self, params):
        """Zero moments for every tensor."""
        return {n: {"m": torch.zeros_like(p), "v": torch.zeros_like(p)} for n, p in params.items()}

    def forward(self, grads, state, params, step, loss):
        """u = -lr m_hat / (sqrt(v_hat) + eps)."""
        (b1, b2), updates, new_state = self.betas, {}, dict(state)
        for name, g in grads.items():
            m = b1 * state[name]["m"] + (1 - b1) * g
            v = b2 * state[name]["v"] + (1 - b2) * g.square()
            new_state[name] = {"m": m, "v": v}
            updates[name] = -self.lr * adam_direction(m, v, step, self.betas, self.eps)
        return updates, new_state

    def in_place_ready(self) -> bool:
        """Whether :meth:`step_inplace` computes this class's :meth:`forward`."""
        return in_place_matches(self, [("forward", "step_inplace"), ("init_state", "step_inplace")])

    @torch.no_grad()
    def step_inplace(self, params, grads, states, step: int, meta, scratch: dict) -> None:
        """:meth:`forward` in place for the ``torch.optim`` form, in ``torch._foreach`` kernels as torch.optim.Adam."""
        (b1, b2), t = self.betas, step + 1
        ms, vs = [s["m"] for s in states], [s["v"] for s in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_add(vs, torch.finfo(grads[0].dtype).tiny)
        torch._foreach_sqrt_(denom)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, ms, denom, value=-self.lr / (1 - b1**t))

    def describe(self) -> str:
        """``Adam(lr=...)``."""
        return f"Adam(lr={self.lr}, betas={self.betas})"


class AdamCorrection(PerParameterMLP):
    """Adam plus a learned per-parameter correction that starts at zero (module header).

    Args:
        lr: Adam's step size (the tuned one); ``log_lr`` starts at its log when ``learn_lr``.
        betas: Adam's decays (the MLP reads these accumulators: no others are kept).
        eps: Adam's epsilon.
        hidden: units of each hidden layer of the correction MLP.
        layers: its hidden layers.
        correction: the scale of the correction (its nominal step).
        exp_mult: scale of the correction's log-magnitude output.
        learn_lr: meta-learn Adam's step size as ``log_lr``.
        scale_mult: scale of the log-magnitude output in the multiplier ``exp(scale_mult * s)`` of Adam's step
            (0: Adam's step is not scaled).
        max_scale: with ``scale_mult``, bound the multiplier smoothly to ``[1 / max_scale, max_scale]``:
            ``exp(B tanh(scale_mult * s / B))``, ``B = log(max_scale)`` (0: unbounded). Steps many times Adam's
            are where meta-trained rules blow up on a few tasks.
        guard: with ``scale_mult``, the loss guard's tolerance in nats of log loss (module header; 0: no guard).
        guard_decay: the decay of the guard's moving average of the log loss.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        hidden: int = 4,
        layers: int = 2,
        correction: float = 1e-3,
        exp_mult: float = 1e-3,
        learn_lr: bool = True,
        scale_mult: float = 0.0,
        max_scale: float = 0.0,
        guard: float = 0.0,
        guard_decay: float = 0.9,
    ) -> None:
        b1, b2 = _betas(betas, eps)
        super().__init__(correction, hidden, layers, exp_mult, (b1,) if b1 > 0 else (0.5,), (b2,), learn_decays=False)
        self.adam_lr, self.betas, self.eps, self.learn_lr = float(lr), (b1, b2), float(eps), bool(learn_lr)
        if not lr > 0:
            raise ValueError(f"Adam's lr must be positive, got {lr}")
        if not scale_mult >= 0:
            raise ValueError(f"scale_mult must be zero or positive, got {scale_mult}")
        if not (max_scale == 0 or max_scale > 1):
            raise ValueError(f"max_scale must be 0 (unbounded) or above 1, got {max_scale}")
        self.scale_mult, self.max_scale = float(scale_mult), float(max_scale)
        if not guard >= 0 or (guard and not scale_mult) or not 0 <= guard_decay < 1:
            raise ValueError(
                f"the loss guard needs guard >= 0 (0: off) acting on scale_mult > 0 and guard_decay in [0, 1), got "
                f"guard={guard}, scale_mult={scale_mult}, guard_decay={guard_decay}"
            )
        self.guard, self.guard_decay = float(guard), float(guard_decay)
        self.uses_loss = bool(self.guard)  # the torch.optim form asks for the loss
        if self.learn_lr:
            self.log_lr = nn.Parameter(torch.tensor(math.log(lr), dtype=torch.float64))  # cast by bind
        last = cast(nn.Linear, self.net[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def hparams(self) -> dict:
        """The constructor's arguments."""
        return {"lr": self.adam_lr, "betas": list(self.betas), "eps": self.eps, "hidden": self.hidden,
                "layers": self.layers, "correction": self.lr, "exp_mult": self.exp_mult, "learn_lr": self.learn_lr,
                "scale_mult": self.scale_mult, "max_scale": self.max_scale, "guard": self.guard,
                "guard_decay": self.guard_decay}  # fmt: skip

    def num_features(self) -> int:
        """The MLP optimizer's features and Adam's direction."""
        return super().num_features() + 1

    def decays(self, like):
        """Adam's b1 and b2."""
        return (torch.tensor([self.betas[0]], dtype=like.dtype, device=like.device),
                torch.tensor([self.betas[1]], dtype=like.dtype, device=like.device))  # fmt: skip

    def features(self, g, p, m, v, step):
        """As the MLP optimizer's, with Adam's bias-corrected direction."""
        return [*super().features(g, p, m, v, step), adam_direction(m, v, step, self.betas, self.eps)]

    def adam_rate(self):
        """Adam's step size: ``exp(log_lr)`` when meta-learned (a tensor), else the fixed ``lr``."""
        return torch.exp(self.log_lr) if self.learn_lr else self.adam_lr

    def log_scale(self, s: torch.Tensor) -> torch.Tensor:
        """The log of Adam's step multiplier: ``scale_mult s``, bounded by ``max_scale`` (class docstring)."""
        if not self.max_scale:
            return self.scale_mult * s
        bound = math.log(self.max_scale)
        return torch.tanh(s * (self.scale_mult / bound)) * bound

    def init_state(self, params):
        """The accumulators, and with the loss guard the moving average ``ell`` of the log loss in every entry."""
        state = super().init_state(params)
        if self.guard:
            like = next(iter(params.values()))
            state = {n: {**e, "ell": like.new_zeros(1)} for n, e in state.items()}
        return state

    def shared(self, state, loss, step):
        """The loss guard's gate ``exp(-r / guard)`` and the new moving average (module header); none unguarded."""
        if not self.guard:
            return None, {}
        log_loss = loss.detach().reshape(1).clamp_min(torch.finfo(loss.dtype).tiny).log()
        ell = log_loss if step == 0 else next(iter(state.values()))["ell"]
        gate = torch.exp(-torch.relu(log_loss - ell) / self.guard)
        return gate, {"ell": torch.lerp(log_loss, ell, self.guard_decay)}

    def step_from(self, out, g, m, v, step, shared=None):
        """Adam's update, times ``exp(log_scale(s))`` (its rise over 1 gated by the loss guard's ``shared``), plus
        the correction ``-correction d exp(exp_mult s)``."""
        adam = -self.adam_rate() * adam_direction(m[0], v[0], step, self.betas, self.eps)
        if self.scale_mult:
            log_scale = self.log_scale(out[1])
            if shared is not None:
                log_scale = log_scale - torch.relu(log_scale) * (1 - shared)
            adam = adam * torch.exp(log_scale)
        return adam + super().step_from(out, g, m, v, step)

    def in_place_ready(self) -> bool:
        """As the MLP optimizer's; the loss guard has no in-place form."""
        return not self.guard and super().in_place_ready()

    def fill_(self, x, m, entry, c, step, lo, hi):
        """As the MLP optimizer's, with Adam's direction (:func:`adam_direction`, its operations) in the last row."""
        super().fill_(x, m, entry, c, step, lo, hi)
        (b1, b2), t, v = self.betas, step + 1, entry["v"][0, lo:hi]
        denom = torch.add(v, torch.finfo(v.dtype).tiny, out=x[-1]).sqrt_().div_(math.sqrt(1 - b2**t)).add_(self.eps)
        torch.div(m[0], denom, out=x[-1]).div_(1 - b1**t)

    def apply_(self, p, out, x, meta):
        """The correction, then Adam's step ``-lr`` times the direction in the last feature row (scaled first)."""
        if self.scale_mult:  # before the correction's exp overwrites out[1]
            x[-1].mul_(torch.exp(self.log_scale(out[1])))
        super().apply_(p, out, x, meta)
        if not self.learn_lr:
            p.add_(x[-1], alpha=-self.adam_lr)
        else:
            p.addcmul_(x[-1], torch.exp(meta["log_lr"] if meta else self.log_lr), value=-1)

    def describe(self) -> str:
        """``AdamCorrection(lr=..., correction=...)``."""
        scaled = f", scale_mult={self.scale_mult}" if self.scale_mult else ""
        scaled += f", max_scale={self.max_scale}" if self.scale_mult and self.max_scale else ""
        scaled += f", guard={self.guard}" if self.guard else ""
        return f"AdamCorrection(lr={self.adam_lr}, correction={self.lr}, hidden={self.hidden}{scaled})"
