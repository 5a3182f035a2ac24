"""Meta-RL: estimators against exact computations, TRPO, returns, batched vs looped, learning, resume, config errors."""

import itertools
import json
import math

import pytest
import torch
from cli_runner import cli

from innerloop.core.linalg import conjugate_gradient
from innerloop.errors import ConfigError
from innerloop.rl import MAMLTRPO, ProMP, make_family, make_policy, rollout
from innerloop.rl.estimators import ESTIMATORS
from innerloop.rl.returns import discounted_returns, gae, linear_baseline
from innerloop.rl.trpo import trpo_step
from innerloop.training.config import load_config


def small_nav(**kwargs):
    family = make_family("nav2d", horizon=kwargs.pop("horizon", 10))
    torch.manual_seed(0)
    policy = make_policy(family, hidden=(16, 16)).double()
    return family, policy


# -- estimators ---------------------------------------------------------------------------
def test_policy_gradient_matches_the_analytic_bandit_gradient():
    """A one-pull bandit: E[grad log pi(a) r] = grad sum_a pi(a) p_a, estimated from real rollouts."""
    family = make_family("bandit", arms=4, horizon=1)
    policy = make_policy(family, hidden=())
    learner = MAMLTRPO(policy, family, estimator="vpg")
    probs = torch.tensor([[0.2, 0.9, 0.4, 0.6]], dtype=torch.float64)
    theta = {n: p.detach().clone() for n, p in learner.params().items()}
    with torch.no_grad():  # a policy that is far from uniform, so the gradient is not trivial
        theta["logits.0.bias"].copy_(torch.tensor([0.5, -0.3, 0.2, -0.8]))
    episodes = rollout(family, probs, learner, theta, 200_000, seed=1)
    data = {
        "observations": episodes.observations[0],
        "actions": episodes.actions[0],
        "advantages": episodes.rewards[0],
        "mask": episodes.mask[0],
    }
    estimate = torch.autograd.grad(
        learner.inner_loss({n: p.requires_grad_() for n, p in theta.items()}, data), theta["logits.0.bias"]
    )[0]

    logits = theta["logits.0.bias"].detach().clone().requires_grad_()
    weight = theta["logits.0.weight"].detach()  # the observation is 1, so logits = weight[:, 0] + bias
    exact = -torch.autograd.grad((torch.softmax(logits + weight[:, 0], -1) * probs[0].float()).sum(), logits)[0]
    assert torch.allclose(estimate, exact, atol=4e-3), (estimate, exact)
    assert exact.abs().max() > 0.03  # a gradient worth checking (Monte Carlo error ~1e-3)


def two_step_problem():
    """A 2-step MDP: state 0, then state 1 + a_0; 2 actions; tabular logits; rewards r[s, a]."""
    torch.manual_seed(3)
    logits = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    rewards = torch.randn(3, 2, dtype=torch.float64)
    baseline = torch.randn(3, dtype=torch.float64)  # any state-dependent baseline
    return logits, rewards, baseline


def expected_estimator(name, logits, rewards, baseline):
    """E_tau[L(tau)] by enumerating the 4 trajectories, with the probabilities held constant (as sampling does)."""
    total = 0.0
    for a0, a1 in itertools.product(range(2), repeat=2):
        states = [0, 1 + a0]
        actions = [a0, a1]
        log_pi = torch.stack([torch.log_softmax(logits[s], -1)[a] for s, a in zip(states, actions)])[None]
        r = torch.tensor([[rewards[s, a] for s, a in zip(states, actions)]], dtype=torch.float64)
        advantages = discounted_returns(r, torch.ones_like(r), 1.0) - baseline[states][None]
        probability = log_pi.sum().exp().detach()
        total = total + probability * ESTIMATORS[name](log_pi, advantages, torch.ones_like(r))
    return total


def exact_objective(logits, rewards):
    """-J / H: minus the expected return, averaged over the 2 steps as the estimators are."""
    pi = torch.softmax(logits, -1)
    j = sum(pi[0, a0] * (rewards[0, a0] + (pi[1 + a0] * rewards[1 + a0]).sum()) for a0 in range(2))
    return -j / 2


def test_dice_hessian_is_exact_and_vpg_is_not():
    logits, rewards, baseline = two_step_problem()
    exact = torch.autograd.functional.hessian(lambda z: exact_objective(z, rewards), logits)
    hessians = {
        name: torch.autograd.functional.hessian(
            lambda z, name=name: expected_estimator(name, z, rewards, baseline), logits
        )
        for name in ESTIMATORS
    }
    gradients = {
        name: torch.autograd.grad(expected_estimator(name, logits, rewards, baseline), logits)[0] for name in ESTIMATORS
    }
    exact_gradient = torch.autograd.grad(exact_objective(logits, rewards), logits)[0]
    for name in ESTIMATORS:  # every estimator's first derivative is unbiased
        assert torch.allclose(gradients[name], exact_gradient, atol=1e-12), name
    assert torch.allclose(hessians["dice"], exact, atol=1e-12)
    assert (hessians["vpg"] - exact).abs().max() > 1e-2  # REINFORCE's Hessian misses the sampling terms
    assert (hessians["lvc"] - exact).abs().max() > 1e-2  # LVC trades that bias for variance


# -- TRPO ---------------------------------------------------------------------------------
def test_conjugate_gradient_solves_a_positive_definite_system(f64):
    torch.manual_seed(0)
    m = torch.randn(6, 6)
    a = m @ m.T + 0.5 * torch.eye(6)
    b = torch.randn(6)
    assert torch.allclose(conjugate_gradient(lambda v: a @ v, b, iterations=20), torch.linalg.solve(a, b), atol=1e-8)


def test_trpo_step_goes_to_the_edge_of_the_trust_region_along_the_natural_gradient(f64):
    """Quadratic KL 1/2 x^T F x and linear loss g^T x: the step is -sqrt(2 delta / g^T F^-1 g) F^-1 g."""
    torch.manual_seed(1)
    m = torch.randn(5, 5)
    fisher = m @ m.T + torch.eye(5)
    g = torch.randn(5)
    x = torch.nn.Parameter(torch.zeros(5))
    stats = trpo_step([x], lambda: (g @ x, 0.5 * x @ fisher @ x), max_kl=0.01, cg_iterations=20, cg_damping=0.0)
    natural = torch.linalg.solve(fisher, g)
    expected = -math.sqrt(2 * 0.01 / float(g @ natural)) * natural
    assert stats.accepted and stats.loss_after < stats.loss_before and stats.kl <= 0.01
    # the full step lands on the boundary, KL == delta up to rounding (then "<" may refuse it once)
    assert stats.backtracks in (0, 1)
    assert torch.allclose(x.detach(), 0.8**stats.backtracks * expected, atol=1e-8)
    assert stats.kl == pytest.approx(0.01 * 0.64**stats.backtracks, rel=1e-6)


def test_maml_trpo_step_respects_the_kl_bound_and_improves_the_surrogate():
    family, policy = small_nav()
    learner = MAMLTRPO(policy, family, inner_lr=0.1, episodes=8, max_kl=0.01)
    tasks = family.sample_tasks(4, torch.Generator().manual_seed(0))
    metrics = learner.meta_step(tasks, seed=0)
    assert 0 < metrics["kl"] <= 0.01
    assert metrics["surrogate_improvement"] > 0
    assert metrics["env_steps"] == 2 * 4 * 8 * family.horizon


@pytest.mark.parametrize("adaptive", [True, False])
def test_promp_adapts_its_inner_kl_weight_or_keeps_it_fixed(adaptive):
    """eta halves when the inner KL is below target / 1.5 and doubles above 1.5 target; fixed, it stays."""
    family, policy = small_nav()
    tasks = family.sample_tasks(3, torch.Generator().manual_seed(0))
    for target, factor in ((1e3, 0.5), (1e-12, 2.0)):  # every KL is far below the first and above the second
        learner = ProMP(policy, family, inner_lr=0.1, episodes=4, inner_kl_target=target, adaptive_kl=adaptive)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        metrics = learner.meta_step(tasks, seed=0, optimizer=optimizer)
        assert metrics["inner_kl"] > 0
        expected = 5e-4 * factor if adaptive else 5e-4
        assert learner.inner_kl_coef.tolist() == pytest.approx([expected], rel=1e-6)


@pytest.mark.parametrize("estimator", ["vpg", "dice"])
def test_meta_gradient_and_fisher_product_match_finite_differences(f64, estimator):
    """The outer objective and KL differentiate through the inner step; check them numerically.

    The KL's Fisher-vector products must be those of the function the line search evaluates,
    for every estimator. The objective's gradient is the plain derivative with REINFORCE;
    DiCE's is not, by design (its stop-gradients add the score-function terms of the inner
    sampling, which a finite difference over recorded episodes cannot see).
    """
    family, policy = small_nav()
    learner = MAMLTRPO(policy, family, inner_lr=0.3, episodes=4, estimator=estimator)
    tasks = family.sample_tasks(3, torch.Generator().manual_seed(0))
    draw = learner.sample(tasks, seed=0)
    objectives = learner.objectives(draw)
    shapes = {n: p.shape for n, p in learner.params().items()}

    def at(flat):
        params, offset = {}, 0
        for n, shape in shapes.items():
            params[n] = flat[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return objectives(params)

    theta = torch.cat([p.detach().reshape(-1) for p in learner.params().values()])
    torch.manual_seed(5)
    theta = (theta + 0.01 * torch.randn_like(theta)).requires_grad_()  # away from the KL minimum
    loss, kl = at(theta)
    g = torch.autograd.grad(loss, theta, retain_graph=True)[0]
    kl_grad = torch.autograd.grad(kl, theta, create_graph=True)[0]
    v = torch.randn_like(theta)
    hv = torch.autograd.grad(kl_grad @ v, theta)[0]
    eps = 1e-6
    with torch.no_grad():
        fd = (at(theta + eps * v)[0] - at(theta - eps * v)[0]) / (2 * eps)

    def kl_gradient(t):
        t = t.detach().requires_grad_()
        return torch.autograd.grad(at(t)[1], t)[0]

    fd_hv = (kl_gradient(theta + eps * v) - kl_gradient(theta - eps * v)) / (2 * eps)
    assert torch.allclose(hv, fd_hv, rtol=1e-5, atol=1e-8)
    if estimator == "vpg":
        assert torch.allclose(g @ v, fd, rtol=1e-6, atol=1e-9)
    else:
        assert not torch.allclose(g @ v, fd, rtol=1e-3)


def test_dice_inner_step_under_vmap_matches_plain_autograd(f64):
    """torch.func.grad inside vmap keeps DiCE's magic-box terms for the outer derivative, as plain autograd does."""
    family, policy = small_nav()
    learner = MAMLTRPO(policy, family, inner_lr=0.3, episodes=4, estimator="dice")
    tasks = family.sample_tasks(2, torch.Generator().manual_seed(0))
    draw = learner.sample(tasks, seed=0)
    theta = learner.params()
    weights = {n: torch.randn(p.shape) for n, p in theta.items()}  # a random outer objective of the adapted parameters

    def outer(adapted_per_task):
        return sum((weights[n] * p).sum() for adapted in adapted_per_task for n, p in adapted.items())

    batched = learner.adapt(theta, draw.inner)
    ours = torch.autograd.grad(outer([{n: p[i] for n, p in batched.items()} for i in range(2)]), list(theta.values()))
    plain = []
    for i in range(2):
        data = {k: v[i] for k, v in draw.inner[0].items()}
        grads = torch.autograd.grad(learner.inner_loss(theta, data), list(theta.values()), create_graph=True)
        plain.append({n: p - 0.3 * g for (n, p), g in zip(theta.items(), grads)})
    reference = torch.autograd.grad(outer(plain), list(theta.values()))
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-10)
    learner.estimator = "vpg"  # and the estimators' second derivatives really differ here
    vpg = torch.autograd.grad(
        outer([{n: p[i] for n, p in learner.adapt(theta, draw.inner).items()} for i in range(2)]), list(theta.values())
    )
    assert max(float((a - b).abs().max()) for a, b in zip(ours, vpg)) > 1e-4


# -- returns ------------------------------------------------------------------------------
def test_discounted_returns_and_gae():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # terminated after 3 steps
    returns = discounted_returns(rewards, mask, 0.5)
    assert torch.allclose(returns, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]))
    values = torch.tensor([[0.5, -1.0, 2.0, 7.0]]) * mask
    assert torch.allclose(gae(rewards, values, mask, 0.5, 1.0), returns - values)  # lambda = 1: returns minus baseline
    one_step = gae(rewards, values, mask, 0.5, 0.0)  # lambda = 0: the TD error
    assert torch.allclose(one_step[0, :3], torch.tensor([1 + 0.5 * -1.0 - 0.5, 2 + 0.5 * 2.0 + 1.0, 3 - 2.0]))


def test_linear_baseline_fits_each_task_its_own_returns(f64):
    """Returns that are, per task, a different member of the feature family are fit exactly."""
    torch.manual_seed(0)
    observations = torch.randn(2, 3, 5, 2)
    t = torch.arange(5) / 100.0
    coefficients = torch.tensor([[1.5, -0.7, 2.0, 30.0], [-0.4, 0.2, 1.0, -50.0]])  # s_0, s_1^2, 1, t^2 per task
    c = coefficients[:, None, None, :]
    exact = (
        c[..., 0] * observations[..., 0] + c[..., 1] * observations[..., 1].pow(2) + c[..., 2] + c[..., 3] * t.pow(2)
    )
    rewards = exact.clone()  # invert R_t = r_t + gamma R_{t+1}
    rewards[..., :-1] = exact[..., :-1] - 0.9 * exact[..., 1:]
    values = linear_baseline(observations, rewards, torch.ones(2, 3, 5), gamma=0.9, reg=1e-12)
    assert torch.allclose(values, exact, atol=1e-6)
    shared = linear_baseline(observations[:1].expand(2, -1, -1, -1), rewards, torch.ones(2, 3, 5), gamma=0.9, reg=1e-12)
    assert not torch.allclose(shared, exact, atol=1e-2)  # the same states cannot explain both tasks' returns


# -- environments -------------------------------------------------------------------------
def test_navigation_reward_is_minus_the_distance_after_a_clipped_move():
    """Normalized actions as in the paper's code (rllab's normalize): the move is 0.1 * clip(a, -1, 1)."""
    family = make_family("nav2d")
    goals = torch.tensor([[0.3, -0.2], [-0.5, 0.5]], dtype=torch.float64)
    env = family.make(goals, episodes=2, seed=0)
    assert torch.equal(env.reset(), torch.zeros(2, 2, 2))
    actions = torch.tensor([[[5.0, 0.5], [-0.2, 0.0]], [[0.0, 0.0], [-10.0, 10.0]]])
    position, reward, terminated = env.step(actions)
    moved = torch.tensor([[[0.1, 0.05], [-0.02, 0.0]], [[0.0, 0.0], [-0.1, 0.1]]])
    assert torch.allclose(position, moved)
    assert torch.allclose(reward, -(moved - goals[:, None].float()).norm(dim=-1))
    assert not terminated.any()
    # within 0.01 of the goal in both coordinates the episode ends: no more reward, no more moves
    env = family.make(torch.tensor([[0.05, -0.095]]), episodes=2, seed=0)
    env.reset()
    position, reward, terminated = env.step(torch.tensor([[[0.5, -1.0], [0.5, 1.0]]]))
    assert terminated.tolist() == [[True, False]]
    position, reward, terminated = env.step(torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]))
    assert torch.allclose(position[0, 0], torch.tensor([0.05, -0.1])) and reward[0, 0] == 0 and terminated[0, 0]
    assert reward[0, 1] < 0 and not terminated[0, 1]
    samples = family.sample_tasks(1000, torch.Generator().manual_seed(0))
    assert samples.abs().max() <= 0.5 and samples.abs().max() > 0.45
    assert torch.equal(family.test_tasks(5, seed=1), family.test_tasks(5, seed=1))
    assert not torch.equal(family.test_tasks(5, seed=1), family.test_tasks(5, seed=2))


def test_batched_rollouts_and_adaptation_match_a_per_task_loop(f64):
    family, policy = small_nav()
    learner = MAMLTRPO(policy, family, inner_lr=[0.2, 0.1], inner_steps=2, episodes=3)  # per-step rates
    tasks = family.sample_tasks(3, torch.Generator().manual_seed(0))
    params = {n: p.detach() + 0.1 * torch.randn(3, *p.shape) for n, p in learner.params().items()}
    batched = rollout(family, tasks, learner, params, 2, seed=0, per_task=True, deterministic=True)
    for i in range(3):
        single = rollout(
            family, tasks[i : i + 1], learner, {n: p[i] for n, p in params.items()}, 2, seed=0, deterministic=True
        )
        assert torch.allclose(batched.observations[i], single.observations[0])
        assert torch.allclose(batched.rewards[i], single.rewards[0])
    draw = learner.sample(tasks, seed=0)
    theta = learner.params()
    adapted = learner.adapt(theta, draw.inner)
    for i in range(3):
        one = learner.adapt(theta, [{k: v[i : i + 1] for k, v in d.items()} for d in draw.inner])
        for n in theta:
            assert torch.allclose(adapted[n][i], one[n][0], atol=1e-10)
    for n in theta:  # the adapted parameters of sampling and of the replay agree
        assert torch.allclose(adapted[n].detach(), draw.adapted[n], atol=1e-10)
    path = learner.adapt(theta, draw.inner, first_order=True, trajectory=True)  # theta, theta'_1, theta'_2
    first = {n: p[0].detach() for n, p in path[1].items()}
    data = {k: v[0] for k, v in draw.inner[1].items()}
    grads = torch.func.grad(learner.inner_loss)(first, data)
    for n in theta:  # the second step used the second rate
        assert torch.allclose(path[2][n][0], first[n] - 0.1 * grads[n], atol=1e-12)


# -- learning -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["maml-trpo", "promp"])
def test_meta_training_on_bandits_makes_one_step_of_adaptation_pay(tmp_path, algorithm):
    """Before meta-training one step gains little; after it, one step finds the good arm far more often."""
    from innerloop.training.evaluate import evaluate_rl
    from innerloop.training.trainer import Trainer

    overrides = [f"algorithm.name={algorithm}", "train.progress=false", "eval.tasks=100", "eval.steps=[0,1]"]
    if algorithm == "promp":
        overrides.append("train.meta_lr=0.05")
    config = load_config("maml-trpo-bandit", overrides, out_dir=str(tmp_path))
    trainer = Trainer(config)
    before = evaluate_rl(trainer.learner, config)
    trainer.fit()
    after = evaluate_rl(trainer.learner, config)
    gain_before = before[1]["return"]["mean"] - before[0]["return"]["mean"]
    gain_after = after[1]["return"]["mean"] - after[0]["return"]["mean"]
    assert gain_after > gain_before + 3 * after[1]["return"]["stderr"], (before, after)


# -- runs from the command line --------------------------------------------------------------
@pytest.mark.parametrize("preset", ["maml-trpo-bandit", "promp-nav2d"])
def test_training_resumes_exactly(tmp_path, monkeypatch, capsys, preset):
    small = [
        "train.iterations=4",
        "train.checkpoint_every=2",
        "train.val_every=100",
        "train.meta_batch_size=3",
        "rl.episodes=3",
        "rl.horizon=8",
        "model.hidden=[8]",
        "train.progress=false",
    ]
    code, out, err = cli(
        monkeypatch, capsys, "train", "--config", preset, "--out", tmp_path / "a", "--no-evaluate", *small
    )
    assert code == 0, err
    half = [s if s != "train.iterations=4" else "train.iterations=2" for s in small]
    assert (
        cli(monkeypatch, capsys, "train", "--config", preset, "--out", tmp_path / "b", "--no-evaluate", *half)[0] == 0
    )
    code, out, err = cli(
        monkeypatch, capsys, "train", "--config", preset, "--out", tmp_path / "b", "--resume", "--no-evaluate", *small
    )
    assert code == 0 and "resuming from iteration 2" in out, err
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a/checkpoints/step-00000004/weights.safetensors")
    b = load_file(tmp_path / "b/checkpoints/step-00000004/weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        not torch.equal(a[k], load_file(tmp_path / "b/checkpoints/step-00000002/weights.safetensors")[k]) for k in a
    )


def test_cli_trains_and_evaluates_navigation(tmp_path, monkeypatch, capsys):
    small = [
        "train.iterations=2",
        "train.meta_batch_size=3",
        "rl.episodes=4",
        "rl.horizon=10",
        "model.hidden=[8]",
        "train.progress=false",
        "eval.tasks=3",
        "rl.eval_episodes=4",
    ]
    code, out, err = cli(monkeypatch, capsys, "train", "--config", "maml-trpo-nav2d", "--out", tmp_path, *small)
    assert code == 0, err
    assert "paper (Finn et al. 2017)" in out and "-11.68" in out
    assert (tmp_path / "returns.png").exists() and (tmp_path / "trajectories.png").exists()
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path, "--tasks", "2", "--steps", "0", "--steps", "1")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))]
    assert len(lines) == 2 and all(line.split()[3] == "2" for line in lines)
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path, "--shots", "5")
    assert code == 2 and "--shots does not apply to meta-RL" in err
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path, "--split", "train")
    assert code == 2 and "nav2d is not a Meta-World family" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path, "--split", "val")
    assert code == 2 and "--split 'val': choose test or train" in err
    # The adaptation protocol can change at evaluation (the paper's code tests with 40 episodes, steps 0.5 then 0.25).
    code, out, err = cli(
        monkeypatch,
        capsys,
        "eval",
        tmp_path,
        "--tasks",
        "2",
        "--episodes",
        "6",
        "--lrs",
        "0.5",
        "--lrs",
        "0.25",
        "--output",
        tmp_path / "e.json",
    )
    assert code == 0 and "6 episodes per step, step sizes [0.5, 0.25]" in out, err
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["episodes"] == 6 and saved["lrs"] == [0.5, 0.25]
    code, out, err = cli(monkeypatch, capsys, "eval", tmp_path, "--lrs", "-1")
    assert code == 2 and "rl.eval_lrs must be a non-empty list of positive step sizes" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm.name=maml"], "meta-RL pairs an algorithm"),
        (["task.name=sinusoid"], "meta-RL pairs an algorithm"),
        (["rl.estimator=reinforce"], "rl.estimator='reinforce' is not supported"),
        (["algorithm.inner_steps=0"], "at least one policy-gradient step"),
        (["rl.gamma=1.5"], "rl.gamma"),
        (["model.name=conv4"], "policies are MLPs"),
        (["rl.eval_lrs=[]"], "rl.eval_lrs"),
        (["rl.inner_lrs=[0.1,0.05]"], "rl.inner_lrs must hold 1 to algorithm.inner_steps=1"),
    ],
)
def test_bad_rl_configs_get_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("maml-trpo-nav2d", overrides)


def test_model_activation_builds_tanh_policies_and_is_refused_where_it_would_not_apply():
    from innerloop.training.builders import build_learner

    acts = {type(m).__name__ for m in build_learner(load_config("promp-nav2d", ["model.activation=tanh"])).modules()}
    assert "Tanh" in acts and "ReLU" not in acts
    acts = {type(m).__name__ for m in build_learner(load_config("promp-nav2d")).modules()}
    assert "ReLU" in acts and "Tanh" not in acts
    acts = {type(m).__name__ for m in build_learner(load_config("fomaml-sine", ["model.activation=tanh"])).modules()}
    assert "Tanh" in acts and "ReLU" not in acts  # the regressor too
    for preset, overrides, message in [
        ("promp-nav2d", ["model.activation=gelu"], "model.activation must be one of relu, tanh"),
        ("maml-omniglot-5w1s", ["model.activation=tanh"], "does not apply to model.name='conv4'"),
        ("lopt-mlp-omniglot", ["model.activation=tanh"], "does not apply to lopt's own networks"),
        ("cnp-sine", ["model.activation=tanh"], "does not apply to cnp's own networks"),
        ("rl2-nav2d", ["model.activation=tanh"], "does not apply to rl2's own networks"),
        ("pearl-nav2d", ["model.activation=tanh"], "does not apply to pearl's own networks"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(preset, overrides)
    from innerloop.models.mlp import MLP

    with pytest.raises(ValueError, match="activation must be one of relu, tanh, got 'Tanh'"):
        MLP(activation="Tanh")  # from Python: one line too


def test_a_tasks_rollouts_do_not_depend_on_its_batch_mates():
    """Each task draws from its own stream: evaluation is independent of the batch size."""
    from innerloop.rl.evaluate import evaluate_adaptation

    family = make_family("bandit", arms=3, horizon=4)
    torch.manual_seed(0)
    learner = MAMLTRPO(make_policy(family, hidden=(8,)), family, inner_lr=0.5, episodes=3)
    tasks = family.sample_tasks(6, torch.Generator().manual_seed(0))
    whole = evaluate_adaptation(learner, tasks, [0, 1], 3, [0.5], seed=7, batch_size=6)
    pieces = evaluate_adaptation(learner, tasks, [0, 1], 3, [0.5], seed=7, batch_size=4)
    other_seed = evaluate_adaptation(learner, tasks, [0, 1], 3, [0.5], seed=8, batch_size=6)
    for step in (0, 1):
        assert whole[step]["return"]["mean"] == pytest.approx(pieces[step]["return"]["mean"], rel=1e-12)
    assert any(whole[s]["return"]["mean"] != other_seed[s]["return"]["mean"] for s in (0, 1))
