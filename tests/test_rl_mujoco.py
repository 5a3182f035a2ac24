"""MuJoCo task families (innerloop.rl.envs.mujoco): rewards, seeding, termination, install errors.

Rewards are checked against the MAML paper's formulas evaluated on a plain gymnasium
environment that replays the same seed and actions, so the wrapper's observations are
checked to be gymnasium's and its rewards to be the paper's, independently of its code.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from shared_data import needs  # tests/shared_data.py

from innerloop.errors import ConfigError
from innerloop.rl.envs import make_family
from innerloop.tasks.seeding import derive_seed

NAMES = ["halfcheetah-vel", "halfcheetah-dir", "ant-dir"]
ENV_ID = {"halfcheetah-vel": "HalfCheetah-v5", "halfcheetah-dir": "HalfCheetah-v5", "ant-dir": "Ant-v5"}
DIMS = {"halfcheetah-vel": (17, 6), "halfcheetah-dir": (17, 6), "ant-dir": (105, 8)}
# All but the missing-gymnasium tests need the `rl` extra (part of `dev`).
needs_mujoco = needs(
    find_spec("gymnasium") is not None and find_spec("mujoco") is not None,
    "gymnasium + mujoco (pip install 'innerloop[rl]')",
)


@pytest.fixture(scope="module")
def families():
    built = {name: make_family(name) for name in NAMES}
    yield built
    for family in built.values():
        family.close()


def paper_reward(name: str, task: float, action: np.ndarray, info: dict) -> float:
    """The MAML paper's rewards (rllab / pytorch-maml-rl), from a plain gymnasium step's info."""
    v = info["x_velocity"]
    if name == "halfcheetah-vel":
        return -abs(v - task) - 0.5 * 0.1 * np.sum(action**2)
    if name == "halfcheetah-dir":
        return task * v - 0.5 * 0.1 * np.sum(action**2)
    # gymnasium's default contact cost, 5e-4 * sum(clip(cfrc_ext, -1, 1)**2), is rllab's 0.5 * 1e-3 one
    return task * v - 0.5 * 1e-2 * np.sum(action**2) + info["reward_contact"] + 0.05


def play(family, tasks, episodes, seed, actions):
    """Observations [H+1, T, E, obs], rewards [H, T, E], terminated [H, T, E] of one rollout."""
    env = family.make(torch.tensor(tasks, dtype=torch.float64), episodes, seed)
    try:
        observations, rewards, terminated = [env.reset()], [], []
        for action in actions:
            obs, reward, done = env.step(torch.as_tensor(action))
            observations.append(obs), rewards.append(reward), terminated.append(done)
    finally:
        env.close()
    return torch.stack(observations), torch.stack(rewards), torch.stack(terminated)


def random_actions(family, steps, num_tasks, episodes, seed=0, scale=1.5):
    """Uniform actions in [-scale, scale]: beyond the [-1, 1] action space, to exercise clipping."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-scale, scale, (steps, num_tasks, episodes, family.action_dim))


@needs_mujoco
@pytest.mark.parametrize("name", NAMES)
def test_observations_are_gymnasiums_and_rewards_the_papers(families, name):
    import gymnasium
    import mujoco

    from innerloop.rl.envs.mujoco import _known_mujoco_warnings_silenced

    family = families[name]
    tasks = [[0.3], [1.7]] if name == "halfcheetah-vel" else [[1.0], [-1.0]]
    episodes, seed, steps = 2, 11, 25
    actions = random_actions(family, steps, len(tasks), episodes)
    observations, rewards, terminated = play(family, tasks, episodes, seed, actions)
    for t, (task,) in enumerate(tasks):
        for e in range(episodes):
            with _known_mujoco_warnings_silenced(mujoco):  # else MuJoCo 4 logs to ./MUJOCO_LOG.TXT
                plain = gymnasium.make(ENV_ID[name], disable_env_checker=True)
            obs, _ = plain.reset(seed=derive_seed(seed, t, e))
            np.testing.assert_allclose(observations[0, t, e], obs, rtol=1e-6, atol=1e-6)
            for h in range(steps):
                action = np.clip(actions[h, t, e], -1, 1)
                obs, _, done, _, info = plain.step(action)
                np.testing.assert_allclose(observations[h + 1, t, e], obs, rtol=1e-5, atol=1e-5)
                expected = paper_reward(name, task, action, info)
                assert float(rewards[h, t, e]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
                assert bool(terminated[h, t, e]) == done
                if done:
                    break
            plain.close()


@needs_mujoco
@pytest.mark.parametrize("name", ["halfcheetah-dir", "ant-dir"])
def test_direction_flips_the_sign_of_the_forward_reward(families, name):
    family = families[name]
    actions = random_actions(family, 15, 1, 2, scale=1.0)
    # one task per make(), same seed: the three runs replay identical trajectories
    runs = {d: play(family, [[d]], 2, seed=5, actions=actions) for d in (1.0, -1.0, 0.0)}
    torch.testing.assert_close(runs[1.0][0], runs[-1.0][0])
    forward = runs[1.0][1] - runs[0.0][1]  # d * v: the direction-dependent part
    backward = runs[-1.0][1] - runs[0.0][1]
    assert forward.abs().max() > 1e-2
    torch.testing.assert_close(backward, -forward, rtol=1e-4, atol=1e-4)


@needs_mujoco
@pytest.mark.parametrize("name", NAMES)
def test_task_sampling_is_seeded_and_in_range(families, name):
    family = families[name]

    def draw(seed):
        return family.sample_tasks(400, torch.Generator().manual_seed(seed))

    tasks = draw(0)
    assert tasks.shape == (400, 1) and tasks.dtype == torch.float64
    torch.testing.assert_close(tasks, draw(0))
    assert not torch.equal(tasks, draw(1))
    torch.testing.assert_close(family.test_tasks(10, seed=3), family.test_tasks(10, seed=3))
    if name == "halfcheetah-vel":
        assert tasks.min() >= 0 and tasks.max() <= 2
        assert 0.9 < tasks.mean() < 1.1 and tasks.min() < 0.1 and tasks.max() > 1.9
    else:
        assert set(tasks.flatten().tolist()) == {-1.0, 1.0}
        assert 0.4 < (tasks > 0).double().mean() < 0.6


@needs_mujoco
@pytest.mark.parametrize("name", ["halfcheetah-vel", "ant-dir"])
def test_same_seed_replays_and_other_seed_differs(families, name):
    family = families[name]
    actions = random_actions(family, 10, 2, 2)
    first, again, other = (play(family, [[1.0], [1.0]], 2, seed, actions) for seed in (7, 7, 8))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0][0], other[0][0])
    # episodes of one task start from different states too
    assert not torch.equal(first[0][0, 0, 0], first[0][0, 0, 1])


@needs_mujoco
def test_worker_processes_give_the_same_rollouts():
    in_process, pooled = make_family("ant-dir", workers=1), make_family("ant-dir", workers=2)
    try:
        actions = random_actions(in_process, 10, 3, 1)
        for a, b in zip(
            play(in_process, [[1.0], [-1.0], [1.0]], 1, 4, actions), play(pooled, [[1.0], [-1.0], [1.0]], 1, 4, actions)
        ):
            assert torch.equal(a, b)
    finally:
        in_process.close(), pooled.close()


@needs_mujoco
def test_closing_a_family_stops_its_worker_processes():
    family = make_family("halfcheetah-dir", workers=2)
    env = family.make(torch.tensor([[1.0], [-1.0]]), 1, seed=0)
    processes = env.pool.processes
    env.reset()
    env.close()  # the pool goes back to the family, its workers still alive for the next make()
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    family.close()
    assert not any(p.is_alive() for p in processes)


@needs_mujoco
def test_terminated_ant_stays_terminated_with_zero_reward(families):
    family = families["ant-dir"]
    env = family.make(torch.tensor([[1.0], [-1.0]]), 2, seed=0)
    try:
        env.reset()
        # Lift simulator (1, 0) to a torso height of 1.5, above gymnasium's healthy range [0.2, 1.0].
        lifted = env.pool.envs[2].unwrapped
        qpos, qvel = lifted.data.qpos.copy(), lifted.data.qvel.copy()
        qpos[2] = 1.5
        lifted.set_state(qpos, qvel)
        zero = torch.zeros(2, 2, family.action_dim)
        obs, reward, terminated = env.step(zero)
        assert terminated.tolist() == [[False, False], [True, False]]
        frozen_obs, frozen_time = obs[1, 0].clone(), lifted.data.time
        for _ in range(5):
            obs, reward, terminated = env.step(torch.ones(2, 2, family.action_dim))
            assert bool(terminated[1, 0]) and float(reward[1, 0]) == 0.0
            assert torch.equal(obs[1, 0], frozen_obs)
            assert lifted.data.time == frozen_time  # not stepped again
            assert not terminated[0].any() and (reward[0] != 0).all()
        env.reset()
        _, _, terminated = env.step(zero)
        assert not terminated.any()
    finally:
        env.close()


@needs_mujoco
@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_bounds(families, name):
    family = families[name]
    obs_dim, act_dim = DIMS[name]
    assert (family.observation_dim, family.action_dim, family.task_dim, family.horizon) == (obs_dim, act_dim, 1, 200)
    assert family.action_bounds() == (-1.0, 1.0) and not family.discrete
    env = family.make(family.sample_tasks(3, torch.Generator().manual_seed(0)), 2, seed=0)
    try:
        obs = env.reset()
        assert obs.shape == (3, 2, obs_dim) and obs.dtype == torch.float32
        for dtype in (torch.float32, torch.float64):
            obs, reward, terminated = env.step(torch.zeros(3, 2, act_dim, dtype=dtype))
            assert obs.shape == (3, 2, obs_dim) and obs.dtype == torch.float32
            assert reward.shape == (3, 2) and reward.dtype == torch.float32
            assert terminated.shape == (3, 2) and terminated.dtype == torch.bool
    finally:
        env.close()
    expected = {"halfcheetah-vel": "goal velocity 1.00", "halfcheetah-dir": "forward", "ant-dir": "forward"}[name]
    assert family.describe_task(torch.tensor([1.0])) == expected


@needs_mujoco
def test_simulators_are_reused_but_never_shared(families):
    family = families["halfcheetah-dir"]
    tasks = torch.tensor([[1.0]])
    first = family.make(tasks, 3, seed=0)
    second = family.make(tasks, 3, seed=0)  # both open: each needs its own simulators
    assert not set(map(id, first.pool.envs)) & set(map(id, second.pool.envs))
    pools = [first.pool, second.pool]
    first.close(), second.close()
    with pytest.raises(RuntimeError):
        first.reset()
    idle = len(family._idle)
    third = family.make(tasks, 2, seed=0)  # fewer simulators than cached: no new ones
    assert any(third.pool is pool for pool in pools) and len(family._idle) == idle - 1
    third.close()
    assert len(family._idle) == idle


def test_missing_gymnasium_is_a_config_error_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # `import gymnasium` now raises ImportError
    for name in NAMES:
        with pytest.raises(ConfigError, match=r"pip install 'innerloop\[rl\]'.*pip install 'gymnasium\[mujoco\]>=1.0'"):
            make_family(name)


def test_task_families_import_without_gymnasium():
    code = (
        "import sys; sys.modules['gymnasium'] = sys.modules['mujoco'] = None\n"
        "import innerloop.rl.envs, innerloop.rl.envs.mujoco\n"
        "innerloop.rl.envs.make_family('nav2d')\n"
        "try:\n    innerloop.rl.envs.make_family('ant-dir')\n"
        "except innerloop.errors.ConfigError as e:\n    print('ConfigError', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "ConfigError" in result.stdout and "pip install 'innerloop[rl]'" in result.stdout
