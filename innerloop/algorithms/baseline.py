"""The fine-tuning baselines Baseline and Baseline++.

Chen, Liu, Kira, Wang & Huang (2019), "A Closer Look at Few-shot Classification", ICLR.
https://arxiv.org/abs/1904.04232

Training is ordinary classification over ALL base (training) classes: an embedding f_phi and a classifier
over the C base classes, cross-entropy on batches labelled with base-class ids (:class:`BaseClassTasks`).
At test time f_phi is frozen and a NEW N-way classifier is fit on each task's support embeddings (the
paper's protocol: 100 epochs of SGD over the support set in batches of 4, lr 0.01, momentum 0.9,
dampening 0.9, weight decay 0.001), then scores the queries of the same episodes as every meta-learner::

    Baseline:    s_k(x) = w_k . f_phi(x) + b_k
    Baseline++:  s_k(x) = c * cos(f_phi(x), w_k) * g_k     (g_k the class-wise norm of the authors' weight
                                                            norm; c = 2 up to 200 classes, 10 above)

Departures: batches are drawn as episodes (classes without replacement within a task) rather than from a
shuffled list of images; batch norm is transductive at test (statistics of each episode, as every innerloop
learner); the test-time classifier's initialisation and batch order come from a fixed seed, the same for
every task (each task's labels are a fresh random assignment), so a task's result does not depend on which
tasks share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.params import Params
from ..errors import InputError
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .base import check_class_labels
from .handle import check_reduction, is_task_list, reduce_tasks
from .losses import classification_metrics
from .metric import EmbeddingHeadLearner, Head


def default_scale(classes: int) -> float:
    """Baseline++'s cosine scale c in the authors' code: 2 for up to 200 classes, 10 above."""
    return 2.0 if classes <= 200 else 10.0


def cosine_scores(z: torch.Tensor, weight: torch.Tensor, gain: torch.Tensor, scale: float) -> torch.Tensor:
    """``c * cos(z, w_k) * g_k``: ``z (..., B, D)``, ``weight (..., N, D)``, ``gain (..., N)`` -> ``(..., B, N)``."""
    rows = F.normalize(weight, dim=-1) * gain.unsqueeze(-1)
    return scale * F.normalize(z, dim=-1) @ rows.transpose(-1, -2)


class CosineClassifier(nn.Module):
    """Baseline++'s classifier: a weight-normalised linear map (class-wise gain ``g_k``, initially ``||w_k||``)
    of the normalised features, times ``scale``; no bias.

    Args:
        features: the input feature size D.
        classes: the number of classes scored (the output size).
        scale: the cosine scale c (None: :func:`default_scale` of ``classes``).
    """

    def __init__(self, features: int, classes: int, scale: float | None = None) -> None:
        super().__init__()
        linear = nn.Linear(features, classes, bias=False)  # torch's default initialisation of w
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.gain = nn.Parameter(self.weight.detach().norm(dim=-1))
        self.scale = default_scale(classes) if scale is None else float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Class scores ``(..., classes)`` of features ``z (..., features)``."""
        return cosine_scores(z, self.weight, self.gain, self.scale)


class FineTunedHead(Head):
    """A new classifier fit on each task's frozen support embeddings by SGD with momentum (the paper's test protocol).

    ``fit`` returns the classifier's parameters ``{"weight" (..., N, D), "bias" | "gain" (..., N)}``; it runs
    under ``vmap`` and on leading task dimensions (closed-form gradients, one seeded schedule for every task).

    Args:
        cosine: fit Baseline++'s cosine classifier instead of a linear one with bias.
        scale: the cosine scale c (None: :func:`default_scale` of the task's ways).
        epochs: passes over the support set.
        batch_size: support examples per SGD step.
        lr: the SGD step size.
        momentum: the SGD momentum.
        dampening: the SGD dampening of the momentum.
        weight_decay: the L2 penalty added to each gradient.
        seed: seeds the classifier's initialisation and the batch order.
    """

    def __init__(
        self,
        cosine: bool = False,
        scale: float | None = None,
        epochs: int = 100,
        batch_size: int = 4,
        lr: float = 0.01,
        momentum: float = 0.9,
        dampening: float = 0.9,
        weight_decay: float = 0.001,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cosine = bool(cosine)
        self.scale = scale
        self.epochs = positive_int("finetune_epochs", epochs)
        self.batch_size = positive_int("finetune_batch_size", batch_size)
        for name, value in (("finetune_lr", lr), ("finetune_weight_decay", weight_decay)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name, value in (("finetune_momentum", momentum), ("finetune_dampening", dampening)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        self.lr, self.momentum, self.dampening, self.weight_decay = lr, momentum, dampening, weight_decay
        self.seed = int(seed)

    def scale_for(self, ways: int) -> float:
        """The cosine scale c of an N-way classifier."""
        return default_scale(ways) if self.scale is None else self.scale

    def scores(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """The classifier ``params`` at features ``z (..., B, D)``: ``(..., B, N)``."""
        weight = params["weight"]
        if self.cosine:
            return cosine_scores(z, weight, params["gain"], self.scale_for(weight.shape[-2]))
        return z @ weight.transpose(-1, -2) + params["bias"].unsqueeze(-2)

    def gradient(self, params: Params, z: torch.Tensor, onehot: torch.Tensor) -> Params:
        """d/d params of the mean cross-entropy over the batch ``z (..., B, D)``, in closed form (no autograd, so
        the fit costs a few matrix products a step under ``vmap`` too): with ``G = (softmax(s) - y) / B``,
        linear ``dW = G^T z, db = sum G``; cosine ``s = c cos(z, v_k) g_k``: ``dg_k = c sum_b G_bk cos_bk``,
        ``dv_k = (I - v^_k v^_k^T) (c g_k sum_b G_bk z^_b) / ||v_k||``."""
        scores = self.scores(params, z)
        G = (scores.softmax(-1) - onehot) / z.shape[-2]  # (..., B, N)
        if not self.cosine:
            return {"weight": G.transpose(-1, -2) @ z, "bias": G.sum(-2)}
        v, gain = params["weight"], params["gain"]
        c, norm = self.scale_for(v.shape[-2]), v.norm(dim=-1, keepdim=True)
        unit_z, unit_v = F.normalize(z, dim=-1), v / norm
        cos = unit_z @ unit_v.transpose(-1, -2)
        d_unit_v = c * gain.unsqueeze(-1) * (G.transpose(-1, -2) @ unit_z)  # (..., N, D)
        d_v = (d_unit_v - (d_unit_v * unit_v).sum(-1, keepdim=True) * unit_v) / norm
        return {"weight": d_v, "gain": c * (G * cos).sum(-2)}

    def schedule(self, ways: int, features: int, shots: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The initial weights ``(N, D + 1)`` (torch's ``nn.Linear`` initialisation, U(-1/sqrt(D), 1/sqrt(D)); the
        last column the bias) and each epoch's support order, from ``seed`` (numpy, so ``vmap`` sees no random op)."""
        rng = np.random.default_rng(self.seed)
        bound = 1 / math.sqrt(features)
        draw = torch.from_numpy(rng.uniform(-bound, bound, size=(ways, features + 1)))
        return draw, [torch.from_numpy(rng.permutation(shots)) for _ in range(self.epochs)]

    def fit(self, support_z: torch.Tensor, support_onehot: torch.Tensor) -> Params:
        """``epochs`` passes over the support set in shuffled batches of ``batch_size`` (torch's SGD semantics:
        ``d = grad + wd * p``, ``v = d`` then ``v = m v + (1 - dampening) d``, ``p -= lr v``)."""
        z, y = support_z.detach(), support_onehot
        shots, ways, features = z.shape[-2], y.shape[-1], z.shape[-1]
        draw, orders = self.schedule(ways, features, shots)
        lead = z.shape[:-2]  # each task its own copy on leading task dimensions
        weight = draw[:, :features].to(z).expand(*lead, ways, features)
        second = weight.norm(dim=-1) if self.cosine else draw[:, features].to(z).expand(*lead, ways)
        params: Params = {"weight": weight, "gain" if self.cosine else "bias": second}
        velocity: Params | None = None
        for order in orders:
            order = order.to(z.device)
            for start in range(0, shots, self.batch_size):
                batch = order[start : start + self.batch_size]
                g = self.gradient(params, z.index_select(-2, batch), y.index_select(-2, batch))
                d = {k: g[k] + self.weight_decay * params[k] for k in params}
                if velocity is None:
                    velocity = d
                else:
                    velocity = {k: self.momentum * velocity[k] + (1 - self.dampening) * d[k] for k in params}
                params = {k: params[k] - self.lr * velocity[k] for k in params}
        return params

    def logits(self, state: Params, query_z: torch.Tensor) -> torch.Tensor:
        """The fitted classifier's scores at the query embeddings."""
        return self.scores(state, query_z)


class BaseClassTasks:
    """An episodic task source whose batches are labelled with base-class ids ``0..num_classes-1`` (the class
    table of ``source``, e.g. :class:`~innerloop.data.EpisodicTasks`), instead of each task's labels ``0..N-1``:
    the supervised batches over all base classes on which :class:`Baseline` is trained."""

    def __init__(self, source) -> None:
        if not callable(getattr(source, "task_classes", None)) or not hasattr(source, "num_classes"):
            raise TypeError(
                f"BaseClassTasks needs an episodic source with task_classes() and num_classes (innerloop.data."
                f"EpisodicTasks), got a {type(source).__name__}"
            )
        self.source = source

    @property
    def num_classes(self) -> int:
        """C, the base classes (the source's class table)."""
        return self.source.num_classes

    def sample(self, draw: int, tasks: Sequence[int], dtype: torch.dtype = torch.float32) -> TaskBatch:
        """``source.sample(draw, tasks)`` with every label replaced by its class-table id."""
        batch = self.source.sample(draw, tasks, dtype)
        classes = self.source.task_classes(draw, tasks).to(batch.support_y.device)
        return TaskBatch(
            batch.support_x, classes.gather(1, batch.support_y), batch.query_x, classes.gather(1, batch.query_y)
        )

    def __getattr__(self, name: str):  # the rest (image_shape, with_seed, ...) is the source's
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"BaseClassTasks({self.source!r})"


class Baseline(EmbeddingHeadLearner):
    """Baseline (Chen et al. 2019): pre-train an embedding with a linear classifier over all base classes, fit a
    new linear classifier on each test task's support embeddings.

    Args:
        model: the embedding network f_phi (e.g. ``Conv4()`` without ``out_features``).
        num_classes: C, the base classes of the training batches (``BaseClassTasks(source).num_classes``).
        feature_dim: the embedding size (default: ``model.embedding_dim``).
        scale: Baseline++'s cosine scale c for both classifiers (None: 2 up to 200 classes, 10 above).
        finetune_epochs, finetune_batch_size, finetune_lr, finetune_momentum, finetune_dampening,
            finetune_weight_decay: the test-time SGD (defaults: the paper's).
        finetune_seed: seeds the test-time classifier's initialisation and batch order.
        strategy, flatten_tasks: as :class:`~innerloop.algorithms.metric.EmbeddingHeadLearner` (evaluation).

    ``meta_loss(batch)`` is the cross-entropy over the base classes of every example of a batch whose labels are
    base-class ids (train on ``BaseClassTasks(source)``; a plain episodic batch would be mislabelled);
    ``evaluate``/``adapt``/``predict`` work on ordinary N-way episodes.
    """

    cosine = False

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        feature_dim: int | None = None,
        scale: float | None = None,
        finetune_epochs: int = 100,
        finetune_batch_size: int = 4,
        finetune_lr: float = 0.01,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 0.001,
        finetune_seed: int = 0,
        strategy: str = "auto",
        flatten_tasks: bool | None = None,
    ) -> None:
        head = FineTunedHead(
            self.cosine,
            scale,
            finetune_epochs,
            finetune_batch_size,
            finetune_lr,
            finetune_momentum,
            finetune_dampening,
            finetune_weight_decay,
            finetune_seed,
        )
        super().__init__(model, head, strategy=strategy, flatten_tasks=flatten_tasks)
        features = feature_dim or getattr(model, "embedding_dim", None)
        if features is None:
            raise ValueError(
                f"{type(self).__name__} sizes its classifier by the embedding: pass feature_dim= (the output size of "
                f"the {type(model).__name__}, which has no embedding_dim attribute)"
            )
        self.num_classes = positive_int("num_classes", num_classes)
        self.classifier: nn.Module = (
            CosineClassifier(features, num_classes, scale) if self.cosine else nn.Linear(features, num_classes)
        )

    def backward_per_task(self, batch: TaskBatch) -> bool:
        """Never: the batch is one supervised batch (batch-norm statistics over all of it)."""
        return False

    def meta_loss(self, batch: TaskBatch, reduction: str = "mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy and accuracy of the base classifier on every support and query example, per task reduced."""
        check_reduction(reduction)
        if is_task_list(batch):
            raise InputError(f"{type(self).__name__} trains on a TaskBatch of base-class labels, got a list of tasks")
        self.check_batch(batch)
        check_class_labels(type(self).__name__, batch.support_y, batch.query_y)
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        top = int(y.max())
        if top >= self.num_classes:
            raise InputError(
                f"{type(self).__name__} was built for {self.num_classes} base classes but the batch holds label {top}; "
                "train on BaseClassTasks(source) and build the learner with num_classes=source.num_classes"
            )
        z = self.embed(None, x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return reduce_tasks(classification_metrics(self.classifier(z), y), reduction, "loss")

    def evaluate(self, batch: TaskBatch, steps: Sequence[int] = (0,)) -> dict[int, dict[str, torch.Tensor]]:
        """``{0: {"loss": (T,), "accuracy": (T,)}}`` of the classifier fit on each episode's support set."""
        return {0: super().evaluate(batch, [0])[0]}


class BaselinePlusPlus(Baseline):
    """Baseline++ (Chen et al. 2019): :class:`Baseline` with cosine classifiers (:class:`CosineClassifier`),
    for pre-training and for each test task alike."""

    cosine = True
