"""Learned optimizers with per-task state: the coordinate-wise LSTM optimizer (Andrychowicz et al. 2016)
and the Ravi & Larochelle (2017) meta-learner LSTM. Both read every coordinate with weights shared across
coordinates, so their size does not depend on the model's; their state is per task and per coordinate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..params import Params, flatten, unflatten
from .base import UpdateRule


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

    Departs from the paper, whose update is the LSTM's output alone: the plain gradient step
    -alpha * grad is kept as a skip connection and ``W_out`` starts at zero, so the untrained
    optimizer is exactly SGD with rate alpha and meta-training learns the correction.

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

    def forward(self, grads, state, params, step, loss):
        """u = -alpha * grad + W_out h_t, with the LSTM read of the preprocessed gradient."""
        g = flatten(grads)
        x, new_state = preprocess(g, self.preprocess_p), []
        for layer, layer_state in zip(self.layers, state):
            h, c = layer(x, layer_state)
            new_state.append((h, c))
            x = h
        return unflatten(-(self.lr * g) + self.output(x).squeeze(-1), grads), new_state

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

    def forward(self, grads, state, params, step, loss):
        """u = (f_t - 1) * theta_{t-1} - i_t * grad_t, i.e. theta_t = f_t * theta_{t-1} - i_t * grad_t (eq. 2)."""
        g, theta = flatten(grads), flatten(params)
        features = torch.cat(
            [preprocess(g, self.preprocess_p), preprocess(loss, self.preprocess_p).expand(g.shape[0], 2)], -1
        )
        h, c = self.encoder(features, state["encoder"])
        i, f = self.gates(h, theta, state)
        updates = unflatten((f - 1) * theta - i * g, grads)
        return updates, {"encoder": (h, c), "i": i.unsqueeze(-1), "f": f.unsqueeze(-1)}

    def describe(self) -> str:
        """``MetaLearnerLSTM(lr=...)``."""
        return f"MetaLearnerLSTM(lr={self.lr})"
