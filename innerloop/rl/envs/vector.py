"""A vectorised environment over any gymnasium environment factory, in this process or in worker processes.

Unlike ``gymnasium.vector`` it never resets on its own and can step any subset of its
environments (the others keep their state), which is what a sampler with early-terminating
episodes of a fixed horizon needs; every step returns each stepped environment's ``info``
dict, so a task family scores transitions from what the environment reports (a velocity,
a contact cost, Meta-World's ``success``). Environments are created once and reused by
:meth:`VectorEnv.resize`, because building a simulator is slow next to an episode.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ...errors import ConfigError


class VectorStep(NamedTuple):
    """What :meth:`VectorEnv.step` returns, one row (or dict) per stepped environment."""

    observations: np.ndarray
    rewards: np.ndarray  # float64, the environments' own rewards
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    infos: list[dict]


def _no_step() -> VectorStep:
    return VectorStep(np.empty(0), np.empty(0), np.empty(0, dtype=bool), np.empty(0, dtype=bool), [])


class _Envs:
    """Environments of one process, the first ``size`` of which are in use; stepped in a plain loop."""

    def __init__(self, make_env: Callable[[], Any]) -> None:
        self.make_env = make_env
        self.envs: list = []
        self.size = 0

    def resize(self, size: int) -> None:
        while len(self.envs) < size:
            self.envs.append(self.make_env())
        self.size = size

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
        if not len(seeds):
            return np.empty(0), []
        observations, infos = zip(*(env.reset(seed=int(seed)) for env, seed in zip(self.envs, seeds)))
        return np.stack(observations), list(infos)

    def step(self, indices: np.ndarray, actions: np.ndarray) -> VectorStep:
        if not len(indices):
            return _no_step()
        results = [self.envs[i].step(action) for i, action in zip(indices, actions)]
        observations, rewards, terminated, truncated, infos = zip(*results)
        return VectorStep(
            np.stack(observations),
            np.asarray(rewards, dtype=np.float64),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            list(infos),
        )

    def call(self, method: str, args: Sequence[tuple], skip: Sequence[bool]) -> list:
        return [None if s else getattr(env, method)(*a) for env, a, s in zip(self.envs, args, skip)]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs, self.size = [], 0


def _serve(connection, make_env: Callable[[], Any]) -> None:
    """A worker process: runs an :class:`_Envs` on commands from the parent until told to stop."""
    envs = _Envs(make_env)
    try:
        while True:
            command, payload = connection.recv()
            if command == "close":
                break
            try:
                connection.send(("ok", getattr(envs, command)(*payload)))
            except Exception:  # any failure goes to the parent, which raises it
                connection.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):  # parent gone or interrupted
        pass
    finally:
        envs.close()
        connection.close()


def _shut_down(connections: list, processes: list) -> None:
    for connection in connections:
        with contextlib.suppress(OSError):
            connection.send(("close", ()))
            connection.close()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
    connections.clear()
    processes.clear()


class VectorEnv:
    """``num_envs`` environments built by ``make_env()`` (a gymnasium ``Env`` or anything with its
    ``reset(seed=)`` / ``step(action)`` API), stepped together.

    ``workers=1`` steps them in this process; ``workers=N`` splits them into ``N`` contiguous
    chunks held by ``N`` worker processes that step their chunks concurrently (one process per
    core, not one per environment as in ``gymnasium.vector.AsyncVectorEnv``). The results are
    the same bit for bit. Workers start with ``fork`` where the platform has it: ``spawn`` and
    ``forkserver`` re-import the caller's ``__main__`` in every worker, which breaks a script
    without an ``if __name__ == "__main__"`` guard; pass ``start_method="spawn"`` to opt out
    (``make_env`` must then be picklable).
    """

    def __init__(
        self, make_env: Callable[[], Any], num_envs: int = 1, workers: int = 1, start_method: str | None = None
    ) -> None:
        if workers < 1 or num_envs < 0:
            raise ConfigError(f"VectorEnv: workers must be >= 1 and num_envs >= 0, got {workers} and {num_envs}")
        self.workers = workers
        self.num_envs = 0
        self._local = _Envs(make_env) if workers == 1 else None
        self._connections: list = []
        self._processes: list = []
        if workers > 1:
            if start_method is None:
                start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(start_method)
            for _ in range(workers):
                parent, child = context.Pipe()
                # get_context(str) is typed BaseContext, which has no Process
                process = context.Process(target=_serve, args=(child, make_env), daemon=True)  # type: ignore[attr-defined]
                process.start()
                child.close()
                self._connections.append(parent)
                self._processes.append(process)
        self._bounds = np.zeros(workers + 1, dtype=np.int64)
        self._finalizer = weakref.finalize(self, _shut_down, self._connections, self._processes)
        self.resize(num_envs)

    @property
    def envs(self) -> list:
        """The environments in use, where they live in this process (``workers=1``)."""
        self._check_open()
        if self._local is None:
            raise RuntimeError("VectorEnv.envs: the environments live in worker processes (workers > 1)")
        return self._local.envs[: self.num_envs]

    @property
    def processes(self) -> list:
        """The worker processes (empty for ``workers=1`` and after :meth:`close`)."""
        return list(self._processes)

    def resize(self, num_envs: int) -> None:
        """Use ``num_envs`` environments, building only those never built before (none are destroyed)."""
        self._check_open()
        if self._local is not None:
            self._local.resize(num_envs)
        else:
            sizes = [len(chunk) for chunk in np.array_split(np.arange(num_envs), self.workers)]
            self._bounds = np.concatenate([[0], np.cumsum(sizes)])
            self._call("resize", [(size,) for size in sizes])
        self.num_envs = num_envs

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
        """Reset environment ``i`` with ``seeds[i]``; returns the stacked observations and the ``info`` dicts."""
        self._check_open()
        if len(seeds) != self.num_envs:
            raise ValueError(f"VectorEnv.reset: {len(seeds)} seeds for {self.num_envs} environments")
        if self._local is not None:
            return self._local.reset(seeds)
        busy = [i for i, (a, b) in enumerate(self._chunks()) if b > a]
        parts = self._call("reset", [(seeds[a:b],) for a, b in self._chunks() if b > a], busy)
        if not parts:
            return np.empty(0), []
        return np.concatenate([p[0] for p in parts]), [info for p in parts for info in p[1]]

    def step(self, actions: np.ndarray, indices: Sequence[int] | np.ndarray | None = None) -> VectorStep:
        """Step environments ``indices`` (increasing; default all) with ``actions`` (rows aligned with them)."""
        self._check_open()
        indices = np.arange(self.num_envs) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(actions) != len(indices) or (len(indices) and (indices[0] < 0 or indices[-1] >= self.num_envs)):
            raise ValueError(f"VectorEnv.step: {len(actions)} actions for environments {indices.tolist()}")
        if len(indices) > 1 and not (np.diff(indices) > 0).all():
            raise ValueError("VectorEnv.step: indices must be increasing")
        if self._local is not None:
            return self._local.step(indices, actions)
        cuts = np.searchsorted(indices, self._bounds)  # each worker's share: a contiguous slice of the indices
        payloads = [(indices[a:b] - start, actions[a:b]) for a, b, start in zip(cuts[:-1], cuts[1:], self._bounds[:-1])]
        busy = [i for i, (a, b) in enumerate(itertools.pairwise(cuts)) if b > a]
        if not busy:
            return _no_step()
        parts = self._call("step", [payloads[i] for i in busy], busy)
        observations, rewards, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in range(4))
        return VectorStep(observations, rewards, terminated, truncated, [info for p in parts for info in p.infos])

    def call(self, method: str, args: Sequence[tuple], skip: Sequence[bool] | None = None) -> list:
        """``env.method(*args[i])`` on environment ``i`` of those in use (None where ``skip[i]``), in order.

        What a task family needs beyond reset/step, e.g. Meta-World's ``set_task``.
        """
        self._check_open()
        skip = [False] * self.num_envs if skip is None else list(skip)
        if len(args) != self.num_envs or len(skip) != self.num_envs:
            raise ValueError(f"VectorEnv.call: {len(args)} argument tuples for {self.num_envs} environments")
        if self._local is not None:
            return self._local.call(method, args, skip)
        busy = [i for i, (a, b) in enumerate(self._chunks()) if b > a]
        parts = self._call("call", [(method, args[a:b], skip[a:b]) for a, b in self._chunks() if b > a], busy)
        return [value for part in parts for value in part]

    def close(self) -> None:
        """Close every environment and stop the worker processes; the object cannot be used afterwards."""
        if self._local is not None:
            self._local.close()
            self._local = None
        self._finalizer()  # stops the workers, at most once
        self.num_envs = -1

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _chunks(self) -> list[tuple[int, int]]:
        return list(itertools.pairwise(self._bounds.tolist()))

    def _call(self, command: str, payloads: list[tuple], workers: list[int] | None = None) -> list:
        connections = self._connections if workers is None else [self._connections[i] for i in workers]
        for connection, payload in zip(connections, payloads):
            connection.send((command, payload))
        replies = [connection.recv() for connection in connections]
        for status, value in replies:
            if status == "error":
                raise RuntimeError(f"VectorEnv worker failed in {command!r}:\n{value}")
        return [value for _, value in replies]

    def _check_open(self) -> None:
        if self.num_envs < 0:
            raise RuntimeError("VectorEnv used after close()")


__all__ = ["VectorEnv", "VectorStep"]
