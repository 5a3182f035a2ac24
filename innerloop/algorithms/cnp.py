"""Conditional Neural Processes.

Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende & Eslami (2018),
"Conditional Neural Processes", ICML. https://arxiv.org/abs/1807.01613

A forward-pass learner: the support set is encoded and mean-pooled into r, and a Gaussian is
predicted at every query input::

    r = (1/K) sum_i h_theta(x_i, y_i)          (mu*, raw*) = g_theta(x*, r)
    sigma* = 0.1 + 0.9 * softplus(raw*)          L(theta) = - mean_tasks mean_queries log N(y*; mu*, sigma*^2)

Departures: context = the K support points and targets = the disjoint query points (innerloop's
task protocol; the paper draws the context size at random and includes it among the targets).
``loss`` reports the query MSE of mu (the regression metric of every learner), ``nll`` the objective.
Notes: docs/learners.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MLP
from ..tasks import checks
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .forward_pass import Episode, ForwardPassLearner
from .handle import is_task_list

SIGMA_FLOOR = 0.1


def gaussian_nll(y: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """-log N(y; mu, sigma^2) of each point ``(..., P, D) -> (..., P)``, summed over the D outputs.

    Written out rather than via ``torch.distributions.Normal``, whose argument checks
    branch on tensor values and so cannot run under ``vmap``.
    """
    z = (y - mu) / sigma
    return (0.5 * z.pow(2) + sigma.log() + 0.5 * math.log(2 * math.pi)).sum(-1)


class CNPNet(nn.Module):
    """Encoder h and decoder g of a CNP; ``forward(support_x, support_y, query_x) -> (mu, sigma)``.

    ``widths`` are the sizes of the encoder's layers, the last one being the size of r;
    the decoder mirrors them (``len(widths)`` layers, ReLU between). Inputs are
    ``(..., points, x_dim)`` and ``(..., points, y_dim)``; leading dimensions are batched.
    """

    def __init__(self, x_dim: int = 1, y_dim: int = 1, widths: Sequence[int] = (128, 128, 128)) -> None:
        super().__init__()
        widths = [positive_int("width", w) for w in widths]
        if not widths:
            raise ValueError("a CNP needs at least one layer: widths must not be empty")
        self.x_dim = positive_int("x_dim", x_dim)
        self.y_dim = positive_int("y_dim", y_dim)
        self.encoder = MLP(x_dim + y_dim, widths[:-1], widths[-1])
        self.decoder = MLP(x_dim + widths[-1], widths[:-1], 2 * y_dim)  # mu and the raw sigma

    def encode(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """r = mean_i h(x_i, y_i): ``(..., K, x_dim), (..., K, y_dim) -> (..., R)``."""
        return self.encoder(torch.cat([support_x, support_y], -1)).mean(-2)

    def decode(self, r: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) = g(x*, r) at every query input: ``(..., R), (..., Q, x_dim) -> 2 x (..., Q, y_dim)``."""
        r = r.unsqueeze(-2).expand(*query_x.shape[:-1], r.shape[-1])
        mu, raw_sigma = self.decoder(torch.cat([query_x, r], -1)).split(self.y_dim, -1)
        return mu, SIGMA_FLOOR + (1 - SIGMA_FLOOR) * F.softplus(raw_sigma)

    def forward(self, support_x, support_y, query_x) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` at ``query_x`` given the support set: ``decode(encode(support_x, support_y), query_x)``."""
        return self.decode(self.encode(support_x, support_y), query_x)


class CNP(ForwardPassLearner):
    """Conditional Neural Process: adapts to a task in one forward pass over its support set.

    Args:
        x_dim, y_dim: sizes of an input and a target (1 and 1 for sinusoids).
        hidden: the width of each layer of the encoder and decoder, or a list of
            widths, one per layer (then ``layers`` is not used). The last width is the
            size of the representation r.
        layers: the number of layers of the encoder and of the decoder (default 3 of
            128 each, the paper's 1-D regression encoder).
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``: how tasks are mapped.

    ``parameters()`` are exactly the meta-parameters (encoder and decoder).
    ``adapt(support_x, support_y)`` returns r ``(R,)``, ``predict(r, query_x)`` the ``(mu, sigma)``
    of one task, ``learner(support_x, support_y, query_x)`` both in one call.
    """

    model: CNPNet

    objective = "nll"  # meta_loss minimises the likelihood; "loss" is the query MSE
    float_targets_by_mse = False  # a Gaussian likelihood: any float targets are legitimate

    def __init__(
        self, x_dim: int = 1, y_dim: int = 1, hidden: int | Sequence[int] = 128, layers: int = 3, strategy: str = "auto"
    ) -> None:
        widths = [hidden] * positive_int("layers", layers) if isinstance(hidden, int) else list(hidden)
        super().__init__(CNPNet(x_dim, y_dim, widths), loss_fn=None, strategy=strategy)

    # -- one task ---------------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The representation r ``(R,)`` of one task's support set. ``steps`` is ignored (no inner loop)."""
        checks.check_points(self.model.x_dim, self.model.y_dim, "adapt", support_x=support_x, support_y=support_y)
        self.check_task(support_x, support_y)
        return self.model.encode(support_x, support_y)

    def predict(self, r: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)``, each ``(Q, y_dim)``, at the query inputs of one task from its representation r."""
        return self.model.decode(r, query_x)

    def query_metrics(self, mu, sigma, query_y) -> dict[str, torch.Tensor]:
        """Query ``loss`` (MSE of mu, the MAML family's regression metric) and ``nll`` of one task."""
        return {"loss": F.mse_loss(mu, query_y), "nll": gaussian_nll(query_y, mu, sigma).mean()}

    # -- episodes ---------------------------------------------------------------------------
    def check_batch(self, batch: TaskBatch, where: str = "meta_loss") -> None:
        """The points' shapes (``(..., points, x_dim)``, ``(..., points, y_dim)``), then the common value checks."""
        if not is_task_list(batch):
            checks.check_points(
                self.model.x_dim, self.model.y_dim, "CNP", **{f: getattr(batch, f) for f in checks.FIELDS}
            )
        super().check_batch(batch, where)

    def episode(self, batch: TaskBatch) -> tuple[Episode, TaskBatch]:
        """Per task: ``(mu, sigma)`` at the queries from the support set, the query MSE and NLL."""

        def task(support_x, support_y, query_x, query_y):
            return self.query_metrics(*self.model(support_x, support_y, query_x), query_y)

        return task, batch
