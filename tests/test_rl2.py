"""RL²: the recurrent policy's trials, PPO's clipped objective, learning on 2D navigation, exact resume."""

import pytest
import torch
from cli_runner import cli

from innerloop.errors import ConfigError
from innerloop.rl import RL2, RecurrentPolicy, make_family
from innerloop.rl.ppo import clipped_surrogate, normalize
from innerloop.rl.recurrent import compact, play_trials
from innerloop.training.config import load_config


def small_learner(horizon=6, tolerance=0.01, hidden=16, **kwargs):
    torch.manual_seed(0)
    family = make_family("nav2d", horizon=horizon, tolerance=tolerance)
    return RL2(RecurrentPolicy(2, 2, hidden_size=hidden), family, **kwargs)


def test_hidden_state_persists_within_a_trial_and_resets_between_trials():
    """Every episode starts at the origin: a trial's first step acts as every other trial's first step (fresh
    state), while the next episode's first step, at the same observation, acts on what the trial has seen."""
    learner = small_learner(episodes_per_trial=3, trials=2, minibatches=1)
    tasks = learner.family.sample_tasks(3, torch.Generator().manual_seed(1))
    first, second = learner.sample(tasks, seed=0), learner.sample(tasks, seed=1)
    for draw in (first, second):
        assert torch.equal(draw.episodes[1].observations[:, :, 0], draw.episodes[0].observations[:, :, 0])
    start = first.outputs[:, :, 0, 0]  # [T, N, out]: episode 0, step 0
    assert torch.equal(second.outputs[:, :, 0, 0], start)  # reset between trials (calls, seeds) ...
    assert torch.equal(start[:, 1], start[:, 0])  # ... and between parallel trials
    assert (first.outputs[:, :, 1, 0] - start).abs().amax(-1).min() > 1e-4  # not within one
    # The carried state is the GRU's over the whole trial: replaying it in one sequence gives the rollout's outputs,
    # and replaying the second episode alone (from a zero state, same previous action / reward / done) does not.
    data = compact(first)
    replay, _ = learner.sequences(data)
    H = learner.family.horizon
    assert torch.allclose(replay, first.outputs.flatten(2, 3), atol=1e-6)
    alone = {k: v[:, :, H : 2 * H] for k, v in data.items()}
    replay_alone, _ = learner.sequences(alone)
    assert (replay_alone[:, :, 0] - first.outputs[:, :, 1, 0]).abs().amax(-1).min() > 1e-4


def test_a_terminated_episode_leaves_the_trial_state_as_it_was():
    """With a wide goal tolerance episodes end early; the steps after the end do not exist for the policy:
    the compacted trial (real steps only) replays to exactly the outputs the rollout acted on."""
    learner = small_learner(horizon=12, tolerance=0.35, episodes_per_trial=3, trials=3, minibatches=1)
    tasks = learner.family.sample_tasks(6, torch.Generator().manual_seed(2)) * 0.5
    draw = learner.sample(tasks, seed=3)
    mask = draw.stacked("mask")
    assert (mask == 0).any() and (mask[..., 0] == 1).all()  # some episodes ended early; every one started
    data = compact(draw)
    real = data["mask"].bool()
    replay, _ = learner.sequences(data)
    acted = draw.outputs.flatten(2, 3)[mask.flatten(2, 3).bool()]
    assert torch.allclose(replay[real], acted, atol=1e-6)
    assert torch.equal(data["mask"].sum(-1), mask.flatten(2, 3).sum(-1))
    # the first step of a later episode sees done = 1 and the reward of the previous episode's last real step
    k1 = data["mask"][0, 0, : int(mask[0, 0, 0].sum()) + 1]
    assert data["prev_dones"][0, 0, len(k1) - 1] == 1 and data["prev_dones"][0, 0, : len(k1) - 1].sum() == 0


def test_ppo_clipped_objective_against_a_hand_computation():
    old = torch.zeros(4)
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7])
    log_prob = ratio.log().requires_grad_()
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    value = clipped_surrogate(log_prob, old, advantages, clip=0.2)
    # min(r A, clip(r, 0.8, 1.2) A): 1.5 -> 1.2 (clipped), 0.5 -> 0.5, 1.1 -> -1.1, 0.7 -> -0.8 (clipped)
    assert torch.allclose(value, torch.tensor([1.2, 0.5, -1.1, -0.8]))
    value.sum().backward()
    # d(r A)/d log pi = r A where unclipped, 0 where the clipped term is the minimum
    assert torch.allclose(log_prob.grad, torch.tensor([0.0, 0.5, -1.1, 0.0]))
    # advantages normalised over the whole batch, also when its shards' moments are summed over processes
    a, m = torch.randn(2, 3, 5), (torch.rand(2, 3, 5) > 0.3).float()
    whole = normalize(a, m)
    real = whole[m.bool()]
    assert abs(float(real.mean())) < 1e-5 and abs(float(real.std(unbiased=False)) - 1) < 1e-4
    moments = lambda t, mm: torch.stack([mm.sum(), (t * mm).sum(), (t.pow(2) * mm).sum()]).double()  # noqa: E731
    other = moments(a[1], m[1])
    assert torch.allclose(normalize(a[0], m[0], lambda x: x + other), whole[0], atol=1e-6)


def test_options_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"minibatches=3 must lie in 1\.\.algorithm\.trials=2"):
        small_learner(trials=2, minibatches=3)
    with pytest.raises(ConfigError, match="RecurrentPolicy"):
        RL2(torch.nn.Linear(2, 2), make_family("nav2d"))
    with pytest.raises(ConfigError, match=r"^algorithm\.clip must be > 0 for rl2, got -0\.2$"):
        load_config("rl2-nav2d", ["algorithm.clip=-0.2"])  # a negative clip would turn PPO's clamp around
    with pytest.raises(ConfigError, match=r"^algorithm\.entropy_coef must be >= 0 for rl2, got -1"):
        load_config("rl2-nav2d", ["algorithm.entropy_coef=-1"])


def test_a_short_rl2_run_on_navigation_beats_its_untrained_self(tmp_path):
    """Seeded: 15 PPO iterations of 10 tasks x 4 trials x 2 episodes of 20 steps; the same 40 test tasks
    and rollout seeds before and after, so the per-task differences of the trial's return are paired."""
    from innerloop.training.trainer import Trainer

    overrides = [
        "rl.horizon=20",
        "algorithm.hidden_size=32",
        "algorithm.epochs=4",
        "algorithm.minibatches=2",
        "train.iterations=15",
        "train.meta_batch_size=10",
        "train.meta_lr=0.01",
        "train.val_every=1000",
        "train.checkpoint_every=1000",
        "train.progress=false",
    ]
    config = load_config("rl2-nav2d", overrides, out_dir=str(tmp_path))
    trainer = Trainer(config)
    source, ids = trainer.val_tasks, range(40)
    before = trainer.learner.evaluate_tasks(source, ids, 40, [0, 1], episodes=4, seed=5)
    trainer.fit()
    after = trainer.learner.evaluate_tasks(source, ids, 40, [0, 1], episodes=4, seed=5)
    gain = sum(after[k]["return"] - before[k]["return"] for k in (0, 1))  # the trial's return, per task
    stderr = gain.std() / len(gain) ** 0.5
    assert gain.mean() > 1.0 and gain.mean() > 4 * stderr, (before, after)


def test_training_resumes_exactly(tmp_path, monkeypatch, capsys):
    small = [
        "train.iterations=4",
        "train.checkpoint_every=2",
        "train.val_every=100",
        "train.meta_batch_size=2",
        "train.val_tasks=2",
        "rl.eval_episodes=2",
        "rl.horizon=4",
        "algorithm.trials=2",
        "algorithm.minibatches=2",
        "algorithm.epochs=2",
        "algorithm.hidden_size=8",
        "train.progress=false",
    ]
    args = ["train", "--config", "rl2-nav2d", "--no-evaluate"]
    code, out, err = cli(monkeypatch, capsys, *args, "--out", tmp_path / "a", *small)
    assert code == 0, err
    half = [s if s != "train.iterations=4" else "train.iterations=2" for s in small]
    assert cli(monkeypatch, capsys, *args, "--out", tmp_path / "b", *half)[0] == 0
    code, out, err = cli(monkeypatch, capsys, *args, "--out", tmp_path / "b", "--resume", *small)
    assert code == 0 and "resuming from iteration 2" in out, err
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a/checkpoints/step-00000004/weights.safetensors")
    b = load_file(tmp_path / "b/checkpoints/step-00000004/weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    halfway = load_file(tmp_path / "b/checkpoints/step-00000002/weights.safetensors")
    assert any(not torch.equal(a[k], halfway[k]) for k in a)
    # evaluation: "step" k is episode k of a trial; step sizes do not apply and are refused in one line
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path / "a", "--tasks", "2", "--steps", "0", "--steps", "1")
    assert code == 0 and "return of each episode (steps = episodes)" in out and "step sizes" not in out, err
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path / "a", "--lrs", "0.1")
    assert code == 2 and err.count("\n") == 1 and "rl2 adapts through the episodes it acts in" in err, err


def test_play_trials_is_a_function_of_its_seed():
    learner = small_learner(trials=2, minibatches=1)
    tasks = learner.family.sample_tasks(2, torch.Generator().manual_seed(0))
    one = play_trials(learner.policy, learner.family, tasks, 2, 2, seed=7)
    two = play_trials(learner.policy, learner.family, tasks, 2, 2, seed=7, task_ids=[0, 1])
    assert torch.equal(one.outputs, two.outputs) and torch.equal(one.stacked("actions"), two.stacked("actions"))
    other = play_trials(learner.policy, learner.family, tasks, 2, 2, seed=8)
    assert not torch.equal(other.stacked("actions"), one.stacked("actions"))  # the seed is not ignored
    single = play_trials(learner.policy, learner.family, tasks[1:], 2, 2, seed=7, task_ids=[1])
    # each task its own stream, whatever the batch (equal up to the batched GRU's rounding)
    assert torch.allclose(single.stacked("actions")[0], one.stacked("actions")[1], atol=1e-5)
