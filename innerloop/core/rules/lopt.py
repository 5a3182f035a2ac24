"""Per-parameter MLP learned optimizers in the way of small_fc_lopt / LOLv2 (Metz et al. 2020, "Tasks, stability,
architecture, and compute: training more effective learned optimizers", https://arxiv.org/abs/2009.11243; Metz et al.
2022, "Practical tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs,
https://arxiv.org/abs/2203.11860; reference code google/learned_optimization ``mlp_lopt``, ``adafac_mlp_lopt``).

Every coordinate of every tensor is read by one small MLP with weights shared across coordinates:

    m_k = b_k m_k + (1 - b_k) g,   v_j = c_j v_j + (1 - c_j) g^2           (accumulators, several decays)
    x = normalise([g, p, m_k, v_j, m_k / sqrt(v_1), 1 / sqrt(v_j)])           (second moment over the tensor)
    (d, s) = MLP([x, tanh(step / tau - 1) for tau in 1, 3, ..., 1e5])
    u = -lr * d * exp(exp_mult * s)

``lr`` and ``exp_mult`` are small (the paper's 1e-3), so an untrained optimizer takes small steps and does not diverge.
Decays are meta-learned as offsets of log(1 - b) / 10 (zero: the initial decays). The factored variant keeps
Adafactor's row/column second moments (Shazeer & Stern 2018) for large matrices instead of full ones
(``factored.py``).
Departs from the reference code: the factored variant replaces the full second moments (memory) where
``AdafacMLPLOpt`` adds row/column features beside them; the normalisation is folded into the first layer (same values).
The ``torch.optim`` form (:class:`innerloop.core.LearnedOptimizer`) runs :meth:`PerParameterMLP.step_inplace`: the
same values computed in place, block by block, the biases carried by rows of ones through the matrix products.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...validate import positive_int
from ..params import Params
from .base import UpdateRule

TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)


def tanh_embedding(step: int, like: torch.Tensor, timescales: Sequence[float] = TIMESCALES) -> torch.Tensor:
    """The training-progress feature ``tanh(step / tau - 1)`` at every timescale ``tau``."""
    return torch.tensor([math.tanh(step / tau - 1.0) for tau in timescales], dtype=like.dtype, device=like.device)


def step_bias(weight: torch.Tensor, bias: torch.Tensor, f: int, step: int, like: torch.Tensor) -> torch.Tensor:
    """The first layer's bias with the step feature (the same for every coordinate) folded in; ``f``: features."""
    return weight[:, f:] @ tanh_embedding(step, like) + bias


def normalised(weight: torch.Tensor, f: int, squares: torch.Tensor, n: int) -> torch.Tensor:
    """The first layer's feature weights with the normalisation ``1 / sqrt(mean x^2)`` folded in, from each
    feature's sum of squares over the tensor's ``n`` coordinates."""
    return weight[:, :f] * torch.rsqrt(1e-5 + squares / n)


def in_place_matches(rule: object, pairs: Sequence[tuple[str, str]]) -> bool:
    """Whether each in-place method of ``pairs`` (functional, in place) is defined in the class that defines its
    functional counterpart or below it: a subclass that changes only the functional form keeps the functional path."""
    mro = type(rule).__mro__

    def owner(name: str) -> type:
        return next(c for c in mro if name in c.__dict__)

    return all(issubclass(owner(fast), owner(slow)) for slow, fast in pairs)


def _decays(values: Sequence[float], what: str) -> tuple[float, ...]:
    decays = tuple(float(b) for b in values)
    if not decays or not all(0 < b < 1 for b in decays):
        raise ValueError(f"{what} must be at least one decay in (0, 1), got {values!r}")
    return decays


class PerParameterMLP(UpdateRule):
    """The MLP optimizer (module header): its features, accumulators and network; ``lr`` the nominal step.

    Args:
        lr: the nominal step (the paper's ``step_mult``).
        hidden: units of each hidden layer (the reference code's 4).
        layers: hidden layers.
        exp_mult: scale of the log-magnitude output.
        momentum_decays: the initial decays b_k of the momentum accumulators.
        rms_decays: the initial decays c_j of the second-moment accumulators.
        learn_decays: meta-learn the decays (offsets ``momentum_offsets``, ``rms_offsets``).
    """

    def __init__(
        self,
        lr: float = 1e-3,
        hidden: int = 4,
        layers: int = 2,
        exp_mult: float = 1e-3,
        momentum_decays: Sequence[float] = (0.9, 0.99, 0.999),
        rms_decays: Sequence[float] = (0.999,),
        learn_decays: bool = True,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"the nominal step lr must be positive, got {lr}")
        self.lr, self.exp_mult = float(lr), float(exp_mult)
        self.hidden, self.layers = positive_int("hidden", hidden), positive_int("layers", layers, allow_zero=True)
        self.initial_momentum = _decays(momentum_decays, "momentum_decays")
        self.initial_rms = _decays(rms_decays, "rms_decays")
        self.learn_decays = bool(learn_decays)
        if self.learn_decays:
            self.momentum_offsets = nn.Parameter(torch.zeros(len(self.initial_momentum)))
            self.rms_offsets = nn.Parameter(torch.zeros(len(self.initial_rms)))
        sizes = [self.num_features() + len(TIMESCALES), *[self.hidden] * self.layers, 2]
        blocks: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            linear = nn.Linear(fan_in, fan_out)
            std = 1.0 / math.sqrt(fan_in)
            nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(linear.bias)
            blocks += [linear, nn.ReLU()]
        self.net = nn.Sequential(*blocks[:-1])

    def hparams(self) -> dict:
        """The constructor's arguments (stored beside the meta-parameters by ``save_meta``)."""
        return {
            "lr": self.lr,
            "hidden": self.hidden,
            "layers": self.layers,
            "exp_mult": self.exp_mult,
            "momentum_decays": list(self.initial_momentum),
            "rms_decays": list(self.initial_rms),
            "learn_decays": self.learn_decays,
        }

    def num_features(self) -> int:
        """Normalised features per coordinate: g, p, m_k, v_j, m_k / sqrt(v_1), 1 / sqrt(v_j)."""
        return 2 + 2 * len(self.initial_momentum) + 2 * len(self.initial_rms)

    def bind(self, shapes, steps, like, head=None) -> None:
        """Moves the MLP to the model's dtype and device; its weights fit any model (no shape is recorded)."""
        self._check_contract()
        self.to(dtype=like.dtype, device=like.device)

    def decays(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The momentum and second-moment decays, ``1 - (1 - b0) exp(10 offset)`` when learned."""
        return self.meta_decays({}, like)

    def meta_decays(self, meta: Mapping[str, torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decays` at the offsets in ``meta`` (default: the rule's own)."""
        b = torch.tensor(self.initial_momentum, dtype=like.dtype, device=like.device)
        c = torch.tensor(self.initial_rms, dtype=like.dtype, device=like.device)
        if self.learn_decays:
            b = 1 - (1 - b) * torch.exp(10 * meta.get("momentum_offsets", self.momentum_offsets))
            c = 1 - (1 - c) * torch.exp(10 * meta.get("rms_offsets", self.rms_offsets))
        return b, c

    def init_state(self, params: Params) -> dict[str, dict[str, torch.Tensor]]:
        """Zero accumulators for every tensor: ``{name: {"m": (K, numel), "v": (J, numel)}}``."""
        return {name: self.init_entry(p) for name, p in params.items()}

    def init_entry(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """The zero accumulators of one tensor."""
        n = p.numel()
        return {"m": p.new_zeros(len(self.initial_momentum), n), "v": p.new_zeros(len(self.initial_rms), n)}

    def second_moments(
        self, grad: torch.Tensor, entry: Mapping[str, torch.Tensor], c: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The second-moment features ``(J, numel)`` after this gradient and the new state entries."""
        v = torch.lerp(grad.reshape(1, -1).square(), entry["v"], c[:, None])  # c v + (1 - c) g^2
        return v, {"v": v}

    def features(self, g, p, m, v, step: int) -> list[torch.Tensor]:
        """The per-coordinate features before normalisation, each ``(k, numel)`` (feature-major)."""
        rsqrt = torch.rsqrt(v + 1e-6)
        return [g[None], p[None], m, v, m * rsqrt[:1], rsqrt]

    def mlp(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """``(F, n)`` raw features of one tensor -> ``(2, n)`` (direction, log-magnitude).

        The second-moment normalisation is a per-feature scale folded into the first layer's weights, and the
        step feature (the same for every coordinate) into its bias.
        """
        layers = [m for m in self.net if isinstance(m, nn.Linear)]
        f = x.shape[0]
        first = layers[0]
        bias = step_bias(first.weight, first.bias, f, step, x)
        h = torch.addmm(
            bias[:, None], normalised(first.weight, f, torch.linalg.vector_norm(x, dim=1).square(), x.shape[1]), x
        )
        for layer in layers[1:]:
            h = torch.addmm(layer.bias[:, None], layer.weight, torch.relu(h))
        return h

    def step_from(self, out: torch.Tensor, g, m, v, step: int, shared=None) -> torch.Tensor:
        """The flat update of one tensor from the MLP's output ``(2, numel)``: ``-lr d exp(exp_mult s)``."""
        return -self.lr * out[0] * torch.exp(self.exp_mult * out[1])

    def shared(self, state, loss, step: int) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """What every tensor's update shares at this step (``step_from``'s ``shared``) and the entries it keeps in
        every tensor's entry (``state``'s keys: names, or positions in the compiled step); none here (the loss guard's)."""
        return None, {}

    def forward(self, grads, state, params, step, loss):
        """Accumulators, features normalised per tensor, the MLP on every coordinate, the updates."""
        like = next(iter(grads.values()))
        b, c = self.decays(like)
        shared, kept = self.shared(state, loss, step)
        updates, new_state = {}, dict(state)
        for name, grad in grads.items():
            entry = state[name]
            g, p = grad.reshape(-1), params[name].reshape(-1)
            m = torch.lerp(g[None], entry["m"], b[:, None])  # b m + (1 - b) g
            v, entries = self.second_moments(grad, entry, c)
            new_state[name] = {"m": m, **entries, **{k: t.clone() for k, t in kept.items()}}  # no shared storage
            out = self.mlp(torch.cat(self.features(g, p, m, v, step)), step)
            # ``shared`` only when there is one: subclasses written before it override step_from(out, g, m, v, step)
            u = self.step_from(out, g, m, v, step) if shared is None else self.step_from(out, g, m, v, step, shared)
            updates[name] = u.reshape(grad.shape)
        return updates, new_state

    def meta_layers(self, meta: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(weight, bias)`` of every linear layer, read from ``meta`` (default: the rule's own)."""
        own = dict(self.named_parameters())
        pick = {**own, **meta}
        return [
            (pick[f"net.{i}.weight"], pick[f"net.{i}.bias"]) for i, m in enumerate(self.net) if isinstance(m, nn.Linear)
        ]

    def in_place_ready(self) -> bool:
        """Whether :meth:`step_inplace` computes this class's :meth:`forward` (its hooks are overridden in pairs;
        :meth:`shared` feeds :meth:`step_from`, so it pairs with :meth:`apply_`)."""
        pairs = [("forward", "step_inplace"), ("mlp", "step_inplace"), ("features", "fill_"),
                 ("second_moments", "second_moments_"), ("second_moments", "accumulate_"), ("step_from", "apply_"),
                 ("init_entry", "accumulate_"), ("shared", "apply_")]  # fmt: skip
        return in_place_matches(self, pairs + ([("decays", "meta_decays")] if self.learn_decays else []))

    block = 1 << 16  # coordinates per MLP block in ``step_inplace`` (a block's activations stay in cache)

    @torch.no_grad()
    def step_inplace(self, params, grads, states, step: int, meta: Mapping[str, torch.Tensor], scratch: dict) -> None:
        """:meth:`forward` in place, for the ``torch.optim`` form: ``p += u`` and the accumulators updated in place.

        Per tensor: the accumulators are updated whole (the momenta here, the second moments by :meth:`accumulate_`),
        and the squared norms of the features ``g``, ``p`` and ``m`` (the normalisation) read from the tensors
        themselves; two passes over blocks of :attr:`block` coordinates then keep the other features in cache: the
        first writes them (:meth:`fill_`) into a reused ``(F + 1, block)`` buffer and sums their squares, the
        second writes them again under copies of ``g``, ``p`` and ``m`` and runs the MLP on the block into reused
        activations (a tensor of one block keeps its features from the first). The values are :meth:`forward`'s
        up to rounding. ``params``, ``grads``: lists of contiguous tensors; ``states``: their entries of
        :meth:`init_state`; ``scratch``: the reused buffers.
        """
        like = grads[0]
        b, c = self.meta_decays(meta, like) if self.learn_decays else self.decays(like)
        layers = self.meta_layers(meta)
        f, k, n_max = self.num_features(), len(b), max(p.numel() for p in params)
        cpu = like.device.type == "cpu"  # blocks keep activations in a CPU cache; a GPU takes each tensor whole
        widths = [min(self.block_width(entry) if cpu else p.numel(), p.numel()) for p, entry in zip(params, states)]
        bias = step_bias(*layers[0], f, step, like)
        # a row of ones under the features and under each hidden layer carries the biases through the products
        later = [torch.cat([w, w_bias[:, None]], 1) for w, w_bias in layers[1:]]
        if scratch.get("x") is None or scratch["x"].shape != (f + 1, max(widths)) or scratch["x"].dtype != like.dtype:
            scratch["x"] = like.new_ones(f + 1, max(widths))
            scratch["h"] = [like.new_ones(w.shape[0] + 1, max(widths)) for w, _ in layers[:-1]]
            scratch["out"] = like.new_empty(layers[-1][0].shape[0], max(widths))
        if scratch.get("spare") is None or scratch["spare"].numel() < n_max or scratch["spare"].dtype != like.dtype:
            scratch["spare"] = like.new_empty(n_max)  # g^2 of a whole tensor
        outs, x_all = [*scratch["h"], scratch["out"]], scratch["x"]
        for p, g, entry, width in zip(params, grads, states, widths):
            n, flat, g = p.numel(), p.view(-1), g.view(-1)
            m, blocks = entry["m"], [(lo, min(lo + width, n)) for lo in range(0, n, width)]
            torch.lerp(g[None], m, b[:, None], out=m)  # b m + (1 - b) g
            self.accumulate_(g, entry, c, scratch["spare"][:n])
            # squared norms over the tensor: of g, p and m from the tensors, of the other features block by block
            norm = torch.linalg.vector_norm
            total = torch.cat([norm(g)[None], norm(flat)[None], norm(m, dim=1), like.new_zeros(f - 2 - k)]).square_()
            for lo, hi in blocks:
                rest = x_all[2 + k : f, : hi - lo]
                self.fill_(rest, m[:, lo:hi], entry, c, step, lo, hi)
                total[2 + k :].add_(norm(rest, dim=1).square_())
            weights = [torch.cat([normalised(layers[0][0], f, total, n), bias[:, None]], 1), *later]
            for lo, hi in blocks:
                h = x = x_all[:, : hi - lo]
                if len(blocks) > 1:
                    self.fill_(x[2 + k : f], m[:, lo:hi], entry, c, step, lo, hi)
                x[0].copy_(g[lo:hi])
                x[1].copy_(flat[lo:hi])
                x[2 : 2 + k].copy_(m[:, lo:hi])
                for i, (weight, out) in enumerate(zip(weights, outs)):
                    if i > 0:
                        h[:-1].relu_()
                    torch.mm(weight, h, out=out[: weight.shape[0], : hi - lo])
                    h = out[:, : hi - lo]
                self.apply_(flat[lo:hi], h, x[:f], meta)

    def block_width(self, entry: Mapping[str, torch.Tensor]) -> int:
        """Coordinates per block of ``step_inplace`` for a tensor with this state entry."""
        return self.block

    def accumulate_(self, g, entry, c, spare) -> None:
        """Updates the second-moment accumulators of a whole tensor in place (``spare``: free space of ``g``'s size)."""
        g2 = torch.mul(g, g, out=spare)
        torch.lerp(g2[None], entry["v"], c[:, None], out=entry["v"])  # c v + (1 - c) g^2

    def fill_(self, x, m, entry, c, step: int, lo: int, hi: int) -> None:
        """Writes the raw features (:meth:`features`) after ``g``, ``p`` and ``m`` of coordinates ``lo:hi`` to ``x``.

        ``m``: the (updated) momenta of these coordinates; ``x``: the rows from the second moments on.
        """
        k, j = m.shape[0], len(c)
        v = x[:j]
        self.second_moments_(entry, c, v, lo, hi)
        rsqrt = torch.add(v, 1e-6, out=x[j + k : 2 * j + k]).rsqrt_()
        torch.mul(m, rsqrt[:1], out=x[j : j + k])

    def second_moments_(self, entry, c, v, lo: int, hi: int) -> None:
        """:meth:`second_moments` of coordinates ``lo:hi`` (already updated) written to ``v``."""
        v.copy_(entry["v"][:, lo:hi])

    def apply_(self, p, out, x, meta) -> None:
        """``p += u`` on a block of coordinates from the MLP's output ``out`` (2, w) (:meth:`step_from`)."""
        p.addcmul_(out[0], out[1].mul_(self.exp_mult).exp_(), value=-self.lr)

    def stored_moments(self, entry: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The second-moment features ``(J, numel)`` an updated state entry holds (what :meth:`second_moments`
        returned when it was written)."""
        return entry["v"]

    def compiled_view(self, p: torch.Tensor) -> tuple[int, ...]:
        """The shape :meth:`step_compiled` hands a tensor (and its gradient) to :meth:`second_moments`: flat."""
        return (-1,)

    def compiled_ready(self) -> bool:
        """Whether :meth:`step_compiled` computes this class's :meth:`forward`. It calls :meth:`second_moments`,
        :meth:`features`, :meth:`step_from` and :meth:`shared` themselves, so those may be overridden freely; it
        repeats the momenta of :meth:`forward` and the network of :meth:`mlp`, and reads back what
        :meth:`second_moments` stored through :meth:`stored_moments`."""
        pairs = [("forward", "norms_"), ("mlp", "update_"), ("second_moments", "stored_moments"),
                 ("init_entry", "stored_moments"), ("second_moments", "compiled_view")]  # fmt: skip
        return in_place_matches(self, pairs)

    def norms_(self, p, g, entry, b, c, step: int) -> torch.Tensor:
        """First half of :meth:`step_compiled` for one tensor: its accumulators updated in place, and the squared
        norm of each of its feature rows ``(F,)`` (the normalisation of :meth:`mlp`)."""
        flat = g.reshape(-1)
        m = torch.lerp(flat[None], entry["m"], b[:, None])  # b m + (1 - b) g
        v, entries = self.second_moments(g, entry, c)
        # one reduction per row: the compiler fuses them into one pass over the coordinates
        norms = torch.stack([row.square().sum() for f in self.features(flat, p.reshape(-1), m, v, step) for row in f])
        for key, value in {"m": m, **entries}.items():
            entry[key].copy_(value)
        return norms

    def update_(self, p, g, entry, layers, step: int, shared) -> None:
        """Second half of :meth:`step_compiled` for one tensor: ``p += u`` from the updated accumulators, the MLP
        written out as sums over its rows (``layers``: ``(weight, bias)`` with the normalisation and the step
        feature folded into the first), so the compiler fuses the whole update into one pass."""
        flat, g = p.view(-1), g.reshape(-1)
        m, v = entry["m"], self.stored_moments(entry)
        h = [row for f in self.features(g, flat, m, v, step) for row in f]
        for i, (weight, bias) in enumerate(layers):
            h = [torch.relu(t) for t in h] if i else h
            h = [bias[j] + sum(weight[j, k] * h[k] for k in range(len(h))) for j in range(weight.shape[0])]
        out = torch.stack(h)
        flat.add_(self.step_from(out, g, m, v, step) if shared is None else self.step_from(out, g, m, v, step, shared))

    @torch.no_grad()
    def step_compiled(self, params, grads, states, step: int, loss, compiled: dict) -> None:
        """:meth:`forward` in place through ``torch.compile`` (the ``torch.optim`` form with ``compile=True``).

        Per tensor, two compiled functions: :meth:`norms_` (accumulators, then the feature norms) and
        :meth:`update_` (features, network and update fused in one pass over the coordinates). Uses the rule's own
        meta-parameters. ``compiled``: where the compiled functions are kept between steps.
        """
        if not compiled:
            compiled["norms"] = torch.compile(self.norms_, dynamic=True)
            compiled["update"] = torch.compile(self.update_, dynamic=True)
        like = grads[0]
        b, c = self.decays(like)
        layers, f = self.meta_layers({}), self.num_features()
        bias = step_bias(*layers[0], f, step, like)
        shared, kept = self.shared(dict(enumerate(states)), loss, step)
        # every rule class, rank and factored shape is a graph of the same two functions: past the default limit of 8
        with torch._dynamo.config.patch(cache_size_limit=64):  # the name torch 2.4-2.6 know too (recompile_limit)
            for p, g, entry in zip(params, grads, states):
                view = self.compiled_view(p)
                p, g = p.view(view), g.view(view)
                for t in (p, g, *entry.values()):
                    if len(view) == 1:  # symbolic sizes: one graph serves every flat tensor
                        torch._dynamo.maybe_mark_dynamic(t, t.dim() - 1)
                    else:  # a graph per shape: symbolic sizes would divide every flat index by them
                        torch._dynamo.mark_static(t)
                norms = compiled["norms"](p, g, entry, b, c, step)
                # folded here, not in the compiled function, where they would be recomputed at every coordinate
                first = (normalised(layers[0][0], f, norms, p.numel()), bias)
                compiled["update"](p, g, entry, [first, *layers[1:]], step, shared)
                for key, value in kept.items():
                    entry[key].copy_(value)

    def describe(self) -> str:
        """``Name(lr=..., hidden=...)``."""
        return f"{type(self).__name__}(lr={self.lr}, hidden={self.hidden}, layers={self.layers})"


class MLPOptimizer(PerParameterMLP):
    """small_fc_lopt: the per-parameter MLP optimizer with full accumulators (module header)."""
