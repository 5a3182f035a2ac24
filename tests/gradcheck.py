"""Directional finite differences of a learner's meta-loss, as several gradient tests check them (float64)."""

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def directional_differences(learner, batch, directions: int = 3, eps: float = 1e-6, seed: int = 7):
    """``[(v, fd)]``: random directions ``v`` over ``learner.parameters()`` and the central difference of
    ``learner.meta_loss(batch)`` along each; the parameters are restored afterwards."""
    params = list(learner.parameters())
    theta = parameters_to_vector(params).detach().clone()
    generator = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(directions):
        v = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        losses = []
        with torch.no_grad():
            for sign in (1, -1):
                vector_to_parameters(theta + sign * eps * v, params)
                losses.append(learner.meta_loss(batch)[0])
            vector_to_parameters(theta, params)
        found.append((v, (losses[0] - losses[1]) / (2 * eps)))
    return found
