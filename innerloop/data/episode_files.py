"""Fixed, published lists of test episodes: a JSON file (image paths, or class and image indices) read into an
``EpisodeList``, a task source ``training.evaluate.evaluate`` runs as it is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch

from ..errors import ConfigError
from ..tasks.batch import TaskBatch
from .episodes import EpisodicTasks

__all__ = ["EpisodeList", "read_episodes"]


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
        return batches[0] if len(batches) == 1 else TaskBatch.cat(batches)

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
                    of_class = tasks.class_images(cids[lab])
                    count = len(of_class)
                    bad = [i for i in images if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
                    if bad:
                        raise ConfigError(
                            f"{at}: image {bad[0]!r} of label {lab} is not an index of class "
                            f"{tasks.class_names[cids[lab]]!r}, which has {count} images (0..{count - 1})"
                        )
                    rows.append([int(of_class[i]) for i in images])
                resolved.append(rows)
        flat = [i for part in resolved for images in part for i in images]
        if len(set(flat)) != len(flat):
            twice = next(i for i in flat if flat.count(i) > 1)
            shown = tasks.files[twice] if tasks.files is not None else f"image {twice}"
            raise ConfigError(f"{at}: {shown} is used twice (support and query must not share an image)")
        out.append((resolved[0], resolved[1], cids))
    return EpisodeList(tasks, out, name=str(path))
