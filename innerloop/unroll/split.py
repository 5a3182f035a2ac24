"""The meta-train / meta-test split of optimizer task families: generalisation is measured on held-out widths,
depths, an architecture, a horizon and data (Metz et al. 2022 evaluate learned optimizers the same way)."""

from __future__ import annotations

import torch

from ..data import omniglot
from .families import ImageConvTasks, ImageMLPTasks, LinearRegressionTasks, QuadraticTasks, SinusoidMLPTasks, TaskFamily
from .text import CharLMTasks


def meta_split(image_size: int = 14, root=None, dtype=torch.float32) -> dict[str, dict[str, tuple[TaskFamily, int]]]:
    """The meta-train families and the meta-test ones, each ``name -> (family, horizon)``.

    Meta-test holds out widths (4x), a depth (two hidden layers), an architecture (a conv net), a horizon (4x)
    and the data (the alphabets of Omniglot's evaluation set instead of its background set).
    ``root``: the data root of ``innerloop.data.omniglot``.
    """
    train_chars = omniglot(root, "background", image_size)  # 30 alphabets
    test_chars = omniglot(root, "evaluation", image_size)  # 20 other alphabets
    return {
        "meta-train": {
            "quadratic-d10": (QuadraticTasks(10, dtype=dtype), 100),
            "linear-d8": (LinearRegressionTasks(8, dtype=dtype), 100),
            "sine-mlp-40": (SinusoidMLPTasks((40,), dtype=dtype), 100),
            "omniglot-mlp-32": (ImageMLPTasks(train_chars, (32,), dtype=dtype), 100),
            "charlm-64": (CharLMTasks(hidden=(64,), dtype=dtype), 100),
        },
        "meta-test": {
            "quadratic-d40": (QuadraticTasks(40, dtype=dtype), 100),  # width
            "sine-mlp-40x40": (SinusoidMLPTasks((40, 40), dtype=dtype), 100),  # depth
            "omniglot-mlp-32-long": (ImageMLPTasks(train_chars, (32,), dtype=dtype), 400),  # horizon
            "omniglot-mlp-128": (ImageMLPTasks(train_chars, (128,), dtype=dtype), 100),  # width
            "omniglot-test-mlp-32": (ImageMLPTasks(test_chars, (32,), dtype=dtype), 100),  # data
            "omniglot-conv-8x8": (ImageConvTasks(train_chars, (8, 8), dtype=dtype), 100),  # architecture
            "charlm-256": (CharLMTasks(hidden=(256,), dtype=dtype), 100),  # width
        },
    }
