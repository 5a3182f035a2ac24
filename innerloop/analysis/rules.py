"""What a learned update rule learned, read out of its meta-parameters.

Meta-SGD (Li et al. 2017) and MAML++ LSLR (Antoniou et al. 2019) rates per layer (and step); Meta-Curvature
(Park & Oliva 2019) the singular values of each mode matrix (the preconditioner is their Kronecker product);
any rule with per-task state (the LSTM optimizers of Andrychowicz et al. 2016, Ravi & Larochelle 2017) its
response curve u(g): the update of one tensor's coordinates fed a sweep of gradients, after a few steps of a
constant gradient (its accumulators' history).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.params import Params, slot
from ..core.rules import MetaCurvature, MetaSGDRates, PerLayerPerStepRates, UpdateRule
from ..core.rules.base import apply_updates
from ..errors import InputError
from ..validate import positive_int


def _unslot(rule: UpdateRule, key: str) -> str:
    """The parameter name a rule's slot key stands for (``core.params.slot`` inverted over the bound names)."""
    return next((n for n in getattr(rule, "_shapes", None) or {} if slot(n) == key), key)


def rule_readout(rule: UpdateRule) -> dict:
    """The learned quantities of ``rule`` and of every rule it is built from (``chain``, ``partition``).

    ``{"lslr": {name: [rate per step]}, "metasgd": {name: {mean, std, min, max}},
    "metacurvature": {name: [[singular values of mode i] ...]}, "stateful": [rule descriptions]}``
    (only the keys that occur).
    """
    out: dict = {}
    for m in rule.modules():
        if isinstance(m, PerLayerPerStepRates):
            out.setdefault("lslr", {}).update({_unslot(m, k): v.detach().double().tolist() for k, v in m.rates.items()})
        elif isinstance(m, MetaSGDRates):
            for k, v in m.rates.items():
                v = v.detach().double()
                out.setdefault("metasgd", {})[_unslot(m, k)] = {
                    "mean": float(v.mean()),
                    "std": float(v.std()) if v.numel() > 1 else 0.0,
                    "min": float(v.min()),
                    "max": float(v.max()),
                    "negative": float((v < 0).double().mean()),
                }
        elif isinstance(m, MetaCurvature):
            out.setdefault("metacurvature", {}).update(
                {
                    _unslot(m, k): [torch.linalg.svdvals(mat.detach().double()).tolist() for mat in mats.parameters()]
                    for k, mats in m.mode_matrices.items()
                }
            )
        elif (
            isinstance(m, UpdateRule) and type(m).init_state is not UpdateRule.init_state and not _has_rule_children(m)
        ):
            out.setdefault("stateful", []).append(m.describe())
    return out


def _has_rule_children(rule: UpdateRule) -> bool:
    return any(isinstance(c, UpdateRule) for c in rule.modules() if c is not rule)


def has_state(rule: UpdateRule, params: Params) -> bool:
    """Whether ``rule`` keeps per-task state (accumulators) over the inner steps."""
    state = rule.init_state(params)
    return state is not None and not (isinstance(state, tuple) and all(s is None for s in state))


def response_curves(
    rule: UpdateRule,
    params: Params,
    probe: str | None = None,
    scale: float = 1.0,
    points: int = 201,
    history: Sequence[float] = (0.0, 0.5, -0.5),
    history_steps: int = 3,
    loss: float = 1.0,
) -> dict:
    """The update ``u`` the rule gives the coordinates of tensor ``probe`` (default: the largest adapted one) for
    gradients ``g`` swept over ``[-scale, scale]``, after ``history_steps`` steps of the constant gradient
    ``h * scale`` for each ``h`` in ``history`` (0: no history), every other tensor's gradient 0.

    Returns ``{"probe": name, "g": [points], "curves": {"history=h": [u]}}``; SGD(lr) gives ``u = -lr g``.
    """
    if not params:
        raise InputError("response_curves needs the adapted parameters (name -> tensor) the rule serves")
    probe = probe or max(params, key=lambda n: params[n].numel())
    if probe not in params:
        raise InputError(f"probe {probe!r} is not an adapted parameter; choose one of {sorted(params)}")
    points = positive_int("points", points)
    like = params[probe]
    size = like.numel()
    g = torch.linspace(-scale, scale, points, dtype=like.dtype, device=like.device)
    index = torch.arange(size, device=like.device) % points  # coordinates cycle through the sweep
    sweep = g[index].reshape(like.shape)
    loss_t = torch.tensor(float(loss), dtype=like.dtype, device=like.device)
    curves = {}
    with torch.no_grad():
        for h in history:
            p, state = dict(params), rule.init_state(params)
            step = 0
            for step in range(history_steps if h else 0):
                grads = {n: torch.zeros_like(t) for n, t in p.items()}
                grads[probe] = torch.full_like(like, h * scale)
                u, state = rule(grads, state, p, step, loss_t)
                p = apply_updates(p, u)
            grads = {n: torch.zeros_like(t) for n, t in p.items()}
            grads[probe] = sweep
            u, _ = rule(grads, state, p, step + 1 if h else 0, loss_t)
            flat = u[probe].reshape(-1).double()
            # each swept value's mean update over the coordinates that got it
            curve = torch.zeros(points, dtype=torch.float64, device=flat.device).index_add_(0, index, flat)
            counts = torch.bincount(index, minlength=points).clamp_min(1).double()
            curves[f"history={h:g}"] = (curve / counts).tolist()
    return {"probe": probe, "g": g.double().tolist(), "curves": curves, "scale": scale, "history_steps": history_steps}
