"""Task families for learned optimizers: what an optimizer is meta-trained and tested on (Metz et al. 2022,
"Practical tradeoffs between memory, compute, and performance in learned optimizers", CoLLAs, section 4).

A family maps a task seed to an inner training problem: initial parameters ``init(seed)``, a pure loss
``loss(params, batch)`` and a seeded data stream ``batch(seed, index, split)`` (``split``: ``"train"`` or the
held-out ``"val"`` stream), so an inner run is a deterministic function of its seed and step.
(The character-level language model is in :mod:`.text`; the meta-train / meta-test split in :mod:`.split`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..core.params import Params
from ..models.mlp import MLP
from ..tasks.seeding import seeded_generator
from ..validate import positive_int
from .trees import index_tree, stack_trees


class TaskFamily:
    """A distribution of inner training problems (subclasses define ``init``, ``loss`` and ``batch``).

    Args:
        dtype: the dtype of parameters and data.
    """

    name = "family"

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype, self.device = dtype, torch.device("cpu")

    def to(self, device: str | torch.device) -> TaskFamily:
        """Put parameters and batches on ``device`` (drawn on the CPU, so the streams do not depend on it)."""
        self.device = torch.device(device)
        module = getattr(self, "module", None)
        if module is not None:
            module.to(self.device)
        return self

    def _placed(self, tree: Any) -> Any:
        leaves, spec = tree_flatten(tree)
        return tree_unflatten([x.to(self.device) if isinstance(x, torch.Tensor) else x for x in leaves], spec)

    def init(self, seed: int) -> Params:  # pragma: no cover
        """The initial parameters of task ``seed``."""
        raise NotImplementedError

    def loss(self, params: Params, batch: Any) -> torch.Tensor:  # pragma: no cover
        """The task's training loss on one batch (a pure function of its arguments)."""
        raise NotImplementedError

    def batch(self, seed: int, index: int, split: str) -> Any:  # pragma: no cover
        """Batch ``index`` of task ``seed``'s ``split`` stream."""
        raise NotImplementedError

    def inits(self, seeds: Sequence[int]) -> Params:
        """The initial parameters of every task, stacked (one leading dimension)."""
        unique = list(dict.fromkeys(seeds))
        stacked = stack_trees([self.init(s) for s in unique])
        return self._placed(index_tree(stacked, torch.tensor([unique.index(s) for s in seeds])))

    def batches(self, seeds: Sequence[int], start: int, count: int, split: str) -> Any:
        """Batches ``start .. start+count-1`` of every task, stacked to leading dimensions ``(tasks, count)``."""
        unique = list(dict.fromkeys(seeds))  # antithetic particles share their task's batches
        streams = stack_trees([self.stream(s, start, count, split) for s in unique])
        return self._placed(index_tree(streams, torch.tensor([unique.index(s) for s in seeds])))

    def stream(self, seed: int, start: int, count: int, split: str) -> Any:
        """Batches ``start .. start+count-1`` of task ``seed``, stacked (override to vectorise)."""
        return stack_trees([self.batch(seed, start + k, split) for k in range(count)])

    def describe(self) -> str:
        """The family's name and settings."""
        return self.name


def index_first(tree: Any) -> Any:
    """The first entry of every tensor leaf."""
    return index_tree(tree, 0)


class QuadraticTasks(TaskFamily):
    """l(x; b) = 1/2 sum_i a_i (x_i - c_i - noise * z_i)^2, curvatures a log-uniform in [1/condition, 1].

    Args:
        dim: the dimension of x.
        condition: the ratio of the largest to the smallest curvature.
        noise: the standard deviation of the per-batch target noise z (0: deterministic).
    """

    name = "quadratic"

    def __init__(self, dim: int = 10, condition: float = 100.0, noise: float = 0.0, dtype=torch.float32) -> None:
        super().__init__(dtype)
        self.dim, self.condition, self.noise = positive_int("dim", dim), float(condition), float(noise)

    def _task(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = seeded_generator(seed, "quadratic")
        u = torch.rand(self.dim, generator=g, dtype=torch.float64)
        scale = torch.exp(-u * torch.log(torch.tensor(self.condition, dtype=torch.float64)))
        center = torch.randn(self.dim, generator=g, dtype=torch.float64)
        return scale.to(self.dtype), center.to(self.dtype)

    def init(self, seed):
        """x_0 ~ N(0, I)."""
        return {
            "x": torch.randn(self.dim, generator=seeded_generator(seed, "init"), dtype=torch.float64).to(self.dtype)
        }

    def loss(self, params, batch):
        """The curvature-weighted squared distance to the batch's target."""
        return 0.5 * (batch["scale"] * (params["x"] - batch["target"]) ** 2).sum()

    def batch(self, seed, index, split):
        """The curvatures and the (noisy) target."""
        return index_first(self.stream(seed, index, 1, split))

    def stream(self, seed, start, count, split):
        """The task's curvatures and targets, computed once for the ``count`` batches."""
        scale, center = self._task(seed)
        targets = center.expand(count, self.dim)
        if self.noise:
            z = [
                torch.randn(self.dim, generator=seeded_generator(seed, split, start + k), dtype=torch.float64)
                for k in range(count)
            ]
            targets = targets + self.noise * torch.stack(z).to(self.dtype)
        return {"scale": scale.expand(count, self.dim), "target": targets}

    def describe(self):
        return f"quadratic(dim={self.dim}, condition={self.condition:g}, noise={self.noise:g})"


class LinearRegressionTasks(TaskFamily):
    """Least squares on y = x.w* + noise, x ~ N(0, I), w* ~ N(0, I / dim): params ``w``, ``b``; loss the mean squared error.

    Args:
        dim: input dimension.
        batch_size: examples per batch.
        noise: the label noise's standard deviation.
    """

    name = "linear"

    def __init__(self, dim: int = 8, batch_size: int = 16, noise: float = 0.1, dtype=torch.float32) -> None:
        super().__init__(dtype)
        self.dim, self.batch_size, self.noise = positive_int("dim", dim), positive_int("batch_size", batch_size), noise

    def init(self, seed):
        """Zero weights and bias."""
        return {"w": torch.zeros(self.dim, dtype=self.dtype), "b": torch.zeros((), dtype=self.dtype)}

    def loss(self, params, batch):
        """Mean squared error."""
        return ((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2).mean()

    def batch(self, seed, index, split):
        """``batch_size`` fresh examples of task ``seed``."""
        w = torch.randn(self.dim, generator=seeded_generator(seed, "w"), dtype=torch.float64) / self.dim**0.5
        g = seeded_generator(seed, split, index)
        x = torch.randn(self.batch_size, self.dim, generator=g, dtype=torch.float64)
        y = x @ w + self.noise * torch.randn(self.batch_size, generator=g, dtype=torch.float64)
        return {"x": x.to(self.dtype), "y": y.to(self.dtype)}

    def describe(self):
        return f"linear(dim={self.dim}, batch_size={self.batch_size}, noise={self.noise:g})"


class _ModuleFamily(TaskFamily):
    """A family whose model is an ``nn.Module`` initialised by torch's default initialisers from the task seed."""

    def build(self) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def __init__(self, dtype) -> None:
        super().__init__(dtype)
        self.module = self.build().to(dtype)

    def init(self, seed):
        """torch's default initialisation of the model, drawn from the task seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**62)
            fresh = self.build().to(self.dtype)
        return {n: p.detach() for n, p in fresh.named_parameters()}

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (x,))


class SinusoidMLPTasks(_ModuleFamily):
    """Regression of y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5] (Finn et al. 2017) by an MLP.

    Args:
        hidden: the MLP's hidden widths.
        batch_size: examples per batch.
    """

    name = "sine-mlp"

    def __init__(self, hidden: Sequence[int] = (40,), batch_size: int = 16, dtype=torch.float32) -> None:
        self.hidden, self.batch_size = tuple(hidden), positive_int("batch_size", batch_size)
        super().__init__(dtype)

    def build(self):
        return MLP(1, self.hidden, 1)

    def loss(self, params, batch):
        """Mean squared error."""
        return ((self.forward(params, batch["x"]) - batch["y"]) ** 2).mean()

    def batch(self, seed, index, split):
        """``batch_size`` points of task ``seed``'s sinusoid."""
        g = seeded_generator(seed, "sine")
        amplitude, phase = 0.1 + 4.9 * torch.rand((), generator=g), torch.pi * torch.rand((), generator=g)
        x = 10 * torch.rand(self.batch_size, 1, generator=seeded_generator(seed, split, index)) - 5
        return {"x": x.to(self.dtype), "y": (amplitude * torch.sin(x - phase)).to(self.dtype)}

    def describe(self):
        return f"sine-mlp(hidden={list(self.hidden)}, batch_size={self.batch_size})"


class ImageMLPTasks(_ModuleFamily):
    """Classification of ``classes`` image classes (drawn per task from a dataset) by an MLP on the pixels.

    Args:
        images: an ``innerloop.data.ImageDataset`` (e.g. ``omniglot(None, "train", image_size=14)``, any image folder).
        hidden: the MLP's hidden widths.
        classes: classes per task (labels 0..classes-1 in the task's random order).
        batch_size: images per batch.
    """

    name = "image-mlp"

    def __init__(
        self, images, hidden: Sequence[int] = (32,), classes: int = 10, batch_size: int = 32, dtype=torch.float32
    ):
        self.hidden, self.classes = tuple(hidden), positive_int("classes", classes)
        self.batch_size = positive_int("batch_size", batch_size)
        if images.num_classes < classes:
            raise ValueError(f"{images.name} has {images.num_classes} classes, fewer than classes={classes}")
        self.dataset_name, self.image_shape = images.name, tuple(images.images.shape[1:])
        self.pixels = images.images.flatten(1)  # uint8 (N, C*H*W)
        self.labels = images.labels
        self.num_classes = images.num_classes
        self.order = torch.argsort(images.labels, stable=True)  # image indices grouped by class
        self.counts = torch.bincount(images.labels, minlength=images.num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        super().__init__(dtype)

    def build(self):
        return MLP(self.pixels.shape[1], self.hidden, self.classes)

    def loss(self, params, batch):
        """Cross-entropy."""
        return F.cross_entropy(self.forward(params, batch["x"]), batch["y"])

    def batch(self, seed, index, split):
        """``batch_size`` images of the task's classes, drawn with replacement (``val``: an independent stream)."""
        chosen = torch.randperm(self.num_classes, generator=seeded_generator(seed, "classes"))[: self.classes]
        g = seeded_generator(seed, split, index)
        y = torch.randint(self.classes, (self.batch_size,), generator=g)
        c = chosen[y]
        within = (torch.rand(self.batch_size, generator=g, dtype=torch.float64) * self.counts[c]).long()
        picks = self.order[self.starts[c] + within]
        return {"x": self.pixels[picks].to(self.dtype) / 255.0, "y": y}

    def describe(self):
        return f"image-mlp({self.dataset_name}, hidden={list(self.hidden)}, classes={self.classes})"


class ImageConvTasks(ImageMLPTasks):
    """The classification tasks of :class:`ImageMLPTasks` by a small conv net: ``len(channels)`` blocks of
    conv 3x3 -> ReLU -> max-pool 2x2, then a linear layer (no batch norm: the inner run is a plain function).

    Args:
        images: an ``ImageDataset``.
        channels: filters of each block.
        classes: classes per task.
        batch_size: images per batch.
    """

    name = "image-conv"

    def __init__(
        self, images, channels: Sequence[int] = (8, 8), classes: int = 10, batch_size: int = 32, dtype=torch.float32
    ):
        self.channels = tuple(channels)
        super().__init__(images, (), classes, batch_size, dtype)

    def build(self) -> nn.Module:
        c, h, w = self.image_shape
        layers: list[nn.Module] = []
        for width in self.channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
        return nn.Sequential(*layers, nn.Flatten(-3), nn.Linear(c * h * w, self.classes))

    def batch(self, seed, index, split):
        """The images of :meth:`ImageMLPTasks.batch`, shaped ``(batch, C, H, W)``."""
        out = super().batch(seed, index, split)
        return {"x": out["x"].reshape(-1, *self.image_shape), "y": out["y"]}

    def describe(self):
        return f"image-conv({self.dataset_name}, channels={list(self.channels)}, classes={self.classes})"
