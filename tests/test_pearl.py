"""PEARL (Rakelly et al. 2019): the context posterior, SAC's squashed Gaussian, replay buffers, training, resume."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution, kl_divergence
from torch.distributions.transforms import TanhTransform

from innerloop.algorithms.step import Shard
from innerloop.errors import ConfigError
from innerloop.rl.context import ContextEncoder, GaussianFactors, kl_to_unit, product_of_gaussians
from innerloop.rl.envs import Navigation2D
from innerloop.rl.pearl import PEARL
from innerloop.rl.replay import TaskReplay
from innerloop.rl.sac import TanhGaussianPolicy
from innerloop.training.config import load_config
from innerloop.training.trainer import Trainer

TINY = [
    "algorithm.train_tasks=6",
    "algorithm.encoder_hidden=[32,32]",
    "algorithm.tasks_per_iteration=2",
    "algorithm.initial_episodes=2",
    "algorithm.prior_episodes=1",
    "algorithm.posterior_episodes=1",
    "algorithm.batch_size=64",
    "algorithm.context_batch_size=32",
    "algorithm.buffer_size=2000",
    "model.hidden=[32,32]",
    "train.meta_batch_size=4",
    "train.progress=false",
    "rl.horizon=30",
]


def test_posterior_is_permutation_invariant_in_the_context():
    torch.manual_seed(0)
    encoder = ContextEncoder(5, latent_dim=3, hidden=(16,))
    context = torch.randn(4, 20, 5)
    mean, variance = encoder.posterior(context)
    order = torch.randperm(20)
    permuted_mean, permuted_variance = encoder.posterior(context[:, order])
    torch.testing.assert_close(permuted_mean, mean)
    torch.testing.assert_close(permuted_variance, variance)
    other = encoder.posterior(context[:, :19])[0]  # the posterior does depend on the context's content
    assert not torch.allclose(other, mean)


def test_product_of_gaussians_is_the_closed_form():
    torch.manual_seed(1)
    means, variances = torch.randn(3, 7, 4, dtype=torch.float64), torch.rand(3, 7, 4, dtype=torch.float64) + 0.1
    mean, variance = product_of_gaussians(means, variances)
    precisions = 1 / variances
    torch.testing.assert_close(variance, 1 / precisions.sum(1))
    torch.testing.assert_close(mean, (precisions * means).sum(1) / precisions.sum(1))
    # masked transitions are left out; products of disjoint parts multiply; no transition at all is the prior
    mask = torch.tensor([1.0] * 4 + [0.0] * 3, dtype=torch.float64).expand(3, 7)
    torch.testing.assert_close(
        product_of_gaussians(means, variances, mask)[0], product_of_gaussians(means[:, :4], variances[:, :4])[0]
    )
    parts = GaussianFactors.of(means[:, :2], variances[:, :2]) * GaussianFactors.of(means[:, 2:], variances[:, 2:])
    torch.testing.assert_close(parts.gaussian()[1], variance)
    prior_mean, prior_variance = product_of_gaussians(means, variances, torch.zeros(3, 7, dtype=torch.float64))
    assert prior_mean.abs().max() == 0 and (prior_variance == 1).all()


def test_kl_to_the_unit_prior_matches_torch_distributions():
    torch.manual_seed(2)
    mean, variance = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) + 0.05
    expected = kl_divergence(Normal(mean, variance.sqrt()), Normal(torch.zeros(()), torch.ones(()))).sum(-1)
    torch.testing.assert_close(kl_to_unit(mean, variance), expected)


def test_tanh_gaussian_log_probability_matches_torch_distributions():
    torch.manual_seed(3)
    policy = TanhGaussianPolicy(4, 2, hidden=(8,)).double()
    inputs, noise = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    action, log_prob, mean, log_std = policy.sample(inputs, noise)
    squashed = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    torch.testing.assert_close(log_prob, squashed.log_prob(action).sum(-1), rtol=1e-6, atol=1e-6)


def test_replay_rings_and_samples_from_a_seed():
    replay = TaskReplay(2, 4, {"obs": 1, "reward": 1})
    replay.add(0, torch.arange(12.0).reshape(6, 2))  # six transitions into four slots: the newest four stay
    assert replay.sizes().tolist() == [4, 0]
    assert sorted(replay.data[0, :, 0].tolist()) == [4.0, 6.0, 8.0, 10.0]
    first = replay.sample([0, 0], 5, torch.Generator().manual_seed(0))
    assert torch.equal(first, replay.sample([0, 0], 5, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="empty"):
        replay.sample([1], 5, torch.Generator())


def _posterior_returns(learner, goals) -> torch.Tensor:
    results, _ = learner.returns_after(goals, [0, 1], 2, None, seed=11, task_ids=range(len(goals)))
    return results[1]["return"].mean()


def test_short_pearl_run_on_nav2d_beats_its_untrained_self():
    # Goals in one corner of the plane: an untrained policy (tanh(mean) near 0) stays near the origin, a trained one
    # walks there; the test goals are other goals of the same corner. 150 gradient steps.
    torch.manual_seed(0)
    corner = torch.tensor([0.35, 0.35], dtype=torch.float64)
    goals = corner + 0.1 * (torch.rand(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5)
    learner = PEARL(
        Navigation2D(horizon=20),
        goals[:4],
        latent_dim=2,
        hidden=(32, 32),
        encoder_hidden=(32,),
        meta_batch=2,
        tasks_per_iteration=2,
        initial_episodes=2,
        prior_episodes=1,
        posterior_episodes=1,
        gradient_steps=50,
        batch_size=64,
        context_batch_size=20,
        buffer_size=1000,
        gamma=0.9,
        learn_temperature=True,
        temperature=0.1,
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2, foreach=True)
    before = _posterior_returns(learner, goals[4:])
    for iteration in range(3):
        learner.meta_step(None, optimizer, Shard(seed=iteration))
    after = _posterior_returns(learner, goals[4:])
    assert after > before + 2, (before, after)


def test_resume_restores_the_replay_buffers_and_equals_an_uninterrupted_run(tmp_path):
    overrides = [*TINY, "algorithm.gradient_steps=3", "algorithm.train_tasks=4", "algorithm.initial_episodes=1"]
    overrides += ["train.checkpoint_every=1", "train.val_every=100", "train.val_tasks=2", "train.val_train_tasks=0"]
    whole = Trainer(load_config("pearl-nav2d", [*overrides, "train.iterations=2", f"out_dir={tmp_path}/whole"]))
    whole.fit()
    first = Trainer(load_config("pearl-nav2d", [*overrides, "train.iterations=1", f"out_dir={tmp_path}/cut"]))
    first.fit()
    resumed = Trainer(
        load_config("pearl-nav2d", [*overrides, "train.iterations=2", f"out_dir={tmp_path}/cut"]), resume=True
    )
    assert int(resumed.learner.replay.count.sum()) > 0  # the buffers came back with the checkpoint
    resumed.fit()
    theirs = resumed.learner.state_dict()
    for name, value in whole.learner.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    ours, resumed_state = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert ours and ours.keys() == resumed_state.keys()  # Adam's moments came back with the checkpoint too
    assert all(torch.equal(ours[i][k], resumed_state[i][k]) for i in ours for k in ours[i])


@pytest.mark.parametrize(
    "override, words",
    [
        ("algorithm.temperature=0", "algorithm.temperature must be > 0 for pearl, got 0"),
        ("algorithm.tau=1.5", "algorithm.tau must be in (0, 1] for pearl, got 1.5"),
        ("algorithm.kl_weight=-0.1", "algorithm.kl_weight must be >= 0 for pearl"),
    ],
)
def test_sac_constants_out_of_range_are_one_config_line(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("pearl-nav2d", [override])
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("constant, value", [("temperature", 0.0), ("tau", 0.0), ("reward_scale", -1.0)])
def test_the_python_constructor_refuses_the_same_constants(constant, value):
    family = Navigation2D()
    with pytest.raises(ConfigError, match=f"{constant} must be"):
        PEARL(family, family.sample_tasks(4, torch.Generator().manual_seed(0)), **{constant: value})
