"""The in-memory image dataset every loader returns and ``EpisodicTasks`` samples from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Rotations = tuple[tuple[int, ...], ...]


class ImageDataset:
    """A labelled image set held as one compact uint8 tensor.

    * ``images``: uint8 ``(N, C, H, W)`` (decoded once; converted to float only per sampled batch).
      Omniglot stores 255 = ink, so its float images have 1 = ink.
    * ``labels``: int64 ``(N,)``, class index ``0..K-1`` of each image.
    * ``class_names``: the ``K`` class names (e.g. ``"Angelic/character01"``, a wnid, a CIFAR class).
    * ``rotations``: ``None`` or, per class, the angles in degrees (multiples of 90) under which the
      class is used as separate classes by ``EpisodicTasks`` (Omniglot's Vinyals splits list
      0, 90, 180 and 270 for every character). The images are stored unrotated.
    * ``files``: ``None`` or, per image, the file it was decoded from (``image_folder``: the path
      relative to the folder), so that an episode can name its images by file.
    """

    def __init__(
        self,
        images,
        labels,
        class_names: Sequence[str],
        *,
        rotations: Rotations | None = None,
        files: Sequence[str] | None = None,
        name: str = "images",
    ):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.int64)
        class_names = [str(c) for c in class_names]
        k = len(class_names)
        if len(set(class_names)) != k:
            dup = sorted({c for c in class_names if class_names.count(c) > 1})[:5]
            raise ValueError(f"class names must be unique; repeated: {dup}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(
                f"labels must lie in 0..{k - 1} (one per class name), got {int(labels.min())}..{int(labels.max())}"
            )
        counts = torch.bincount(labels, minlength=k)
        if k and int(counts.min()) == 0:
            empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten()[:5].tolist()]
            raise ValueError(f"{int((counts == 0).sum())} classes have no images, e.g. {empty}")
        if rotations is not None:
            rotations = tuple(tuple(int(a) for a in r) for r in rotations)
            if len(rotations) != k:
                raise ValueError(
                    f"rotations must list the angles of each of the {k} classes, got {len(rotations)} entries"
                )
            for r in rotations:
                if not r or any(a % 90 or not 0 <= a < 360 for a in r) or len(set(r)) != len(r):
                    raise ValueError(f"rotation angles must be distinct values from (0, 90, 180, 270), got {r}")
        if files is not None:
            files = tuple(str(f) for f in files)
            if len(files) != len(images):
                raise ValueError(f"files must name each of the {len(images)} images, got {len(files)} entries")
        self.files = files
        self.images = images
        self.labels = labels
        self.class_names = class_names
        self.rotations = rotations
        self.name = name
        self._counts = counts

    @property
    def num_classes(self) -> int:
        """How many classes the dataset holds (rotations not counted)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self) -> torch.Tensor:
        """Images per class, int64 ``(K,)``."""
        return self._counts.clone()

    def indices_of(self, c: int | str) -> torch.Tensor:
        """Image indices of class ``c`` (index or name)."""
        c = self.class_names.index(c) if isinstance(c, str) else int(c)
        return torch.nonzero(self.labels == c).flatten()

    def subset(self, classes: Sequence[int | str]) -> ImageDataset:
        """The images of ``classes`` (indices or names, in that order), relabelled ``0..len(classes)-1``."""
        ids = []
        for c in classes:
            if isinstance(c, str):
                if c not in self.class_names:
                    raise ValueError(f"class {c!r} is not in {self.name}")
                ids.append(self.class_names.index(c))
            else:
                if not 0 <= int(c) < self.num_classes:
                    raise ValueError(f"class index {c} is out of range 0..{self.num_classes - 1}")
                ids.append(int(c))
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[torch.tensor(ids, dtype=torch.int64)] = torch.arange(len(ids))
        new = remap[self.labels]
        keep = torch.nonzero(new >= 0).flatten()
        keep = keep[torch.argsort(new[keep], stable=True)]
        return ImageDataset(
            self.images[keep],
            new[keep],
            [self.class_names[i] for i in ids],
            rotations=None if self.rotations is None else tuple(self.rotations[i] for i in ids),
            files=None if self.files is None else [self.files[i] for i in keep.tolist()],
            name=f"{self.name}[subset of {len(ids)} classes]",
        )

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        counts = self._counts
        per = (
            f"{int(counts.min())}"
            if int(counts.min()) == int(counts.max())
            else f"{int(counts.min())}..{int(counts.max())}"
        )
        rot = ""
        if self.rotations is not None:
            n = sum(len(r) for r in self.rotations)
            rot = f", {n} classes with rotations"
        return (
            f"ImageDataset({self.name!r}: {len(self)} images {c}x{h}x{w} uint8, {self.num_classes} classes "
            f"x {per} images{rot})"
        )


def from_numpy(images: np.ndarray, labels: np.ndarray, class_names, **kw) -> ImageDataset:
    """An ``ImageDataset`` from numpy arrays (``images`` uint8 NCHW, shared, not copied)."""
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.asarray(labels, np.int64)),
        class_names,
        **kw,
    )
