"""N-way K-shot classification episodes, following the indexed task-source protocol.

``EpisodicTasks(dataset, ways, shots, queries, seed).sample(draw, tasks)`` returns a ``TaskBatch``
in which task ``j`` of meta-batch ``draw`` depends on ``task_generator(seed, draw, j)`` alone (see
``innerloop.tasks.seeding``): any slice of a meta-batch can be built on its own (one rank of a
distributed job, a resumed run) and is identical to the same slice of the whole batch.

One task:

1. draws ``ways`` distinct classes (uniformly, without replacement) from the class table;
   the order of the draw is the label order, so labels ``0..ways-1`` are a fresh random
   assignment in every task;
2. for each class draws ``shots + queries`` distinct images (without replacement); the first
   ``shots`` are the support set, the rest the query set, so support and query never share an image;
3. with rotation augmentation, the class table holds each (class, angle) pair as its own class,
   and a sampled rotated class has *all* its images rotated by its angle (the Omniglot protocol
   of Santoro et al. 2016 / Vinyals et al. 2016 / Snell et al. 2017; not per-image augmentation).

Examples are class-major: in ``support_y`` example ``i`` has label ``i // shots`` and in
``query_y`` label ``i // queries`` (prototypical networks can ``view(T, ways, shots, ...)``).
Images are gathered by index from the dataset's uint8 tensor and only the sampled batch is
converted to float in ``[0, 1]`` (Omniglot: 1 = ink); no Python work per image.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ..tasks.batch import TaskBatch
from ..tasks.fixed import EVAL_DRAW, FixedTasks, fixed_tasks  # noqa: F401 (re-exported)
from ..tasks.seeding import task_generator
from ..validate import positive_int

ALL_ROTATIONS = (0, 90, 180, 270)


def _angles(spec, what: str) -> tuple[int, ...]:
    angles = tuple(int(a) for a in spec)
    if not angles or len(set(angles)) != len(angles) or any(a not in ALL_ROTATIONS for a in angles):
        raise ValueError(f"{what} must be distinct angles from {ALL_ROTATIONS} (degrees), got {tuple(spec)!r}")
    return angles


def _distinct(g: torch.Generator, m: int, k: int) -> list[int]:
    """``k`` distinct integers from ``range(m)`` in random order, uniformly over ordered samples.

    Sequential rejection of repeats (each accepted value is uniform over the values not yet
    taken) costs a few microseconds where a ``randperm(m)`` of a 4112-class table costs ~60;
    ``randperm`` is used when ``k`` is a large fraction of ``m``. Deterministic given ``g``.
    """
    if 4 * k > m:
        return torch.randperm(m, generator=g)[:k].tolist()
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < k:
        for v in torch.randint(m, (2 * k,), generator=g).tolist():
            if v not in seen:
                seen.add(v)
                out.append(v)
                if len(out) == k:
                    break
    return out


def _as_rows(images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) uint8 viewed as N rows of the widest integer type that divides an
    image's byte size: gathering whole images is then a copy of few wide elements per image."""
    row = int(np.prod(images.shape[1:]))
    wide = next(
        dt for dt, b in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2), (torch.uint8, 1)) if row % b == 0
    )
    return images.view(len(images), row).view(wide)


def _rotate_(x: torch.Tensor, turns: torch.Tensor) -> None:
    """Rotate ``x[i]`` (images in the last two dimensions) by ``turns[i]`` quarter turns, in place;
    ``turns`` indexes the leading dimensions of ``x`` (``(N,)`` or ``(T, W)``)."""
    for k in (1, 2, 3):
        where = tuple(i.to(x.device) for i in torch.nonzero(turns == k, as_tuple=True))
        if len(where[0]):
            x[where] = torch.rot90(x[where], k, dims=(-2, -1))


class EpisodicTasks:
    """Few-shot classification tasks from an image dataset.

    Args:
        dataset: an ``ImageDataset`` (or any object with ``images`` uint8 ``(N, C, H, W)``,
            ``labels`` ``(N,)`` in ``0..K-1`` and optionally ``class_names`` and ``rotations``).
        ways, shots, queries: classes per task, support and query images per class.
        seed: the run seed; task ``j`` of meta-batch ``draw`` comes from ``(seed, draw, j)``.
        rotations: ``None`` (default): the rotations the dataset declares (Omniglot's Vinyals
            splits: 0/90/180/270 for every character; other datasets: none). ``False``: no rotation.
            ``True``: every class also as 90, 180 and 270 degree rotated classes. A sequence of
            angles, e.g. ``(0, 180)``: those for every class. Rotations are counter-clockwise
            (``torch.rot90`` on the image plane, as ``PIL.Image.rotate``).
        device: where the uint8 image store lives and batches are built (e.g. ``"cuda"``: the
            gather and float conversion then run on the GPU). Default: the dataset's device.
        normalize: optional ``(mean, std)`` per channel, applied after scaling to ``[0, 1]``.
    """

    def __init__(
        self,
        dataset,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        rotations=None,
        *,
        device=None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        self.ways = positive_int("ways", ways)
        self.shots = positive_int("shots", shots)
        self.queries = positive_int("queries", queries)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed

        images = getattr(dataset, "images", None)
        labels = getattr(dataset, "labels", None)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                "dataset.images must be a uint8 tensor (N, C, H, W) "
                f"(got {type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}); "
                "build one with innerloop.data.ImageDataset or a loader such as innerloop.data.omniglot"
            )
        labels = torch.as_tensor(labels).to(torch.int64).cpu()
        if labels.shape != (len(images),):
            raise ValueError(f"dataset.labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        names = getattr(dataset, "class_names", None)
        k = len(names) if names is not None else (int(labels.max()) + 1 if len(labels) else 0)
        names = [str(c) for c in names] if names is not None else [str(i) for i in range(k)]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"dataset.labels must lie in 0..{k - 1}")
        self.dataset_name = getattr(dataset, "name", type(dataset).__name__)

        # class -> image index table, padded to the largest class
        counts = torch.bincount(labels, minlength=k)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max()) if k else 0
        pos = torch.arange(width)
        table = starts[:, None] + pos[None, :]
        table = torch.where(pos[None, :] < counts[:, None], order[table.clamp(max=max(len(order) - 1, 0))], -1)

        # expanded class table: (base class, quarter turns)
        per_class = self._rotation_spec(dataset, rotations, k)
        self.rotations = per_class
        base = [c for c in range(k) for _ in per_class[c]]
        turns = [a // 90 for c in range(k) for a in per_class[c]]
        plain = all(r == (0,) for r in per_class)
        self.class_names = [names[c] if plain else f"{names[c]}/rot{a:03d}" for c in range(k) for a in per_class[c]]
        self._base = torch.tensor(base, dtype=torch.int64)
        self._turns = torch.tensor(turns, dtype=torch.int64)
        self._rotate = any(turns)
        if any(t % 2 for t in turns) and images.shape[-1] != images.shape[-2]:
            raise ValueError(
                f"90/270 degree rotations need square images, got {images.shape[-2]}x{images.shape[-1]}; "
                "resize the images or use rotations=(0, 180)"
            )

        m = len(base)
        if self.ways > m:
            detail = f"{k} classes" if plain else f"{k} classes with their rotations"
            raise ValueError(
                f"ways={self.ways} but {self.dataset_name} has only {m} classes ({detail}); "
                f"use ways <= {m} or a split with more classes"
            )
        need = self.shots + self.queries
        used = counts[self._base.unique()]
        if need > int(used.min()):
            small = [names[c] for c in torch.nonzero(counts < need).flatten()[:3].tolist()]
            raise ValueError(
                f"shots + queries = {self.shots} + {self.queries} = {need} images per class, but {self.dataset_name} "
                f"has classes with only {int(used.min())} images (e.g. {small}); support and query are drawn "
                f"without replacement, so use shots + queries <= {int(used.min())} or drop the small classes "
                "(ImageDataset.subset)"
            )

        self.files = getattr(dataset, "files", None)  # image files (image_folder), for episodes naming them
        self.device = torch.device(device) if device is not None else images.device
        self._images = images.to(self.device).contiguous()
        self._table_cpu = table.flatten()
        self._counts = counts
        self._width = width
        self._rows = _as_rows(self._images)
        # on CPU, float32/float64 batches are converted with numpy: one single-threaded pass that is
        # several times faster than torch's uint8 -> float conversion (and immune to thread oversubscription)
        self._use_numpy = self.device.type == "cpu"
        if normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in normalize)
            c = images.shape[1]
            if mean.numel() not in (1, c) or std.numel() not in (1, c) or bool((std <= 0).any()):
                raise ValueError(
                    f"normalize must be (mean, std) with 1 or {c} values each and std > 0, got {normalize!r}"
                )
            self._mean, self._std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.normalize = normalize

    @staticmethod
    def _rotation_spec(dataset, rotations, k: int) -> tuple[tuple[int, ...], ...]:
        if rotations is None:
            declared = getattr(dataset, "rotations", None)
            if declared is None:
                return ((0,),) * k
            declared = tuple(tuple(r) for r in declared)
            if len(declared) != k:
                raise ValueError(f"dataset.rotations has {len(declared)} entries for {k} classes")
            return tuple(_angles(r, "dataset.rotations") for r in declared)
        if rotations is False:
            return ((0,),) * k
        if rotations is True:
            return (ALL_ROTATIONS,) * k
        if isinstance(rotations, (str, bytes, int)):
            raise ValueError(f"rotations must be None, False, True or a sequence of angles, got {rotations!r}")
        return (_angles(rotations, "rotations"),) * k

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_rows"]  # a view of _images: rebuilt on unpickling instead of stored twice
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rows = _as_rows(self._images)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        """Classes in the class table (characters x rotations for rotated Omniglot)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image of the tasks."""
        return tuple(self._images.shape[1:])  # type: ignore[return-value]

    def with_seed(self, seed: int) -> EpisodicTasks:
        """The same task family with another seed (shares the image store)."""
        other = copy.copy(self)
        other.seed = int(seed)
        return other

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"EpisodicTasks({self.dataset_name!r}, ways={self.ways}, shots={self.shots}, queries={self.queries}, "
            f"seed={self.seed}, classes={self.num_classes}, images={c}x{h}x{w}, device={self.device})"
        )

    # ------------------------------------------------------------------ sampling
    def _plans(self, draw: int, tasks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-table ids ``(T, ways)`` and padded-table slots ``(T, ways, shots + queries)``.

        Task ``j`` draws, from ``task_generator(seed, draw, j)`` only: ``ways`` distinct classes in
        random order (``_distinct``; the classes of labels ``0..ways-1``) and one float64 key per
        (class, image slot). The ``shots + queries`` images with the smallest keys are the class's
        images, in key order (the first ``shots`` are the support set). Only the draws are per
        task; the selection runs batched over all tasks.
        """
        tasks = [int(j) for j in tasks]
        T, W, n = len(tasks), self.ways, self.shots + self.queries
        chosen = []
        keys = torch.empty(T, W, self._width, dtype=torch.float64)
        for t, j in enumerate(tasks):
            g = task_generator(self.seed, int(draw), j)
            chosen.append(_distinct(g, self.num_classes, W))
            torch.rand(W, self._width, generator=g, dtype=torch.float64, out=keys[t])
        classes = torch.tensor(chosen, dtype=torch.int64).view(T, W)
        base = self._base[classes]
        # padding slots (beyond a class's image count) get key 2 > any rand() and are never chosen
        keys.masked_fill_(torch.arange(self._width) >= self._counts[base][..., None], 2.0)
        slots = keys.topk(n, dim=-1, largest=False, sorted=True).indices
        return classes, base[..., None] * self._width + slots

    def task_classes(self, draw: int, tasks: Sequence[int]) -> torch.Tensor:
        """Class-table ids ``(T, ways)`` of the sampled tasks: label ``l`` of task ``t`` is
        class ``self.class_names[ids[t, l]]``. Cheap (no images are gathered)."""
        return self._plans(draw, tasks)[0]

    def class_images(self, class_id: int) -> torch.Tensor:
        """Dataset image indices of class-table id ``class_id`` (its base class's images, in dataset order)."""
        base = int(self._base[class_id])
        return self._table_cpu[base * self._width : base * self._width + int(self._counts[base])]

    def image_indices(self, draw: int, tasks: Sequence[int]) -> torch.Tensor:
        """Dataset image indices ``(T, ways, shots + queries)``: ``[..., :shots]`` support, the rest query."""
        return self._table_cpu[self._plans(draw, tasks)[1]]

    def sample(self, draw: int, tasks: Sequence[int], dtype: torch.dtype = torch.float32) -> TaskBatch:
        """Tasks ``tasks`` (indices within the meta-batch) of meta-batch number ``draw``."""
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        classes, slots = self._plans(draw, tasks)
        T, W, s, q = len(classes), self.ways, self.shots, self.queries
        c, h, w = self.image_shape
        turns = self._turns[classes] if self._rotate else None
        if self._use_numpy and dtype in (torch.float32, torch.float64):
            support, query = self._assemble_numpy(self._table_cpu[slots], turns, dtype)
        else:
            support, query = self._assemble_torch(self._table_cpu[slots].to(self.device), turns, dtype)
        labels = torch.arange(W, device=self.device)
        return TaskBatch(
            support.reshape(T, W * s, c, h, w),
            labels.repeat_interleave(s).expand(T, W * s).contiguous(),
            query.reshape(T, W * q, c, h, w),
            labels.repeat_interleave(q).expand(T, W * q).contiguous(),
        )

    def episode(
        self,
        support: Sequence[Sequence[int]],
        query: Sequence[Sequence[int]],
        classes: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TaskBatch:
        """One task (``T = 1``) of explicitly chosen images: ``support[l]`` and ``query[l]`` are the
        dataset image indices of label ``l``; with ``classes`` (class-table ids, one per label) the
        images of label ``l`` are rotated by that class's angle, as ``sample`` does. Class-major."""
        if len(support) != len(query) or not len(support):
            raise ValueError(
                f"support and query must list the images of the same labels, got {len(support)} and {len(query)} labels"
            )
        idx = [int(i) for part in (support, query) for images in part for i in images]
        labels = [lab for part in (support, query) for lab, images in enumerate(part) for _ in images]
        n = sum(len(images) for images in support)
        x = self._images.index_select(0, torch.tensor(idx, dtype=torch.int64, device=self.device))
        if classes is not None:
            if len(classes) != len(support):
                raise ValueError(f"classes must give one class-table id per label ({len(support)}), got {len(classes)}")
            _rotate_(x, self._turns[torch.tensor([int(classes[lab]) for lab in labels], dtype=torch.int64)])
        x = self._to_float(x, dtype)
        y = torch.tensor(labels, dtype=torch.int64, device=self.device)
        return TaskBatch(x[None, :n], y[None, :n], x[None, n:], y[None, n:])

    def _assemble_numpy(self, idx: torch.Tensor, turns, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        T, W, n = idx.shape
        s = self.shots
        x = self._rows.numpy().take(idx.numpy().ravel(), axis=0).view(np.uint8).reshape(T, W, n, *self.image_shape)
        if turns is not None:  # rotate each sampled class's images by its angle (uint8, in place)
            _rotate_(torch.from_numpy(x), turns)
        npdt = np.float32 if dtype == torch.float32 else np.float64
        out = []
        for part in (x[:, :, :s], x[:, :, s:]):
            y = np.divide(part, npdt(255), dtype=npdt)
            if self.normalize is not None:
                y -= self._mean.numpy().astype(npdt)
                y /= self._std.numpy().astype(npdt)
            out.append(torch.from_numpy(y))
        return out[0], out[1]

    def _assemble_torch(self, idx: torch.Tensor, turns, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        T, W, n = idx.shape
        x = self._rows.index_select(0, idx.flatten()).view(torch.uint8).view(T, W, n, *self.image_shape)
        if turns is not None:
            _rotate_(x, turns)
        return self._to_float(x[:, :, : self.shots], dtype), self._to_float(x[:, :, self.shots :], dtype)

    def _to_float(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # divide by a tensor, not a Python scalar: CUDA turns division by a scalar into multiplication
        # by its reciprocal, which differs in the last bit; this way every device gives x / 255 exactly
        x = x.to(dtype).div_(torch.full((), 255, dtype=dtype, device=x.device))
        if self.normalize is not None:
            x.sub_(self._mean.to(x)).div_(self._std.to(x))
        return x
