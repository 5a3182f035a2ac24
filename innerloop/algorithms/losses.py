"""The default task loss, shared by the learners (``base``) and their per-task handles (``handle``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer class labels, mean squared error otherwise."""
    if target.is_floating_point():
        return F.mse_loss(output, target)
    return F.cross_entropy(output, target)
