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

A fixed, published list of episodes (``read_episodes``: JSON of image paths or class and image
indices) becomes an ``EpisodeList``, a task source ``training.evaluate.evaluate`` runs as it is.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import ConfigError
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
            turns = self._turns[torch.tensor([int(classes[lab]) for lab in labels], dtype=torch.int64)]
            for k in (1, 2, 3):
                rows = torch.nonzero(turns == k).flatten().to(self.device)
                if len(rows):
                    x[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
        x = self._to_float(x, dtype)
        y = torch.tensor(labels, dtype=torch.int64, device=self.device)
        return TaskBatch(x[None, :n], y[None, :n], x[None, n:], y[None, n:])

    def _assemble_numpy(self, idx: torch.Tensor, turns, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        T, W, n = idx.shape
        s = self.shots
        x = self._rows.numpy().take(idx.numpy().ravel(), axis=0).view(np.uint8).reshape(T, W, n, *self.image_shape)
        if turns is not None:  # rotate each sampled class's images by its angle (uint8, in place)
            turns = turns.numpy()
            for k in (1, 2, 3):
                tt, ww = np.nonzero(turns == k)
                if len(tt):
                    x[tt, ww] = np.rot90(x[tt, ww], k, axes=(-2, -1))
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
            for k in (1, 2, 3):
                tt, ww = torch.nonzero(turns == k, as_tuple=True)
                if len(tt):
                    tt, ww = tt.to(self.device), ww.to(self.device)
                    x[tt, ww] = torch.rot90(x[tt, ww], k, dims=(-2, -1))
        return self._to_float(x[:, :, : self.shots], dtype), self._to_float(x[:, :, self.shots :], dtype)

    def _to_float(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # divide by a tensor, not a Python scalar: CUDA turns division by a scalar into multiplication
        # by its reciprocal, which differs in the last bit; this way every device gives x / 255 exactly
        x = x.to(dtype).div_(torch.full((), 255, dtype=dtype, device=x.device))
        if self.normalize is not None:
            x.sub_(self._mean.to(x)).div_(self._std.to(x))
        return x


class EpisodeList:
    """A fixed, published list of episodes over an ``EpisodicTasks`` source, as an indexed task source.

    ``sample(draw, tasks)`` returns episodes ``tasks`` of the list (``draw`` is ignored), so
    ``training.evaluate.evaluate`` runs them like any fixed task set; episodes of different
    sizes can only be batched one at a time (``uniform`` says whether they all match).
    """

    def __init__(
        self, tasks: EpisodicTasks, episodes: Sequence[tuple[list, list, list | None]], name: str = "episodes"
    ):
        if not episodes:
            raise ValueError("an episode list needs at least one episode")
        self.tasks = tasks
        self.episodes = list(episodes)
        self.name = name
        shapes = {(tuple(map(len, s)), tuple(map(len, q))) for s, q, _ in self.episodes}
        self.uniform = len(shapes) == 1

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def shots(self) -> int | None:
        """Support images per label when every label of every episode has the same number, else None."""
        counts = {len(images) for s, _, _ in self.episodes for images in s}
        return counts.pop() if len(counts) == 1 else None

    def sample(self, draw: int, tasks: Sequence[int], dtype: torch.dtype = torch.float32) -> TaskBatch:
        """Episodes ``tasks`` (indices into the list) as one ``TaskBatch``; ``draw`` is ignored."""
        batches = [self.tasks.episode(*self.episodes[int(j)], dtype=dtype) for j in tasks]
        if len(batches) == 1:
            return batches[0]
        return TaskBatch(
            *(torch.cat([getattr(b, f) for b in batches]) for f in ("support_x", "support_y", "query_x", "query_y"))
        )

    def __repr__(self) -> str:
        return f"EpisodeList({len(self)} episodes from {self.name}, over {self.tasks!r})"


def read_episodes(path: str | Path, tasks: EpisodicTasks) -> EpisodeList:
    """A JSON file of episodes over ``tasks`` (the split they are drawn from), checked in full.

    ``{"episodes": [episode, ...]}`` (or the list alone). An episode gives, for each label
    ``l = 0, 1, ...`` in order, its support and query images, either as file paths (relative to
    the data root, as ``tasks.files`` names them; images used as they are, unrotated)::

        {"support": [["test/a/0.png", "test/a/1.png"], ["test/b/3.png", "test/b/0.png"]],
         "query":   [["test/a/2.png"], ["test/b/1.png"]]}

    or as indices: ``classes`` names the class of each label (a name or an index of
    ``tasks.class_names``, rotated classes included) and each image is an index into that class's
    images, in file-name order::

        {"classes": ["b", 0], "support": [[3, 0], [0, 1]], "query": [[1], [2]]}

    An image may not appear twice in an episode (support and query never share an image).
    """
    path = Path(path)
    where = f"episode file {path}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist; give a JSON file of episodes (see the README's Data section)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {where}: {err}; it must be JSON (see the README's Data section)") from None
    episodes = data.get("episodes") if isinstance(data, dict) else data
    if not isinstance(episodes, list) or not episodes:
        raise ConfigError(
            f'{where} must hold a non-empty list of episodes, as {{"episodes": [{{"support": ..., '
            '"query": ...}}, ...]}}'
        )
    by_file = None
    names = {n: i for i, n in enumerate(tasks.class_names)}
    table = tasks._table_cpu.view(-1, max(tasks._width, 1))
    out = []
    for e, episode in enumerate(episodes):
        at = f"{where}, episode {e}"
        if not isinstance(episode, dict) or not {"support", "query"} <= set(episode):
            raise ConfigError(f"{at}: an episode is an object with 'support' and 'query' (and 'classes' for indices)")
        parts = [episode["support"], episode["query"]]
        for what, part in zip(("support", "query"), parts):
            if not isinstance(part, list) or not part or not all(isinstance(p, list) and p for p in part):
                raise ConfigError(f"{at}: '{what}' must list, for each label, a non-empty list of images")
        if len(parts[0]) != len(parts[1]):
            raise ConfigError(f"{at}: 'support' has {len(parts[0])} labels but 'query' has {len(parts[1])}")
        items = [i for part in parts for images in part for i in images]
        classes = episode.get("classes")
        if classes is None:
            if not all(isinstance(i, str) for i in items):
                raise ConfigError(
                    f"{at}: images given by index need 'classes' (one class per label); "
                    "without it every image is a file path relative to the data root"
                )
            if by_file is None:
                if tasks.files is None:
                    raise ConfigError(
                        f"{at}: {tasks.dataset_name} does not record its image files; give the "
                        "images by index ('classes' and image indices)"
                    )
                by_file = {f: i for i, f in enumerate(tasks.files)}
            resolved = []
            for part in parts:
                rows = []
                for images in part:
                    ids = []
                    for f in images:
                        key = PurePosixPath(f).as_posix().removeprefix("./")
                        if key not in by_file:
                            raise ConfigError(
                                f"{at}: image {f!r} is not in {tasks.dataset_name} (paths are relative to "
                                f"the data root, e.g. {next(iter(by_file))!r})"
                            )
                        ids.append(by_file[key])
                    rows.append(ids)
                resolved.append(rows)
            cids = None
        else:
            if not isinstance(classes, list) or len(classes) != len(parts[0]):
                raise ConfigError(f"{at}: 'classes' must give one class per label ({len(parts[0])}), got {classes!r}")
            cids = []
            for c in classes:
                if isinstance(c, str) and c in names:
                    cids.append(names[c])
                elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < tasks.num_classes:
                    cids.append(c)
                else:
                    raise ConfigError(
                        f"{at}: class {c!r} is not a name or an index (0..{tasks.num_classes - 1}) of "
                        f"{tasks.dataset_name}'s classes (e.g. {tasks.class_names[0]!r})"
                    )
            if len(set(cids)) != len(cids):
                raise ConfigError(f"{at}: 'classes' repeats a class: {classes}")
            resolved = []
            for part in parts:
                rows = []
                for lab, images in enumerate(part):
                    base = int(tasks._base[cids[lab]])
                    count = int(tasks._counts[base])
                    bad = [i for i in images if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
                    if bad:
                        raise ConfigError(
                            f"{at}: image {bad[0]!r} of label {lab} is not an index of class "
                            f"{tasks.class_names[cids[lab]]!r}, which has {count} images (0..{count - 1})"
                        )
                    rows.append([int(table[base, i]) for i in images])
                resolved.append(rows)
        flat = [i for part in resolved for images in part for i in images]
        if len(set(flat)) != len(flat):
            twice = next(i for i in flat if flat.count(i) > 1)
            shown = tasks.files[twice] if tasks.files is not None else f"image {twice}"
            raise ConfigError(f"{at}: {shown} is used twice (support and query must not share an image)")
        out.append((resolved[0], resolved[1], cids))
    return EpisodeList(tasks, out, name=str(path))
