"""MuJoCo locomotion task families of the MAML paper, over gymnasium's v5 environments.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", section 5.3, meta-learn locomotion with a half-cheetah that must run at a goal
velocity or in a goal direction, and an ant that must run forward or backward. Their code
(``cbfinn/maml_rl``, on rllab) and its PyTorch port (``tristandeleu/pytorch-maml-rl``,
``maml_rl/envs/mujoco/{half_cheetah,ant}.py``) define the task rewards reproduced here.

The simulation, the observations, the initial-state noise and the termination rule are
gymnasium's ``HalfCheetah-v5`` and ``Ant-v5`` unchanged; only the reward is replaced by the
paper's, computed from the step's ``info`` (forward velocity ``info["x_velocity"]``: the
root's x displacement over one 0.05 s control step divided by it, as in pytorch-maml-rl;
rllab read the torso's instantaneous centre-of-mass velocity), the action and, for the ant,
the contact cost. Observations differ from rllab's, which appended the torso position
(and, for the ant, its orientation); the tasks are the same. Simulators run in a
:class:`~innerloop.rl.envs.vector.VectorEnv` (this process, or ``workers=N`` processes).

Requires ``pip install 'innerloop[rl]'`` (``gymnasium[mujoco]>=1.0``); gymnasium is imported
only when a family is constructed, so ``innerloop.rl.envs`` imports without it.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ...errors import ConfigError
from ...tasks.seeding import derive_seed
from .base import BatchedEnv, TaskFamily
from .vector import VectorEnv

INSTALL_HINT = "pip install 'innerloop[rl]'  (or: pip install 'gymnasium[mujoco]>=1.0')"

# The MAML paper's cost coefficients (rllab's HalfCheetah and Ant, kept by pytorch-maml-rl).
CHEETAH_CTRL_WEIGHT = 0.5 * 1e-1
ANT_CTRL_WEIGHT = 0.5 * 1e-2
ANT_CONTACT_WEIGHT = 0.5 * 1e-3
ANT_SURVIVE_REWARD = 0.05


# ---------------------------------------------------------------------------- rewards
# Pure functions of (task row, applied action, the step's info dict). The action is the
# clipped one the simulator applied, as in rllab (which clips before charging the control cost).


def control_cost(action: np.ndarray, weight: float) -> float:
    """``weight * sum(action**2)``."""
    return float(weight * np.sum(np.square(action)))


def halfcheetah_velocity_reward(task: np.ndarray, action: np.ndarray, info: dict) -> float:
    """``-|v - goal| - 0.05 * sum(a**2)``, ``task = [goal]``, ``v = info["x_velocity"]``."""
    return -abs(float(info["x_velocity"]) - float(task[0])) - control_cost(action, CHEETAH_CTRL_WEIGHT)


def halfcheetah_direction_reward(task: np.ndarray, action: np.ndarray, info: dict) -> float:
    """``direction * v - 0.05 * sum(a**2)``, ``task = [direction]`` with direction in {-1, +1}."""
    return float(task[0]) * float(info["x_velocity"]) - control_cost(action, CHEETAH_CTRL_WEIGHT)


def ant_direction_reward(task: np.ndarray, action: np.ndarray, info: dict) -> float:
    """``direction * v - 0.005 * sum(a**2) - 0.0005 * sum(clip(cfrc_ext, -1, 1)**2) + 0.05``.

    The contact term is gymnasium's ``info["reward_contact"]``, with its weight and clipping
    range pinned to the paper's by :attr:`AntDirection.env_kwargs`.
    """
    return (
        float(task[0]) * float(info["x_velocity"])
        - control_cost(action, ANT_CTRL_WEIGHT)
        + float(info["reward_contact"])
        + ANT_SURVIVE_REWARD
    )


# ---------------------------------------------------------------------------- simulators


@dataclass(frozen=True)
class _Spec:
    """What a process needs to build one family's simulators (picklable for spawned workers)."""

    env_id: str
    env_kwargs: tuple[tuple[str, object], ...]

    def create(self):
        import gymnasium
        import mujoco

        with _known_mujoco_warnings_silenced(mujoco):
            env = gymnasium.make(self.env_id, disable_env_checker=True, **dict(self.env_kwargs))
        # The bare MujocoEnv: gymnasium.make's TimeLimit (1000 steps) and order-enforcing
        # wrappers are redundant here (the sampler cuts episodes at the family's horizon)
        # and add their own Python work to every step.
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


def _close_pools(pools: list) -> None:
    for pool in pools:
        pool.close()
    pools.clear()


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
    """Shared machinery: a cache of simulator pools (:class:`~innerloop.rl.envs.vector.VectorEnv`),
    seeding, clipping, termination, and the reward read from each step's ``info``.

    Args:
        horizon: steps per episode (200 in the MAML paper).
        workers: 1 steps the simulators in this process; ``N > 1`` in ``N`` worker processes.
        start_method: ``multiprocessing`` start method of the workers (default: fork where
            available, else spawn; see :class:`~innerloop.rl.envs.vector.VectorEnv`).
    """

    env_id: str
    # gymnasium's default, stated so the observation layout cannot drift with a new release:
    # the torso's x (and, for the ant, y) position is left out of the observation.
    env_kwargs: ClassVar[dict[str, object]] = {"exclude_current_positions_from_observation": True}
    task_dim = 1
    reward: Callable[[np.ndarray, np.ndarray, dict], float]  # one of the reward functions above

    def __init__(self, horizon: int = 200, workers: int = 1, start_method: str | None = None) -> None:
        _require_gymnasium(self.name)
        if horizon < 1 or workers < 1:
            raise ConfigError(f"{self.name}: horizon and workers must be >= 1, got {horizon} and {workers}")
        self.horizon, self.workers, self.start_method = horizon, workers, start_method
        self.spec = _Spec(self.env_id, tuple(sorted(self.env_kwargs.items())))
        probe = VectorEnv(self.spec.create, 1)
        self.observation_dim = probe.envs[0].observation_space.shape[0]
        space = probe.envs[0].action_space
        self.action_dim = space.shape[0]
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        if workers > 1:
            probe.close()
        # Idle simulator pools, reused by make(); a pool is leased to one environment at a
        # time, so environments alive together never share simulators.
        self._idle: list[VectorEnv] = [probe] if workers == 1 else []
        self._finalizer = weakref.finalize(self, _close_pools, self._idle)

    def make(self, tasks: torch.Tensor, episodes: int, seed: int, task_ids=None) -> BatchedEnv:
        pool = self._idle.pop() if self._idle else VectorEnv(self.spec.create, 0, self.workers, self.start_method)
        pool.resize(len(tasks) * episodes)
        return _MujocoBatchedEnv(self, pool, tasks, episodes, seed, range(len(tasks)) if task_ids is None else task_ids)

    def _release(self, pool: VectorEnv) -> None:
        self._idle.append(pool)

    def close(self) -> None:
        """Close every cached simulator and worker process (make() starts afresh after this)."""
        _close_pools(self._idle)

    def action_bounds(self) -> tuple[float, float]:
        return float(self.low.min()), float(self.high.max())


class _MujocoBatchedEnv(BatchedEnv):
    """``T x E`` simulators of a family; a terminated episode is frozen until :meth:`reset`."""

    def __init__(
        self, family: _MujocoFamily, pool: VectorEnv, tasks: torch.Tensor, episodes: int, seed: int, task_ids
    ) -> None:
        self.family = family
        self.pool: VectorEnv | None = pool
        self.num_tasks, self.episodes = len(tasks), episodes
        # every task row repeated for its episodes: simulator t * E + e plays task t
        self.tasks = np.repeat(tasks.detach().cpu().double().numpy().reshape(len(tasks), -1), episodes, axis=0)
        # Simulator (t, e) always starts from the same seed: a rollout is a function of `seed` and the task's id.
        self.seeds = [derive_seed(seed, int(t), e) for t in task_ids for e in range(episodes)]
        self.observations: np.ndarray | None = None
        self.alive = np.ones(self.num_tasks * episodes, dtype=bool)
        # close() hands the simulators back; so does garbage collection of an unclosed env
        self._release = weakref.finalize(self, family._release, pool)

    def reset(self) -> torch.Tensor:
        pool = self._open_pool()
        self.observations = pool.reset(self.seeds)[0].astype(np.float32)
        self.alive[:] = True
        return self._shaped(self.observations).clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool = self._open_pool()
        if self.observations is None:
            raise RuntimeError("step() before reset()")
        expected = (self.num_tasks, self.episodes, self.family.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions of shape {tuple(actions.shape)}, expected {expected}")
        controls = actions.detach().cpu().double().numpy().reshape(len(self.seeds), -1)
        controls = np.clip(controls, self.family.low, self.family.high)
        rewards = np.zeros(len(self.seeds))  # frozen episodes earn 0; gymnasium's own reward is not used
        live = np.flatnonzero(self.alive)
        if len(live):
            out = pool.step(controls[live], live)
            self.observations[live] = out.observations
            reward = self.family.reward
            rewards[live] = [reward(self.tasks[i], controls[i], info) for i, info in zip(live, out.infos)]
            self.alive[live[out.terminated]] = False
        return (self._shaped(self.observations).clone(), self._shaped(rewards).float(), self._shaped(~self.alive))

    def _shaped(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).reshape(self.num_tasks, self.episodes, *array.shape[1:])

    def _open_pool(self) -> VectorEnv:
        if self.pool is None:
            raise RuntimeError("environment used after close()")
        return self.pool

    def close(self) -> None:
        """Hand the simulators back to the family for the next make() (they stay alive)."""
        self._release()  # runs at most once
        self.pool = None


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
    # the contact term of the reward is gymnasium's info["reward_contact"]: weight and range pinned to the paper's
    env_kwargs: ClassVar[dict[str, object]] = {
        **_MujocoFamily.env_kwargs,
        "contact_cost_weight": ANT_CONTACT_WEIGHT,
        "contact_force_range": (-1.0, 1.0),
    }
    reward = staticmethod(ant_direction_reward)


__all__ = [
    "AntDirection",
    "HalfCheetahDirection",
    "HalfCheetahVelocity",
    "ant_direction_reward",
    "control_cost",
    "halfcheetah_direction_reward",
    "halfcheetah_velocity_reward",
]
