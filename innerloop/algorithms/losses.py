"""Task losses and metrics shared by the learners (``base``), their per-task handles (``handle``) and the
episodic learners (``metric``, ``forward_pass``): the default loss, and cross-entropy + accuracy once."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer class labels, mean squared error otherwise."""
    if target.is_floating_point():
        return F.mse_loss(output, target)
    return F.cross_entropy(output, target)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of ``argmax`` predictions equal to ``labels``: ``(..., Q, N), (..., Q) -> (...)``."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``loss`` (mean cross-entropy) and ``accuracy`` of logits ``(..., Q, N)`` against labels ``(..., Q)``.

    Leading (task) dimensions are kept, ``(...)`` each, so one call serves a task or a stack of tasks.
    """
    log_p = logits.log_softmax(-1)
    loss = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1)
    return {"loss": loss, "accuracy": accuracy(logits, labels)}
