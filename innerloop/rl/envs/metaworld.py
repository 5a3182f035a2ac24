"""Meta-World v3 task families: ML1 (one manipulation skill, varied goals), ML10 and ML45 (held-out skills).

Yu et al. (2019), "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning", https://arxiv.org/abs/1910.10897; McLean et al. (2025), "Meta-World+: An Improved,
Standardized, RL Benchmark", https://arxiv.org/abs/2505.11289 (the ``metaworld`` 3.x package).

The tasks are the package's own: ``metaworld.ML1(env_name, seed)`` / ``ML10(seed)`` / ``ML45(seed)``
give 50 goals per environment class for training and 50 for testing (ML1: other goals of the same
class; ML10/ML45: other classes), with the goal hidden from the observation (39 numbers; action: 4 in
``[-1, 1]``). A task row is the index of a ``metaworld.Task`` in ``train_tasks + test_tasks``. Each
simulator is the package's environment class with its reward-function version (``v2`` default, ``v1``)
and ``set_task`` of the task, as ``gym.make_vec("Meta-World/ML1-train", ...)`` builds it; innerloop
steps the bare environment (no TimeLimit / autoreset wrappers: the sampler cuts episodes at the
horizon, at most the package's 500 steps) in a :class:`~innerloop.rl.envs.vector.VectorEnv`.
Rewards are the environment's; ``info["success"]`` at any step of an episode is kept as the episode's
success (:attr:`MetaWorldBatchedEnv.success`); with ``terminate_on_success`` an episode ends at its first
success, as in the package's evaluation.

Departures: meta-training tasks are drawn independently and uniformly from the training tasks (the
package splits a meta-batch evenly over the classes, which is why its ``meta_batch_size`` must divide
by the number of classes, Metaworld#557); ML1 is reached through the benchmark classes, not
``gym.make`` (which fails for ML1, where only a vector entry point is registered, Metaworld#541).
Requires ``pip install 'innerloop[metaworld]'``.
"""

from __future__ import annotations

import functools
import pickle
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...tasks.seeding import derive_seed
from .base import BatchedEnv, TaskFamily
from .vector import VectorEnv

INSTALL_HINT = "pip install 'innerloop[metaworld]'  (metaworld 3.x, which pins mujoco==3.3.0)"
MAX_PATH_LENGTH = 500  # the package's episode length (SawyerXYZEnv.max_path_length); it refuses longer episodes
REWARD_VERSIONS = ("v1", "v2")

# The 50 v3 environments (metaworld.env_dict.ALL_V3_ENVIRONMENTS, in its order; tests check they agree), listed
# here so that the task families register without importing the package.
# fmt: off
ML1_ENVS = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown", "button-press-topdown-wall",
    "button-press", "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn", "disassemble",
    "door-close", "door-lock", "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side", "handle-pull",
    "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side", "soccer", "stick-push",
    "stick-pull", "push", "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)
# fmt: on


def require_metaworld(family: str):
    """The ``metaworld`` package, or a ConfigError that says how to install it."""
    try:
        import metaworld
    except ImportError as error:
        raise ConfigError(
            f"task family {family!r} needs Meta-World ({error}); install it with: {INSTALL_HINT}"
        ) from error
    return metaworld


@functools.lru_cache(maxsize=4)
def benchmark(kind: str, env_name: str | None, seed: int):
    """``metaworld.ML1(env_name, seed=seed)``, ``ML10(seed=seed)`` or ``ML45(seed=seed)``, built once per process."""
    metaworld = require_metaworld(kind.lower())
    return metaworld.ML1(env_name, seed=seed) if kind == "ML1" else getattr(metaworld, kind)(seed=seed)


# ---------------------------------------------------------------------------- simulators


@dataclass(frozen=True)
class _Spec:
    """What a process needs to build simulators (picklable for spawned workers)."""

    reward_version: str

    def create(self) -> _TaskEnv:
        return _TaskEnv(self.reward_version)


class _TaskEnv:
    """A simulator slot: the environment of the class of its current task, rebuilt when the class changes."""

    def __init__(self, reward_version: str) -> None:
        self.reward_version = reward_version
        self.env: Any = None  # a metaworld SawyerXYZEnv
        self.env_name: str | None = None

    def set_task(self, task) -> None:
        if task.env_name != self.env_name:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            if self.env is not None:
                self.env.close()
            self.env = ALL_V3_ENVIRONMENTS[task.env_name](reward_function_version=self.reward_version)
            self.env_name = task.env_name
        self.env.set_task(task)

    def reset(self, seed: int | None = None):
        return self.env.reset(seed=seed)  # Meta-World's reset is a function of the task alone

    def step(self, action):
        return self.env.step(action)

    def goal(self) -> np.ndarray:
        """The current goal position (hidden from the observation), ``[3]``."""
        return np.array(self.env._target_pos, dtype=np.float64)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env, self.env_name = None, None


@dataclass
class _Pool:
    """A VectorEnv and the class each of its slots holds (so that make() reuses simulators of the right class)."""

    vector: VectorEnv
    held: list[str | None]


def _assign(held: list[str | None], wanted: list[str]) -> np.ndarray:
    """Slot of each wanted class: a slot already holding it, else an empty one, else another (fewest rebuilds)."""
    slots = np.full(len(wanted), -1, dtype=np.int64)
    free: dict[str | None, list[int]] = {}
    for slot, name in enumerate(held):
        free.setdefault(name, []).append(slot)
    for i, name in enumerate(wanted):
        if free.get(name):
            slots[i] = free[name].pop()
    rest = sorted(free.pop(None, [])) + sorted(s for names in free.values() for s in names)  # empty slots first
    slots[slots < 0] = rest[: int((slots < 0).sum())]
    return slots


def _interleaved(tasks: list, start: int) -> list[int]:
    """Indices ``start + i`` of ``tasks`` ordered goal 0 of each class, goal 1 of each, ... (classes in first-seen order)."""
    by_class: dict[str, list[int]] = {}
    for i, task in enumerate(tasks, start=start):
        by_class.setdefault(task.env_name, []).append(i)
    return [i for goals in zip(*by_class.values()) for i in goals]


def _close_pools(pools: list) -> None:
    for pool in pools:
        pool.vector.close()
    pools.clear()


# ---------------------------------------------------------------------------- families


class MetaWorldFamily(TaskFamily):
    """The tasks of a Meta-World benchmark (``kind`` ML1, ML10 or ML45) as a task family.

    Args:
        horizon: steps per episode (at most, and by default, 500).
        workers: processes stepping the simulators (1: this one).
        reward_version: ``"v2"`` (the package's default) or ``"v1"``.
        seed: the benchmark's seed (``metaworld.ML1(..., seed=seed)``): which goals the task sets hold.
        start_method: worker start method (see :class:`~innerloop.rl.envs.vector.VectorEnv`).
    """

    kind: str
    env_name: str | None = None
    task_dim = 1
    observation_dim = 39
    action_dim = 4

    def __init__(
        self,
        horizon: int = MAX_PATH_LENGTH,
        workers: int = 1,
        reward_version: str = "v2",
        seed: int = 0,
        start_method: str | None = None,
    ) -> None:
        if not 1 <= horizon <= MAX_PATH_LENGTH or workers < 1:
            raise ConfigError(
                f"{self.name}: horizon must be in [1, {MAX_PATH_LENGTH}] (Meta-World's episode length) and workers >= 1, "
                f"got {horizon} and {workers}"
            )
        if reward_version not in REWARD_VERSIONS:
            raise ConfigError(f"{self.name}: reward_version must be one of {REWARD_VERSIONS}, got {reward_version!r}")
        require_metaworld(self.name)
        self.bench = benchmark(self.kind, self.env_name, seed)
        self.horizon, self.workers, self.start_method = horizon, workers, start_method
        self.reward_version, self.seed = reward_version, seed
        self.train, self.test = list(self.bench.train_tasks), list(self.bench.test_tasks)
        self.tasks = self.train + self.test
        self.train_order = _interleaved(self.train, 0)
        self.test_order = _interleaved(self.test, len(self.train))
        self.spec = _Spec(reward_version)
        self.terminate_on_success = False  # the evaluation protocol ends its scored episodes at success
        self._idle: list[_Pool] = []
        self._finalizer = weakref.finalize(self, _close_pools, self._idle)

    @property
    def train_classes(self) -> list[str]:
        return list(self.bench.train_classes)

    @property
    def test_classes(self) -> list[str]:
        return list(self.bench.test_classes)

    def task(self, row: torch.Tensor):
        """The ``metaworld.Task`` of a task row."""
        return self.tasks[int(row.reshape(-1)[0])]

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.train), (num_tasks, 1), generator=generator).to(torch.float64)

    def test_tasks(self, num_tasks: int, seed: int) -> torch.Tensor:
        """The first ``num_tasks`` of the package's test tasks, interleaved over classes. ``seed`` is not used: the
        test set is the benchmark's (fixed by the family's ``seed``); Meta-World has no validation split, so
        validation draws from it too."""
        return self.split_tasks("test", num_tasks)

    def split_tasks(self, split: str, num_tasks: int | None = None) -> torch.Tensor:
        """The first ``num_tasks`` (default all) of the package's ``"train"`` or ``"test"`` tasks, interleaved over
        classes (goal 0 of each class, goal 1 of each, ...), so that any prefix is balanced over classes: what
        Meta-World's meta-training and meta-test success rates are measured on."""
        order = {"train": self.train_order, "test": self.test_order}[split]
        num_tasks = len(order) if num_tasks is None else num_tasks
        if num_tasks > len(order):
            raise ConfigError(
                f"{self.name} has {len(order)} {split} tasks (goals x classes), asked for {num_tasks}: "
                f"set eval.tasks <= {len(order)}"
            )
        return torch.tensor(order[:num_tasks], dtype=torch.float64).unsqueeze(1)

    def describe_task(self, task: torch.Tensor) -> str:
        index = int(task.reshape(-1)[0])
        split = "train" if index < len(self.train) else "test"
        goal = pickle.loads(self.tasks[index].data)["rand_vec"][-3:]
        return f"{self.tasks[index].env_name} ({split} task {index}), goal " + ", ".join(f"{v:.3f}" for v in goal)

    def action_bounds(self) -> tuple[float, float]:
        return -1.0, 1.0

    def make(
        self, tasks: torch.Tensor, episodes: int, seed: int, task_ids: Sequence[int] | None = None
    ) -> MetaWorldBatchedEnv:
        pool = (
            self._idle.pop()
            if self._idle
            else _Pool(VectorEnv(self.spec.create, 0, self.workers, self.start_method), [])
        )
        return MetaWorldBatchedEnv(
            self, pool, tasks, episodes, seed, range(len(tasks)) if task_ids is None else task_ids
        )

    def _release(self, pool: _Pool) -> None:
        self._idle.append(pool)

    def close(self) -> None:
        """Close every cached simulator and worker process."""
        _close_pools(self._idle)


class MetaWorldBatchedEnv(BatchedEnv):
    """``T x E`` simulators; ``success`` says which episodes have reported ``info["success"]`` so far."""

    def __init__(
        self, family: MetaWorldFamily, pool: _Pool, tasks: torch.Tensor, episodes: int, seed: int, task_ids
    ) -> None:
        self.family, self.num_tasks, self.episodes = family, len(tasks), episodes
        self.pool: _Pool | None = pool
        self.task_list = [family.task(row) for row in tasks for _ in range(episodes)]  # simulator t * E + e
        size = max(len(pool.held), len(self.task_list))
        pool.vector.resize(size)
        pool.held += [None] * (size - len(pool.held))
        self.slots = _assign(pool.held[:size], [t.env_name for t in self.task_list])
        self.order = np.argsort(self.slots)  # simulators in increasing slot order (VectorEnv steps increasing indices)
        args: list[tuple] = [(None,)] * size  # unused slots keep their task
        for i, slot in enumerate(self.slots):
            args[slot] = (self.task_list[i],)
            pool.held[slot] = self.task_list[i].env_name
        pool.vector.call("set_task", args, skip=[a == (None,) for a in args])
        self.seeds = [derive_seed(seed, int(t), e) for t in task_ids for e in range(episodes)]
        self.observations: np.ndarray | None = None
        n = len(self.task_list)
        self.alive, self._success = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        self._release = weakref.finalize(self, family._release, pool)

    @property
    def success(self) -> torch.Tensor:
        """``[T, E]`` float: 1 where the episode has reported success at some step since :meth:`reset`."""
        return self._shaped(self._success.astype(np.float32))

    def goals(self) -> torch.Tensor:
        """``[T, E, 3]``: the goal positions the simulators hold (after :meth:`reset`)."""
        pool = self._open_pool()
        wanted = set(self.slots.tolist())
        out = pool.vector.call(
            "goal", [()] * pool.vector.num_envs, skip=[s not in wanted for s in range(pool.vector.num_envs)]
        )
        return self._shaped(np.stack([out[s] for s in self.slots]))

    def reset(self) -> torch.Tensor:
        pool = self._open_pool()
        seeds = [0] * pool.vector.num_envs
        for i, slot in enumerate(self.slots):
            seeds[slot] = self.seeds[i]
        observations = pool.vector.reset(seeds)[0]
        self.observations = observations[self.slots].astype(np.float32)
        self.alive[:] = True
        self._success[:] = False
        return self._shaped(self.observations).clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool = self._open_pool()
        if self.observations is None:
            raise RuntimeError("step() before reset()")
        expected = (self.num_tasks, self.episodes, self.family.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions of shape {tuple(actions.shape)}, expected {expected}")
        controls = np.clip(actions.detach().cpu().double().numpy().reshape(len(self.task_list), -1), -1.0, 1.0)
        rewards = np.zeros(len(self.task_list))
        live = self.order[self.alive[self.order]]  # alive simulators, in increasing slot order
        if len(live):
            out = pool.vector.step(controls[live], self.slots[live])
            self.observations[live] = out.observations
            rewards[live] = out.rewards
            succeeded = np.array([bool(info["success"]) for info in out.infos])
            self._success[live] |= succeeded
            if self.family.terminate_on_success:
                self.alive[live[succeeded]] = False
        return self._shaped(self.observations).clone(), self._shaped(rewards).float(), self._shaped(~self.alive)

    def _shaped(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).reshape(self.num_tasks, self.episodes, *array.shape[1:])

    def _open_pool(self) -> _Pool:
        if self.pool is None:
            raise RuntimeError("environment used after close()")
        return self.pool

    def close(self) -> None:
        """Hand the simulators back to the family for the next make()."""
        self._release()
        self.pool = None


class ML1(MetaWorldFamily):
    """ML1: the 50 training and 50 test goals of one environment class (subclasses fix ``env_name``)."""

    kind = "ML1"


class ML10(MetaWorldFamily):
    """ML10: 10 training classes, 5 held-out test classes, 50 goals each."""

    kind, name = "ML10", "ml10"


class ML45(MetaWorldFamily):
    """ML45: 45 training classes, 5 held-out test classes, 50 goals each."""

    kind, name = "ML45", "ml45"


def ml1_class_name(env: str) -> str:
    """The name of the ML1 family class of environment ``env`` (``"pick-place"`` -> ``"ML1_pick_place"``)."""
    return "ML1_" + env.replace("-", "_")


for _env in ML1_ENVS:
    globals()[ml1_class_name(_env)] = type(
        ml1_class_name(_env),
        (ML1,),
        {"env_name": f"{_env}-v3", "name": f"ml1-{_env}", "__module__": __name__, "__doc__": f"ML1 on {_env}-v3."},
    )

FAMILIES = {
    **{f"ml1-{env}": (".metaworld", ml1_class_name(env)) for env in ML1_ENVS},
    "ml10": (".metaworld", "ML10"),
    "ml45": (".metaworld", "ML45"),
}

__all__ = ["FAMILIES", "ML1", "ML1_ENVS", "ML10", "ML45", "MetaWorldBatchedEnv", "MetaWorldFamily", "benchmark"]
