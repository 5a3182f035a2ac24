"""Fully connected regressor, the MAML paper's sinusoid model (two hidden layers of 40, ReLU)."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}  # model.activation's values


class MLP(nn.Sequential):
    def __init__(
        self,
        in_features: int = 1,
        hidden: tuple[int, ...] | list[int] = (40, 40),
        out_features: int = 1,
        activation: str = "relu",
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
