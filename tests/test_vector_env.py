"""The vectorised environment (innerloop.rl.envs.vector): info dicts pass through, worker processes
give the in-process results bit for bit, environments are reused, failures and close() are clean."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import needs  # tests/shared_data.py

from innerloop.errors import ConfigError
from innerloop.rl.envs.vector import VectorEnv

try:
    import gymnasium
    from gymnasium import spaces
except ImportError:  # the tests then fail (or skip under INNERLOOP_ALLOW_MISSING=1) through `needs`
    gymnasium = None

pytestmark = needs(gymnasium is not None, "gymnasium (pip install 'innerloop[rl]')")
BUILT: list[int] = []  # how many environments this process has built


class Drift(gymnasium.Env if gymnasium else object):  # type: ignore[misc]
    """A 2-D point pushed by the action plus seeded noise; success within 0.5 of the origin,
    terminated beyond 3, truncated after 8 steps. Its info carries what a task family would read."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float64)
        self.fail_at, self.position, self.steps = fail_at, np.zeros(2), 0
        BUILT.append(1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.steps = self.np_random.normal(size=2), 0
        return self.position.copy(), {"start": self.position.copy()}

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise ValueError("Drift exploded on purpose")
        self.position = self.position + action + 0.1 * self.np_random.normal(size=2)
        distance = float(np.linalg.norm(self.position))
        info = {"success": distance < 0.5, "distance": distance, "steps": self.steps}
        return self.position.copy(), -distance, distance > 3.0, self.steps >= 8, info


def rollout(envs: VectorEnv, seeds, steps: int = 10, seed: int = 0):
    """The reset's output and every step's, stepping a random subset of the environments each time."""
    rng = np.random.default_rng(seed)
    reset = envs.reset(seeds)
    out = []
    for _ in range(steps):
        indices = np.flatnonzero(rng.random(envs.num_envs) < 0.7)
        out.append(envs.step(rng.uniform(-1, 1, (len(indices), 2)), indices))
    return reset, out


def test_step_returns_each_stepped_environments_info_in_process_and_in_workers():
    for workers in (1, 2):
        with VectorEnv(Drift, 3, workers=workers) as envs:
            observations, infos = envs.reset([5, 6, 7])
            assert observations.shape == (3, 2) and [set(i) for i in infos] == [{"start"}] * 3
            np.testing.assert_array_equal(np.stack([i["start"] for i in infos]), observations)
            out = envs.step(np.zeros((2, 2)), [0, 2])
            assert out.observations.shape == (2, 2) and out.rewards.dtype == np.float64
            assert out.terminated.dtype == bool and out.truncated.dtype == bool and len(out.infos) == 2
            for info, observation, reward in zip(out.infos, out.observations, out.rewards):
                assert set(info) == {"success", "distance", "steps"} and info["steps"] == 1
                assert info["distance"] == pytest.approx(np.linalg.norm(observation)) == -reward
                assert info["success"] == (info["distance"] < 0.5)
            out = envs.step(np.zeros((3, 2)))  # default: all; environment 1 takes its first step now
            assert [info["steps"] for info in out.infos] == [2, 1, 2]


def test_two_workers_give_the_in_process_results_bit_for_bit():
    seeds = [11, 12, 13, 14, 15]
    with VectorEnv(Drift, 5) as local, VectorEnv(Drift, 5, workers=2) as pooled:
        (obs_a, infos_a), steps_a = rollout(local, seeds, 12)
        (obs_b, infos_b), steps_b = rollout(pooled, seeds, 12)
        assert np.array_equal(obs_a, obs_b)
        assert all(np.array_equal(x["start"], y["start"]) for x, y in zip(infos_a, infos_b, strict=True))
        for a, b in zip(steps_a, steps_b, strict=True):
            for field, x, y in zip(a._fields, a, b):
                if field == "infos":
                    assert x == y
                else:
                    assert x.dtype == y.dtype and np.array_equal(x, y), field
        flags = np.concatenate([np.concatenate([s.terminated, s.truncated]) for s in steps_a])
        assert flags.any() and not flags.all()  # the rollout exercised both outcomes


def test_resize_reuses_environments_and_reset_is_seeded():
    BUILT.clear()
    with VectorEnv(Drift, 2) as envs:
        first = envs.reset([1, 2])[0]
        envs.resize(4)
        assert len(BUILT) == 4 and envs.num_envs == 4
        envs.resize(1)
        envs.resize(3)  # the environments built before are used again
        assert len(BUILT) == 4 and len(envs.envs) == 3
        np.testing.assert_array_equal(envs.reset([1, 2, 3])[0][:2], first)
        with pytest.raises(ValueError, match="2 seeds for 3 environments"):
            envs.reset([1, 2])
        with pytest.raises(ValueError, match="increasing"):
            envs.step(np.zeros((2, 2)), [2, 0])


def test_a_failing_worker_is_raised_in_the_parent_with_its_traceback():
    with VectorEnv(lambda: Drift(fail_at=2), 2, workers=2) as envs:
        envs.reset([0, 1])
        envs.step(np.zeros((2, 2)))
        with pytest.raises(RuntimeError, match=r"worker failed in 'step'(.|\n)*Drift exploded on purpose"):
            envs.step(np.zeros((1, 2)), [1])


def test_close_stops_the_worker_processes_and_the_environments():
    envs = VectorEnv(Drift, 4, workers=2)
    processes = envs.processes
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    envs.reset([0, 1, 2, 3])
    envs.close()
    assert not any(p.is_alive() for p in processes) and envs.processes == []
    envs.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="after close"):
        envs.reset([0, 1, 2, 3])
    local = VectorEnv(Drift, 1)
    local.close()
    with pytest.raises(RuntimeError, match="after close"):
        local.step(np.zeros((1, 2)))


def test_worker_processes_stop_when_the_vector_env_is_garbage_collected():
    envs = VectorEnv(Drift, 2, workers=2)
    processes = envs.processes
    del envs
    assert not any(p.is_alive() for p in processes)


def test_bad_arguments_are_one_config_error():
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        VectorEnv(Drift, 1, workers=0)
