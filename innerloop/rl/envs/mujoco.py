"""MuJoCo locomotion task families of the MAML paper, over gymnasium's v5 environments.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", section 5.3, meta-learn locomotion with a half-cheetah that must run at a goal
velocity or in a goal direction, and an ant that must run forward or backward. Their code
(``cbfinn/maml_rl``, on rllab) and its PyTorch port (``tristandeleu/pytorch-maml-rl``,
``maml_rl/envs/mujoco/{half_cheetah,ant}.py``) define the task rewards reproduced here.

The simulation, the observations, the initial-state noise and the termination rule are
gymnasium's ``HalfCheetah-v5`` and ``Ant-v5`` unchanged; only the reward is replaced by the
paper's, computed from the forward velocity gymnasium reports (``info["x_velocity"]``, the
root's x displacement over one 0.05 s control step divided by it, as in pytorch-maml-rl;
rllab read the torso's instantaneous centre-of-mass velocity), the action and, for the ant,
the contact forces. Observations differ from rllab's, which appended the torso position
(and, for the ant, its orientation); the tasks are the same.

Environments are stepped in this process by default (a plain loop over the simulators is
as fast as gymnasium's ``SyncVectorEnv`` and skips its autoreset bookkeeping); ``workers=N``
spreads them over ``N`` processes for many-core machines. Simulators are created once per
family and reused by every :meth:`make`, because compiling a MuJoCo model is slow next to
an episode of a few hundred steps.

Requires ``pip install 'innerloop[rl]'`` (``gymnasium[mujoco]>=1.0``); gymnasium is imported
only when a family is constructed, so ``innerloop.rl.envs`` imports without it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ConfigError
from ...tasks.seeding import derive_seed
from .base import BatchedEnv, TaskFamily

INSTALL_HINT = "pip install 'innerloop[rl]'  (or: pip install 'gymnasium[mujoco]>=1.0')"

# The MAML paper's cost coefficients (rllab's HalfCheetah and Ant, kept by pytorch-maml-rl).
CHEETAH_CTRL_WEIGHT = 0.5 * 1e-1
ANT_CTRL_WEIGHT = 0.5 * 1e-2
ANT_CONTACT_WEIGHT = 0.5 * 1e-3
ANT_SURVIVE_REWARD = 0.05


# ---------------------------------------------------------------------------- rewards
# Pure functions of (task row, forward velocity, applied action, MuJoCo data); the data is
# only read by the ant, for its contact forces. The action is the clipped one the simulator
# applied, as in rllab (which clips before charging the control cost).


def control_cost(action: np.ndarray, weight: float) -> float:
    """``weight * sum(action**2)``."""
    return float(weight * np.sum(np.square(action)))


def contact_cost(cfrc_ext: np.ndarray, weight: float = ANT_CONTACT_WEIGHT) -> float:
    """``weight * sum(clip(cfrc_ext, -1, 1)**2)`` over every body's external contact wrench (rllab's Ant)."""
    return float(weight * np.sum(np.square(np.clip(cfrc_ext, -1.0, 1.0))))


def halfcheetah_velocity_reward(task: np.ndarray, x_velocity: float, action: np.ndarray, data=None) -> float:
    """``-|v - goal| - 0.05 * sum(a**2)``, ``task = [goal]``."""
    return -abs(float(x_velocity) - float(task[0])) - control_cost(action, CHEETAH_CTRL_WEIGHT)


def halfcheetah_direction_reward(task: np.ndarray, x_velocity: float, action: np.ndarray, data=None) -> float:
    """``direction * v - 0.05 * sum(a**2)``, ``task = [direction]`` with direction in {-1, +1}."""
    return float(task[0]) * float(x_velocity) - control_cost(action, CHEETAH_CTRL_WEIGHT)


def ant_direction_reward(task: np.ndarray, x_velocity: float, action: np.ndarray, data) -> float:
    """``direction * v - 0.005 * sum(a**2) - 0.0005 * sum(clip(cfrc_ext, -1, 1)**2) + 0.05``."""
    return (
        float(task[0]) * float(x_velocity)
        - control_cost(action, ANT_CTRL_WEIGHT)
        - contact_cost(data.cfrc_ext)
        + ANT_SURVIVE_REWARD
    )


# ---------------------------------------------------------------------------- simulators


@dataclass(frozen=True)
class _Spec:
    """What a process needs to build and score one family's simulators (picklable for workers)."""

    env_id: str
    env_kwargs: tuple[tuple[str, object], ...]
    reward: Callable[[np.ndarray, float, np.ndarray, object], float]

    def create(self):
        import gymnasium
        import mujoco

        with _known_mujoco_warnings_silenced(mujoco):
            env = gymnasium.make(self.env_id, disable_env_checker=True, **dict(self.env_kwargs))
        # The bare MujocoEnv: gymnasium.make's TimeLimit (1000 steps) and order-enforcing
        # wrappers are redundant here (the sampler cuts episodes at the family's horizon)
        # and cost up to a fifth of a HalfCheetah step.
        return env.unwrapped


@contextlib.contextmanager
def _known_mujoco_warnings_silenced(mujoco):
    """Drop MuJoCo >= 4's deprecation warning about gymnasium's ``half_cheetah.xml``.

    The model uses the compiler attribute ``settotalmass``, which MuJoCo 4 still honours
    (the cheetah weighs 14 as before) but reports at every compilation, on stderr and
    appended to ``MUJOCO_LOG.TXT`` in the working directory: one line per simulator,
    hundreds per batch. Other warnings go to Python's ``warnings`` instead.
    """
    if not hasattr(mujoco, "set_mju_user_warning"):  # bindings without the hook: leave as is
        yield
        return
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class _EnvGroup:
    """A growing list of simulators, the first ``n`` of which play ``n`` tasks; stepped in a loop.

    Used directly in this process, or inside each worker process of a :class:`_WorkerGroup`.
    """

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.envs: list = []
        self.tasks = np.zeros((0, 1))

    def configure(self, tasks: np.ndarray) -> None:
        while len(self.envs) < len(tasks):
            self.envs.append(self.spec.create())
        self.tasks = tasks

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.stack([env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]).astype(np.float32)

    def step(self, indices: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step simulators ``indices`` with ``actions`` (rows aligned); gymnasium's own reward is ignored."""
        observations = np.empty((len(indices), self.observation_dim), dtype=np.float32)
        rewards = np.empty(len(indices), dtype=np.float64)
        terminated = np.empty(len(indices), dtype=bool)
        for row, (i, action) in enumerate(zip(indices, actions)):
            env = self.envs[i]
            observations[row], _, terminated[row], _, info = env.step(action)
            rewards[row] = self.spec.reward(self.tasks[i], info["x_velocity"], action, env.data)
        return observations, rewards, terminated

    @property
    def observation_dim(self) -> int:
        return self.envs[0].observation_space.shape[0]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _serve(connection, spec: _Spec) -> None:
    """A worker process: runs an :class:`_EnvGroup` on commands from the parent until told to stop."""
    group = _EnvGroup(spec)
    try:
        while True:
            command, payload = connection.recv()
            if command == "close":
                break
            try:
                connection.send(("ok", getattr(group, command)(*payload)))
            except Exception:  # any failure goes to the parent, which raises it
                connection.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):  # parent gone or interrupted
        pass
    finally:
        group.close()
        connection.close()


class _WorkerGroup:
    """The same interface as :class:`_EnvGroup`, with the simulators split in contiguous
    chunks over worker processes that step their chunks concurrently.

    Workers are plain ``multiprocessing`` processes rather than gymnasium's
    ``AsyncVectorEnv``, which runs one process per simulator (400 processes for 20 tasks
    x 20 episodes) instead of one per core.

    Workers start with ``fork`` where the platform has it (as ``AsyncVectorEnv`` does on
    Linux): ``spawn`` and ``forkserver`` re-import the caller's ``__main__`` in every worker,
    which breaks any script without an ``if __name__ == "__main__"`` guard. A forked worker
    only runs numpy and MuJoCo, never torch, so the threads torch may hold in the parent are
    harmless; pass ``start_method="spawn"`` (or ``"forkserver"``) to the family to opt out.
    """

    def __init__(self, spec: _Spec, workers: int, start_method: str | None) -> None:
        if start_method is None:
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(start_method)
        self.connections, self.processes = [], []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child, spec), daemon=True)  # type: ignore[attr-defined]  # get_context(str) is typed BaseContext
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self.bounds = np.zeros(workers + 1, dtype=np.int64)

    def _call(self, command: str, payloads: list[tuple]) -> list:
        for connection, payload in zip(self.connections, payloads):
            connection.send((command, payload))
        replies = [connection.recv() for connection in self.connections]
        for status, value in replies:
            if status == "error":
                raise RuntimeError(f"MuJoCo worker failed in {command!r}:\n{value}")
        return [value for _, value in replies]

    def configure(self, tasks: np.ndarray) -> None:
        sizes = [len(chunk) for chunk in np.array_split(np.arange(len(tasks)), len(self.connections))]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])
        self._call("configure", [(tasks[a:b],) for a, b in zip(self.bounds[:-1], self.bounds[1:])])

    def reset(self, seeds: list[int]) -> np.ndarray:
        return np.concatenate(self._call("reset", [(seeds[a:b],) for a, b in zip(self.bounds[:-1], self.bounds[1:])]))

    def step(self, indices: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # indices are sorted, so each worker's share is a contiguous slice of them
        cuts = np.searchsorted(indices, self.bounds)
        payloads = [(indices[a:b] - start, actions[a:b]) for a, b, start in zip(cuts[:-1], cuts[1:], self.bounds[:-1])]
        results = self._call("step", payloads)
        observations, rewards, terminated = (np.concatenate(parts) for parts in zip(*results))
        return observations, rewards, terminated

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(("close", ()))
                connection.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
        self.connections, self.processes = [], []


def _close_groups(groups: list) -> None:
    for group in groups:
        group.close()
    groups.clear()


# ---------------------------------------------------------------------------- families


def _require_gymnasium(family: str) -> None:
    """Import gymnasium and mujoco, or raise a ConfigError that says how to install them."""
    try:
        import gymnasium  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"task family {family!r} needs gymnasium's MuJoCo environments ({error}); install them with: {INSTALL_HINT}"
        ) from error


class _MujocoFamily(TaskFamily):
    """Shared machinery: a cache of simulator groups, seeding, clipping, termination.

    Args:
        horizon: steps per episode (200 in the MAML paper).
        workers: 1 steps the simulators in this process; ``N > 1`` in ``N`` worker processes.
        start_method: ``multiprocessing`` start method of the workers (default: fork where
            available, else spawn; see :class:`_WorkerGroup`).
    """

    env_id: str
    task_dim = 1
    reward: Callable  # one of the reward functions above

    def __init__(self, horizon: int = 200, workers: int = 1, start_method: str | None = None) -> None:
        _require_gymnasium(self.name)
        if horizon < 1 or workers < 1:
            raise ConfigError(f"{self.name}: horizon and workers must be >= 1, got {horizon} and {workers}")
        self.horizon, self.workers, self.start_method = horizon, workers, start_method
        # gymnasium's default, stated so the observation layout cannot drift with a new
        # release: the torso's x (and, for the ant, y) position is left out of the observation.
        self.spec = _Spec(self.env_id, (("exclude_current_positions_from_observation", True),), type(self).reward)
        probe = _EnvGroup(self.spec)
        probe.configure(np.zeros((1, self.task_dim)))
        space = probe.envs[0].action_space
        self.observation_dim = probe.observation_dim
        self.action_dim = space.shape[0]
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        # Idle simulator groups, reused by make(); a group is leased to one environment at a
        # time, so environments alive together never share simulators.
        self._idle: list = [probe] if workers == 1 else []
        self._finalizer = weakref.finalize(self, _close_groups, self._idle)

    def make(self, tasks: torch.Tensor, episodes: int, seed: int, task_ids=None) -> BatchedEnv:
        if self._idle:
            group = self._idle.pop()
        elif self.workers == 1:
            group = _EnvGroup(self.spec)
        else:
            group = _WorkerGroup(self.spec, self.workers, self.start_method)
        # every task row repeated for its episodes: simulator t * E + e plays task t
        group.configure(np.repeat(tasks.detach().cpu().double().numpy().reshape(len(tasks), -1), episodes, axis=0))
        return _MujocoBatchedEnv(
            self, group, len(tasks), episodes, seed, range(len(tasks)) if task_ids is None else task_ids
        )

    def _release(self, group) -> None:
        self._idle.append(group)

    def close(self) -> None:
        """Close every cached simulator and worker process (make() starts afresh after this)."""
        _close_groups(self._idle)

    def action_bounds(self) -> tuple[float, float]:
        return float(self.low.min()), float(self.high.max())


class _MujocoBatchedEnv(BatchedEnv):
    """``T x E`` simulators of a family; a terminated episode is frozen until :meth:`reset`."""

    def __init__(self, family: _MujocoFamily, group, num_tasks: int, episodes: int, seed: int, task_ids) -> None:
        self.family, self.group = family, group
        self.num_tasks, self.episodes = num_tasks, episodes
        # Simulator (t, e) always starts from the same seed: a rollout is a function of `seed` and the task's id.
        self.seeds = [derive_seed(seed, int(t), e) for t in task_ids for e in range(episodes)]
        self.observations: np.ndarray | None = None
        self.alive = np.ones(num_tasks * episodes, dtype=bool)
        # close() hands the simulators back; so does garbage collection of an unclosed env
        self._release = weakref.finalize(self, family._release, group)

    def reset(self) -> torch.Tensor:
        self._check_open()
        self.observations = self.group.reset(self.seeds)
        self.alive[:] = True
        return self._shaped(self.observations).clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_open()
        if self.observations is None:
            raise RuntimeError("step() before reset()")
        expected = (self.num_tasks, self.episodes, self.family.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions of shape {tuple(actions.shape)}, expected {expected}")
        controls = actions.detach().cpu().double().numpy().reshape(len(self.seeds), -1)
        controls = np.clip(controls, self.family.low, self.family.high)
        rewards = np.zeros(len(self.seeds))  # frozen episodes earn 0
        live = np.flatnonzero(self.alive)
        if len(live):
            observations, rewards[live], terminated = self.group.step(live, controls[live])
            self.observations[live] = observations
            self.alive[live[terminated]] = False
        return (self._shaped(self.observations).clone(), self._shaped(rewards).float(), self._shaped(~self.alive))

    def _shaped(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).reshape(self.num_tasks, self.episodes, *array.shape[1:])

    def _check_open(self) -> None:
        if self.group is None:
            raise RuntimeError("environment used after close()")

    def close(self) -> None:
        """Hand the simulators back to the family for the next make() (they stay alive)."""
        self._release()  # runs at most once
        self.group = None


class HalfCheetahVelocity(_MujocoFamily):
    """Half-cheetah running at a goal velocity (MAML paper, section 5.3).

    Task: goal velocity ``g ~ U[0, 2]`` (``task_dim = 1``). Reward per step, as in
    rllab's ``HalfCheetahEnvRand`` (``cbfinn/maml_rl``) and pytorch-maml-rl's
    ``HalfCheetahVelEnv``::

        r = -|v - g| - 0.5 * 0.1 * sum(a**2)

    with ``v = info["x_velocity"]`` (the root's forward displacement over the 0.05 s
    control step) and ``a`` the action clipped to ``[-1, 1]^6``. Observation: gymnasium's
    ``HalfCheetah-v5`` (17 numbers: joint positions without the root x, then velocities;
    ``exclude_current_positions_from_observation=True``, gymnasium's default). Episodes
    never terminate; the horizon is 200 steps.
    """

    name = "halfcheetah-vel"
    env_id = "HalfCheetah-v5"
    reward = staticmethod(halfcheetah_velocity_reward)

    def __init__(
        self,
        horizon: int = 200,
        workers: int = 1,
        start_method: str | None = None,
        velocity_range: tuple[float, float] = (0.0, 2.0),
    ) -> None:
        self.velocity_range = tuple(velocity_range)
        super().__init__(horizon, workers, start_method)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        low, high = self.velocity_range
        return low + (high - low) * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64)

    def describe_task(self, task: torch.Tensor) -> str:
        return f"goal velocity {float(task[0]):.2f}"


class _DirectionFamily(_MujocoFamily):
    """Tasks are a direction, +1 (forward) or -1 (backward) with equal probability, ``[T, 1]``."""

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, (num_tasks, 1), generator=generator).to(torch.float64) * 2 - 1

    def describe_task(self, task: torch.Tensor) -> str:
        return "forward" if float(task[0]) > 0 else "backward"


class HalfCheetahDirection(_DirectionFamily):
    """Half-cheetah running forward or backward (MAML paper, section 5.3).

    Task: direction ``d``, +1 or -1 with equal probability (``task_dim = 1``). Reward per
    step, as in rllab's ``HalfCheetahEnvRandDirec`` and pytorch-maml-rl's ``HalfCheetahDirEnv``::

        r = d * v - 0.5 * 0.1 * sum(a**2)

    with ``v = info["x_velocity"]`` and ``a`` the clipped action. Observation, horizon and
    (absent) termination as in :class:`HalfCheetahVelocity`.
    """

    name = "halfcheetah-dir"
    env_id = "HalfCheetah-v5"
    reward = staticmethod(halfcheetah_direction_reward)


class AntDirection(_DirectionFamily):
    """Ant running forward or backward (MAML paper, section 5.3).

    Task: direction ``d``, +1 or -1 with equal probability (``task_dim = 1``). Reward per
    step, rllab's Ant reward as used by the paper's ``AntEnvRandDirec`` (``cbfinn/maml_rl``)
    and pytorch-maml-rl's ``AntDirEnv``::

        r = d * v - 0.5 * 1e-2 * sum(a**2) - 0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)**2) + 0.05

    with ``v = info["x_velocity"]`` (the torso's forward displacement over the 0.05 s
    control step), ``a`` the action clipped to ``[-1, 1]^8`` (rllab divides by the half
    range of the action space, which is 1) and ``cfrc_ext`` the bodies' external contact
    wrenches. These are the paper's coefficients, not gymnasium's (control 0.5, survive
    1.0), so returns are comparable with the paper's and pytorch-maml-rl's; the survival
    bonus is paid on every step taken, the terminating one included, as there.

    Observation: gymnasium's ``Ant-v5`` (105 numbers: joint positions without the torso's
    x, y, then velocities, then the clipped contact wrenches of the 13 non-world bodies;
    ``exclude_current_positions_from_observation=True``, gymnasium's default). An episode
    terminates when the ant is unhealthy, gymnasium's rule and the paper's: torso height
    outside ``[0.2, 1.0]`` or a non-finite state. A terminated episode is not stepped again:
    until reset it repeats its last observation with reward 0 and ``terminated`` True.
    The horizon is 200 steps.
    """

    name = "ant-dir"
    env_id = "Ant-v5"
    reward = staticmethod(ant_direction_reward)


__all__ = [
    "AntDirection",
    "HalfCheetahDirection",
    "HalfCheetahVelocity",
    "ant_direction_reward",
    "contact_cost",
    "control_cost",
    "halfcheetah_direction_reward",
    "halfcheetah_velocity_reward",
]
