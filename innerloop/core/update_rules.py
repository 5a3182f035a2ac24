"""Inner-loop update rules: swappable values, in the way of optax.

An update rule maps ``(params, grads, step) -> new params`` for the adapted
parameters of one task. Rules that learn something (per-parameter rates, per-step
rates, preconditioners, learned optimizers) hold those meta-parameters as
``nn.Parameter`` s and are meta-trained together with the model's initialization,
because the learner registers the rule as a sub-module.

Learned optimizers also carry per-task state from step to step (LSTM memories, the
previous gates) and may read the support loss: they override :meth:`UpdateRule.init_state`
and :meth:`UpdateRule.update`, ``(params, grads, step, state, loss) -> (params, state)``,
which the inner loop always calls; a stateless rule only writes ``forward``.

Rules are built lazily: ``setup(shapes, steps)`` is called once by the learner with
the shapes of the adapted parameters and the number of training inner steps, so a
rule value can be created before the model it will serve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .params import Params, flatten, slot, unflatten

State = Any


class UpdateRule(nn.Module):
    """Base class. Subclasses implement :meth:`forward` (or :meth:`update`) without mutating anything.

    A rule takes no constructor arguments of its own here; ``setup`` creates its meta-parameters.
    """

    def setup(self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor) -> None:
        """Create the rule's meta-parameters for these adapted parameters (default: none)."""

    def bind(self, shapes: Mapping[str, torch.Size], steps: int, like: torch.Tensor) -> None:
        """``setup`` once; a rule already serving other parameters is refused (its meta-parameters fit those)."""
        dims = {name: tuple(shape) for name, shape in shapes.items()}
        bound = getattr(self, "_shapes", None)
        if bound is not None and bound != dims:
            raise ValueError(
                f"{self.describe()} was already set up for other parameters ({len(bound)} tensors, e.g. "
                f"{next(iter(bound.items()))}); create a new update rule for each learner"
            )
        if bound is None:
            self.setup(shapes, steps, like)
            self._shapes = dims

    def init_state(self, params: Params) -> State:
        """Per-task optimizer state before the first inner step (stateless rules: None)."""
        return None

    def update(
        self, params: Params, grads: Params, step: int, state: State, loss: torch.Tensor
    ) -> tuple[Params, State]:
        """One inner step. Stateless rules apply :meth:`forward`; learned optimizers override this."""
        return self(params, grads, step), state

    def forward(self, params: Params, grads: Params, step: int) -> Params:  # pragma: no cover
        """One inner step of a stateless rule: the new adapted parameters from ``params`` and their ``grads``."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human-readable name with the rule's settings, e.g. ``SGD(lr=0.01)``."""
        return type(self).__name__


class SGD(UpdateRule):
    """Plain gradient descent (MAML): theta'_{k+1} = theta'_k - alpha_k * g.

    ``lr`` is one fixed rate, or a schedule of rates per step (the last one repeats for
    later steps), such as the MAML paper's meta-RL evaluation: 0.1, then 0.05.

    Args:
        lr: alpha, a positive rate or a list of rates, one per step.
    """

    def __init__(self, lr: float | Sequence[float]) -> None:
        super().__init__()
        rates = [float(lr)] if isinstance(lr, (int, float)) else [float(r) for r in lr]
        if not rates or not all(r > 0 for r in rates):
            raise ValueError(f"inner learning rates must be positive (and at least one given), got {lr}")
        self.rates = rates
        self.lr = rates[0]

    def forward(self, params: Params, grads: Params, step: int) -> Params:
        """theta - alpha_step * grad for every adapted tensor."""
        lr = self.rates[min(step, len(self.rates) - 1)]
        return {n: p - lr * grads[n] for n, p in params.items()}

    def describe(self) -> str:
        """``SGD(lr=...)``."""
        return f"SGD(lr={self.lr if len(self.rates) == 1 else self.rates})"


class MetaSGDRates(UpdateRule):
    """Meta-SGD (Li et al. 2017): theta' = theta - alpha ∘ g, alpha a learned tensor per parameter.

    ``alpha`` has the shape of the parameter it scales (one rate per coordinate, which
    also learns the update direction since rates may turn negative), initialised to
    ``init_lr`` or, as in the paper, uniformly in ``init_range``.

    Args:
        init_lr: the initial value of every rate.
        init_range: ``(low, high)``: draw the initial rates uniformly instead.
    """

    def __init__(self, init_lr: float = 0.01, init_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.init_range = init_range
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        """One learned rate tensor per adapted parameter, of that parameter's shape."""
        for name, shape in shapes.items():
            if self.init_range is None:
                alpha = torch.full(shape, self.init_lr, dtype=like.dtype, device=like.device)
            else:
                lo, hi = self.init_range
                alpha = torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(lo, hi)
            self.rates[slot(name)] = nn.Parameter(alpha)

    def forward(self, params, grads, step):
        """theta - alpha ∘ grad."""
        return {n: p - self.rates[slot(n)] * grads[n] for n, p in params.items()}


class PerLayerPerStepRates(UpdateRule):
    """MAML++ LSLR (Antoniou et al. 2019): one learned scalar rate per parameter tensor per step.

    theta'_{b+1} = theta'_b - alpha_{l,b} * g_l. At evaluation with more steps than were
    trained, the last step's rate is reused.

    Args:
        init_lr: the initial value of every rate.
    """

    def __init__(self, init_lr: float = 0.01) -> None:
        super().__init__()
        self.init_lr = float(init_lr)
        self.rates = nn.ParameterDict()

    def setup(self, shapes, steps, like):
        """One learned scalar rate per adapted tensor and per trained step."""
        for name in shapes:
            self.rates[slot(name)] = nn.Parameter(
                torch.full((steps,), self.init_lr, dtype=like.dtype, device=like.device)
            )

    def forward(self, params, grads, step):
        """theta_l - alpha_{l, step} * grad_l (the last trained step's rate beyond them)."""
        out = {}
        for n, p in params.items():
            rates = self.rates[slot(n)]
            out[n] = p - rates[min(step, rates.shape[0] - 1)] * grads[n]
        return out


class MetaCurvature(UpdateRule):
    """Meta-Curvature (Park & Oliva 2019, "Meta-Curvature", NeurIPS; https://arxiv.org/abs/1902.03356).

    A learned preconditioner per parameter tensor, factored over its modes: the gradient
    G of a weight with shape (C_out, C_in, k x k) is multiplied along each mode by a learned
    matrix, MC(G) = G x_1 M_o x_2 M_i x_3 M_f (eq. 8 of the paper), and

        theta' = theta - alpha * MC(grad L_support(theta))

    Matrices start as identities, so an untrained rule is plain SGD with rate alpha. The
    cost is one small matrix per mode instead of Meta-SGD's full-size rate tensor, and
    unlike Meta-SGD it can mix coordinates (a curvature-like correction).

    Args:
        lr: alpha, the fixed step size in front of the preconditioned gradient.
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = float(lr)
        self.mode_matrices = nn.ModuleDict()

    @staticmethod
    def modes(shape: tuple[int, ...]) -> tuple[int, ...]:
        """Mode sizes: conv kernels' spatial dimensions fold into one mode."""
        return tuple(shape) if len(shape) <= 2 else (shape[0], shape[1], math.prod(shape[2:]))

    def setup(self, shapes, steps, like):
        """One identity-initialised matrix per mode of every adapted tensor."""
        for name, shape in shapes.items():
            if len(shape) == 0:
                raise ValueError(f"MetaCurvature cannot precondition the scalar parameter {name!r}; do not adapt it")
            self.mode_matrices[slot(name)] = nn.ParameterList(
                nn.Parameter(torch.eye(size, dtype=like.dtype, device=like.device)) for size in self.modes(shape)
            )

    def forward(self, params, grads, step):
        """theta - alpha * MC(grad), the gradient multiplied along each mode by its matrix."""
        out = {}
        for name, p in params.items():
            g = grads[name].reshape(self.modes(p.shape))
            for mode, matrix in enumerate(self.mode_matrices[slot(name)]):
                g = torch.movedim(torch.tensordot(g, matrix, dims=([mode], [1])), -1, mode)  # G x_mode M
            out[name] = p - self.lr * g.reshape(p.shape)
        return out

    def describe(self) -> str:
        """``MetaCurvature(lr=...)``."""
        return f"MetaCurvature(lr={self.lr})"


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al. (2016), appendix A: each coordinate becomes two features.

    x -> (log|x| / p, sign(x)) if |x| >= e^-p, else (-1, e^p x). Gradients and losses span
    many orders of magnitude; this keeps the LSTM's inputs in a usable range.
    """
    magnitude = x.abs()
    large = magnitude >= math.exp(-p)
    first = torch.where(large, torch.log(magnitude.clamp_min(math.exp(-p))) / p, -torch.ones_like(x))
    second = torch.where(large, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


class CoordinateLSTMCell(nn.Module):
    """An LSTM cell applied to every coordinate of the base model independently (shared weights).

    Args:
        inputs: features per coordinate read at each step.
        hidden: the size of the cell's memory per coordinate.
    """

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(inputs + hidden, 4 * hidden)
        with torch.no_grad():
            self.gates.bias[hidden : 2 * hidden].fill_(1.0)  # forget gate starts open: remember by default

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step per coordinate: ``x (coordinates, inputs)``, ``state (h, c)`` -> ``(h, c)``."""
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], dim=-1)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def coordinate_zeros(params: Params, width: int) -> torch.Tensor:
    """A zero state of ``width`` features for every coordinate of ``params`` (in ``flatten`` order)."""
    like = next(iter(params.values()))
    return like.new_zeros(sum(t.numel() for t in params.values()), width)


class LearnedOptimizerLSTM(UpdateRule):
    """A coordinate-wise LSTM optimizer (Andrychowicz et al. 2016, "Learning to learn by
    gradient descent by gradient descent", NeurIPS; https://arxiv.org/abs/1606.04474).

    A two-layer LSTM (20 units) with weights shared across all coordinates reads each
    coordinate's preprocessed gradient and proposes its update (section 2.1):

        [h_t, state_t] = LSTM(preprocess(grad_t), state_{t-1})
        theta_{t+1} = theta_t - alpha * grad_t + W_out h_t

    Unlike the paper, whose update is the LSTM's output alone, the plain gradient step
    -alpha * grad is kept as a skip connection and ``W_out`` starts at zero: the untrained
    optimizer is exactly SGD with rate alpha, and meta-training learns the correction.
    With a few inner steps of few-shot adaptation that start matters (the paper trained
    its optimizers over 100-step horizons).

    Args:
        lr: alpha of the SGD skip connection.
        hidden: units of each of the two LSTM layers (the paper's 20).
        preprocess_p: p of the gradient preprocessing (appendix A of the paper).
    """

    def __init__(self, lr: float = 0.01, hidden: int = 20, preprocess_p: float = 10.0) -> None:
        super().__init__()
        self.lr = float(lr)
        self.preprocess_p = preprocess_p
        self.layers = nn.ModuleList([CoordinateLSTMCell(2, hidden), CoordinateLSTMCell(hidden, hidden)])
        self.output = nn.Linear(hidden, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def setup(self, shapes, steps, like):
        """Moves the LSTM to the model's dtype and device (its weights do not depend on the shapes)."""
        self.to(dtype=like.dtype, device=like.device)

    def init_state(self, params):
        """Zero memories ``(h, c)`` of both layers for every coordinate."""
        zeros = coordinate_zeros(params, self.layers[0].hidden)
        return [(zeros, zeros) for _ in self.layers]

    def update(self, params, grads, step, state, loss):
        """theta - alpha * grad + W_out h_t, with the LSTM read of the preprocessed gradient."""
        g = flatten(grads)
        x, new_state = preprocess(g, self.preprocess_p), []
        for layer, layer_state in zip(self.layers, state):
            h, c = layer(x, layer_state)
            new_state.append((h, c))
            x = h
        theta = flatten(params) - self.lr * g + self.output(x).squeeze(-1)
        return unflatten(theta, params), new_state

    def describe(self) -> str:
        """``LearnedOptimizerLSTM(lr=...)``."""
        return f"LearnedOptimizerLSTM(lr={self.lr})"


class MetaLearnerLSTM(UpdateRule):
    """The LSTM meta-learner of Ravi & Larochelle (2017), "Optimization as a Model for
    Few-Shot Learning", ICLR (https://openreview.net/forum?id=rJY0-Kcll).

    The base model's parameters are the cell state of an LSTM whose candidate is the
    negative gradient (eq. 2 and section 3.2):

        i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)      (learned input gate: a rate)
        f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)      (learned forget gate: shrinkage)
        theta_t = f_t * theta_{t-1} - i_t * grad_t

    computed coordinate-wise with W_I, W_F shared across all coordinates. ``h_t`` is the
    output of a first, ordinary LSTM layer (20 units) reading the preprocessed gradient and
    loss (the paper's 2-layer meta-learner, section 3.3 and appendix A of Andrychowicz et al.).
    Initialisation as the paper suggests: gate weights small, b_F large so that f is close to 1
    (no shrinkage) and b_I = logit(alpha) so the first updates are SGD with rate alpha.

    Args:
        lr: alpha in (0, 1), the initial rate (the input gate's initial value).
        hidden: units of the encoder LSTM layer.
        forget_bias: b_F's initial value (large: f starts close to 1).
        preprocess_p: p of the gradient and loss preprocessing.
    """

    def __init__(
        self, lr: float = 0.01, hidden: int = 20, forget_bias: float = 10.0, preprocess_p: float = 10.0
    ) -> None:
        super().__init__()
        if not 0 < lr < 1:
            raise ValueError(
                f"the meta-learner LSTM's input gate is a sigmoid: its initial rate must be in (0, 1), got {lr}"
            )
        self.lr = float(lr)
        self.preprocess_p = preprocess_p
        self.forget_bias = float(forget_bias)
        self.encoder = CoordinateLSTMCell(4, hidden)  # preprocessed (gradient, loss)
        self.input_gate = nn.Linear(hidden + 2, 1)  # [h_t, theta_{t-1}, i_{t-1}] -> i_t
        self.forget_gate = nn.Linear(hidden + 2, 1)  # [h_t, theta_{t-1}, f_{t-1}] -> f_t
        with torch.no_grad():
            self.input_gate.weight.uniform_(-0.01, 0.01)
            self.forget_gate.weight.uniform_(-0.01, 0.01)

    def setup(self, shapes, steps, like):
        """Moves the gates to the model's dtype and device; b_I = logit(alpha), b_F = forget_bias."""
        self.to(dtype=like.dtype, device=like.device)
        with torch.no_grad():  # in the model's precision, so that i_0 is alpha to its rounding
            self.input_gate.bias.fill_(math.log(self.lr / (1 - self.lr)))
            self.forget_gate.bias.fill_(self.forget_bias)

    def init_state(self, params):
        """Zero encoder memories, i_0 = 0 and f_0 = 1 for every coordinate."""
        zeros, gates = coordinate_zeros(params, self.encoder.hidden), coordinate_zeros(params, 1)
        # i_0 = 0, f_0 = 1: no earlier step (the paper leaves these unspecified).
        return {"encoder": (zeros, zeros), "i": gates, "f": gates + 1}

    def gates(self, h, theta, state) -> tuple[torch.Tensor, torch.Tensor]:
        """i_t and f_t for every coordinate, shape (coordinates,)."""
        column = theta.unsqueeze(-1)
        i = torch.sigmoid(self.input_gate(torch.cat([h, column, state["i"]], dim=-1)))
        f = torch.sigmoid(self.forget_gate(torch.cat([h, column, state["f"]], dim=-1)))
        return i.squeeze(-1), f.squeeze(-1)

    def update(self, params, grads, step, state, loss):
        """theta_t = f_t * theta_{t-1} - i_t * grad_t (eq. 2), gates read from the encoder and the previous gates."""
        g, theta = flatten(grads), flatten(params)
        features = torch.cat(
            [preprocess(g, self.preprocess_p), preprocess(loss, self.preprocess_p).expand(g.shape[0], 2)], -1
        )
        h, c = self.encoder(features, state["encoder"])
        i, f = self.gates(h, theta, state)
        theta = f * theta - i * g
        return unflatten(theta, params), {"encoder": (h, c), "i": i.unsqueeze(-1), "f": f.unsqueeze(-1)}

    def describe(self) -> str:
        """``MetaLearnerLSTM(lr=...)``."""
        return f"MetaLearnerLSTM(lr={self.lr})"


RULES = {
    "sgd": SGD,
    "metasgd": MetaSGDRates,
    "lslr": PerLayerPerStepRates,
    "metacurvature": MetaCurvature,
    "lstm-optimizer": LearnedOptimizerLSTM,
    "meta-lstm": MetaLearnerLSTM,
}
