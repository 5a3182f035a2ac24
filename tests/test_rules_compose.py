"""Update rules as composable values: chain, partition by adapt= spec, first_order, explicit meta-parameters,
and the meta-RL inner loop on the same engine (update rules with state)."""

import pytest
import torch
from gradcheck import directional_differences
from torch.nn.utils import parameters_to_vector

from innerloop import FOMAML, MAML, SinusoidTasks
from innerloop.algorithms.step import Shard
from innerloop.core.engine import inner_step
from innerloop.core.params import flatten
from innerloop.core.rules import (
    SGD,
    LearnedOptimizerLSTM,
    MetaSGDRates,
    PerLayerPerStepRates,
    chain,
    first_order,
    partition,
    scale,
)
from innerloop.errors import ConfigError
from innerloop.models import MLP
from innerloop.rl import MAMLTRPO, make_family, make_policy


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(1, [8, 8], 1).double()


def batch(n=3, seed=3):
    return SinusoidTasks(shots=5, queries=6, seed=seed).sample(0, range(n), dtype=torch.float64)


def meta_gradient(learner, b):
    learner.zero_grad()
    loss, _ = learner.meta_loss(b)
    loss.backward()
    return parameters_to_vector([p.grad for p in learner.parameters()])


def support_gradient(model, b):
    """d L_support / d theta of task 0 at the model's own parameters."""
    model.zero_grad()
    torch.nn.functional.mse_loss(model(b.support_x[0]), b.support_y[0]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_chain_of_scale_and_sgd_is_the_hand_computed_step():
    b, model = batch(), small_mlp()
    learner = MAML(model, update_rule=chain(scale(0.5), SGD(0.1)), inner_steps=1)
    adapted = learner.adapt(b.support_x[0], b.support_y[0], 1)
    g = support_gradient(model, b)
    for n, p in model.named_parameters():
        torch.testing.assert_close(adapted[n], p - 0.1 * 0.5 * g[n], rtol=0, atol=1e-15)
    assert learner.update_rule.describe() == "chain(scale(0.5), SGD(lr=0.1))"


def test_partition_sends_each_group_to_its_own_rule():
    b, model = batch(), small_mlp()
    learner = MAML(model, update_rule=partition(("head", SGD(0.3)), ("all", SGD(0.01))), inner_steps=1)
    head = {"4.weight", "4.bias"}
    adapted = learner.adapt(b.support_x[0], b.support_y[0], 1)
    g = support_gradient(model, b)
    for n, p in model.named_parameters():
        lr = 0.3 if n in head else 0.01  # a group's rule is not applied to the other group
        torch.testing.assert_close(adapted[n], p - lr * g[n], rtol=0, atol=1e-15, msg=n)
    # the groups' meta-parameters are the learner's, under update_rule.groups.<i>.*
    learned = MAML(small_mlp(), update_rule=partition(("head", MetaSGDRates(0.1)), ("all", PerLayerPerStepRates())))
    keys = [k for k in learned.state_dict() if k.startswith("update_rule.")]
    assert keys == [
        "update_rule.groups.0.rates.4__weight",
        "update_rule.groups.0.rates.4__bias",
        *(f"update_rule.groups.1.rates.{i}__{w}" for i in (0, 2) for w in ("weight", "bias")),
    ]


def test_partition_specs_take_regex_list_and_predicate_and_refuse_gaps():
    b, model = batch(), small_mlp()
    rule = partition(
        (["0.weight"], SGD(0.2)), (r"\.bias$", SGD(0.05)), (lambda n: n.startswith("2."), SGD(0.1)), ("all", SGD(0.3))
    )
    adapted = MAML(model, update_rule=rule).adapt(b.support_x[0], b.support_y[0], 1)
    g = support_gradient(model, b)
    rates = {"0.weight": 0.2, "0.bias": 0.05, "2.weight": 0.1, "2.bias": 0.05, "4.weight": 0.3, "4.bias": 0.05}
    for n, p in model.named_parameters():
        torch.testing.assert_close(adapted[n], p - rates[n] * g[n], rtol=0, atol=1e-15, msg=n)
    with pytest.raises(ValueError, match=r"partition leaves \['0.weight', '0.bias'"):
        MAML(small_mlp(), update_rule=partition((r"^[24]\.", SGD(0.1))))
    with pytest.raises(ValueError, match=r"partition group 1 \('head'\) gets no parameter"):
        MAML(small_mlp(), update_rule=partition(("all", SGD(0.1)), ("head", SGD(0.2))))


def test_first_order_of_a_rule_is_fomaml_and_not_maml():
    b = batch()
    wrapped = meta_gradient(MAML(small_mlp(), update_rule=first_order(SGD(0.05)), inner_steps=2), b)
    fomaml = meta_gradient(FOMAML(small_mlp(), inner_lr=0.05, inner_steps=2), b)
    maml = meta_gradient(MAML(small_mlp(), inner_lr=0.05, inner_steps=2), b)
    # the same arithmetic by two code paths: equal up to the rounding of a reduction order (CI's CPU differs)
    torch.testing.assert_close(wrapped, fomaml, rtol=1e-12, atol=1e-15)
    assert (wrapped - maml).norm() > 1e-3 * maml.norm()


@pytest.mark.parametrize(
    "make",
    [
        lambda: chain(MetaSGDRates(0.05), scale(0.7)),
        lambda: partition(("head", PerLayerPerStepRates(0.1)), ("all", MetaSGDRates(0.05))),
        lambda: partition(("head", chain(MetaSGDRates(0.1), scale(0.5))), ("all", chain(scale(0.5), SGD(0.05)))),
    ],
    ids=["chain", "partition", "nested"],
)
def test_composed_rules_meta_gradients_match_finite_differences(make):
    learner, b = MAML(small_mlp(), update_rule=make(), inner_steps=2, strategy="vmap"), batch()
    with torch.no_grad():  # rates off their uniform start, so each coordinate's rate matters
        g = torch.Generator().manual_seed(1)
        for p in learner.update_rule.parameters():
            p.mul_(1 + 0.3 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    grad = meta_gradient(learner, b)
    rule_params = sum(p.numel() for p in learner.update_rule.parameters())
    assert rule_params > 0 and grad[-rule_params:].abs().sum() > 0  # the rules' meta-parameters learn
    for v, fd in directional_differences(learner, b):
        assert torch.isclose(grad @ v, fd, rtol=1e-6, atol=1e-10), ((grad @ v).item(), fd.item())


def test_the_rules_meta_parameters_are_an_explicit_pytree():
    b = batch()
    learner = MAML(small_mlp(), update_rule=MetaSGDRates(0.05), inner_steps=2, strategy="loop")
    meta = learner.rule_meta()
    assert list(meta) == [f"rates.{i}__{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
    theta = learner.model_params()
    x, y = b.support_x[0], b.support_y[0]
    doubled = learner.task_adapt(theta, x, y, 1, meta={k: 2 * v for k, v in meta.items()})
    plain = learner.task_adapt(theta, x, y, 1)
    for n in theta:  # u = -alpha g: twice the rates, twice the step
        torch.testing.assert_close(doubled[n] - theta[n], 2 * (plain[n] - theta[n]), rtol=1e-12, atol=1e-15)

    def query_loss(meta):
        adapted = learner.task_adapt({n: p.detach() for n, p in theta.items()}, x, y, 2, meta=meta)
        return torch.nn.functional.mse_loss(learner(b.query_x[0], params=adapted), b.query_y[0])

    functional = torch.func.grad(query_loss)({k: v.detach() for k, v in meta.items()})
    learner.zero_grad()
    query_loss(meta).backward()
    for k, p in learner.update_rule.named_parameters():
        torch.testing.assert_close(functional[k], p.grad, rtol=1e-12, atol=1e-15)


def rl_learner(rule, **kwargs):
    family = make_family("nav2d", horizon=10)
    torch.manual_seed(0)
    policy = make_policy(family, hidden=(8,)).double()
    return MAMLTRPO(policy, family, update_rule=rule, inner_steps=2, episodes=3, **kwargs), family


def test_meta_rl_runs_a_stateful_rule_and_replays_what_it_sampled():
    rule = LearnedOptimizerLSTM(0.1, hidden=4).double()
    learner, family = rl_learner(rule)
    with torch.no_grad():  # a non-trivial correction, so the LSTM state matters from step to step
        g = torch.Generator().manual_seed(2)
        for p in learner.update_rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    draw = learner.sample(family.sample_tasks(3, torch.Generator().manual_seed(0)), seed=1)
    replay = learner.adapt(learner.params(), draw.inner)
    for n, p in replay.items():
        torch.testing.assert_close(p, draw.adapted[n], rtol=1e-10, atol=1e-12)
    # The state matters: restarting it at the second step (what an inner loop ignoring state does) differs.
    fast, objective = learner.params(), lambda params, data: learner.inner_loss(params, data)
    for k, data in enumerate(draw.inner):
        task0 = {key: v[0] for key, v in data.items()}
        fast, _ = inner_step(objective, rule, fast, {}, rule.init_state(fast), task0, k, True)
    assert any(not torch.allclose(fast[n], replay[n][0], rtol=1e-6) for n in fast)


def test_maml_trpo_meta_learns_meta_sgd_rates():
    learner, family = rl_learner(MetaSGDRates(0.1).double(), max_kl=0.05)
    rates = parameters_to_vector(learner.update_rule.parameters()).detach().clone()
    assert rates.numel() == sum(p.numel() for p in learner.policy.parameters())
    stats = learner.meta_step(family.sample_tasks(4, torch.Generator().manual_seed(0)), shard=Shard(seed=0))
    assert stats["backtracks"] <= 15 and stats["kl"] > 0
    assert not torch.equal(parameters_to_vector(learner.update_rule.parameters()), rates)  # TRPO moved the rates
    with pytest.raises(ValueError, match="not both"):
        rl_learner(MetaSGDRates(0.1), inner_lr=0.2)


def test_evaluation_step_sizes_never_silently_replace_a_learned_rule():
    learned, _ = rl_learner(MetaSGDRates(0.1).double())
    with pytest.raises(ConfigError, match="MetaSGDRates"):
        learned.evaluation_rule([0.1, 0.05])
    assert learned.evaluation_rule(None) is learned.rule  # without step sizes: the learned rule itself
    plain, _ = rl_learner(None, inner_lr=0.1)
    assert plain.evaluation_rule([0.1, 0.05]).describe() == SGD([0.1, 0.05]).describe()


def test_meta_rl_inner_loop_runs_as_a_loop_with_the_numbers_of_vmap():
    results = {}
    for strategy in ("vmap", "loop"):
        rule = LearnedOptimizerLSTM(0.1, hidden=4).double()
        learner, family = rl_learner(rule, strategy=strategy)
        draw = learner.sample(family.sample_tasks(3, torch.Generator().manual_seed(0)), seed=1)
        loss, _ = learner.objectives(draw)(learner.params())
        grads = torch.autograd.grad(loss, list(learner.parameters()))
        results[strategy] = (draw.adapted, flatten(grads))
    for n, p in results["vmap"][0].items():
        torch.testing.assert_close(results["loop"][0][n], p, rtol=1e-10, atol=1e-12)
    assert results["vmap"][1].abs().sum() > 0
    torch.testing.assert_close(results["loop"][1], results["vmap"][1], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="strategy must be 'vmap' or 'loop'"):
        rl_learner(SGD(0.1), strategy="auto")
