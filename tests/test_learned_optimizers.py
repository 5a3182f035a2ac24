"""Learned optimizers (issue 21 item 1): the per-parameter MLP (small_fc_lopt), its Adafactor-factored variant, Adam
plus a learned correction, and every rule as a ``torch.optim`` optimizer (``innerloop.core.optim``)."""

import copy
import io
import math

import pytest
import torch
from gradcheck import directional_differences
from torch.func import functional_call, grad_and_value
from torch.nn.utils import parameters_to_vector

from innerloop import MAML, SinusoidTasks
from innerloop.core import LearnedOptimizer, load_meta, load_rule, save_meta
from innerloop.core.rules import (
    RULES,
    Adam,
    AdamCorrection,
    FactoredMLPOptimizer,
    LearnedOptimizerLSTM,
    MetaLearnerLSTM,
    MLPOptimizer,
)
from innerloop.models import MLP


def perturbed(rule, seed=1, scale=0.3):
    """The rule with every meta-parameter moved off its initial value (so a zero correction cannot hide a bug)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return rule


RULE_FORMS = {
    "mlp": lambda: perturbed(MLPOptimizer(lr=0.01)),
    "adafactor": lambda: perturbed(FactoredMLPOptimizer(lr=0.01, factor_min=3)),
    "adam-correction": lambda: perturbed(AdamCorrection(lr=0.01, correction=0.01)),
    "adam-correction-scaled": lambda: perturbed(AdamCorrection(lr=0.01, correction=0.01, scale_mult=0.5)),
    "adam-correction-bounded": lambda: perturbed(
        AdamCorrection(lr=0.01, correction=0.01, scale_mult=2.0, max_scale=1.5)
    ),
    "adam-correction-guarded": lambda: perturbed(  # rate 0.3: the loss rises at some steps, so the guard acts
        AdamCorrection(lr=0.3, correction=0.01, scale_mult=2.0, max_scale=3.0, guard=0.5)
    ),
    "adam": lambda: Adam(0.02),
    "lstm-optimizer": lambda: perturbed(LearnedOptimizerLSTM(0.05), scale=0.05),
    "meta-lstm": lambda: perturbed(MetaLearnerLSTM(0.05), scale=0.05),
}


def regression(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    return model, x, y


def torch_steps(model, opt, x, y, steps):
    trajectory = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
        trajectory.append(parameters_to_vector(model.parameters()).detach().clone())
    return trajectory


@pytest.mark.parametrize("name", sorted(RULE_FORMS))
def test_the_torch_optim_form_and_the_rule_form_give_the_same_updates(name):
    model, x, y = regression()
    rule = RULE_FORMS[name]()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    rule.bind({n: p.shape for n, p in params.items()}, 1, next(iter(params.values())))
    opt = LearnedOptimizer(model.named_parameters(), rule=rule)
    via_torch = torch_steps(model, opt, x, y, 6)

    def loss_fn(p):
        return (functional_call(model, p, (x,)) - y).square().mean()

    state = rule.init_state(params)
    for step, expected in enumerate(via_torch):
        grads, loss = grad_and_value(loss_fn)(params)
        with torch.no_grad():
            updates, state = rule(grads, state, params, step, loss)
        params = {n: p + updates[n] for n, p in params.items()}
        got = parameters_to_vector(list(params.values()))
        assert torch.allclose(got, expected, rtol=0, atol=1e-13), (name, step, (got - expected).abs().max().item())
    assert not torch.equal(via_torch[0], via_torch[-1])


@pytest.mark.parametrize("learn_lr, scale_mult", [(True, 0.0), (False, 0.0), (True, 0.5)])
def test_adam_plus_an_untrained_correction_is_torch_adam_step_for_step(learn_lr, scale_mult):
    model, x, y = regression(seed=2)
    twin = copy.deepcopy(model)
    rule = AdamCorrection(0.03, learn_lr=learn_lr, scale_mult=scale_mult)
    ours = torch_steps(model, LearnedOptimizer(model.parameters(), rule=rule), x, y, 25)
    theirs = torch_steps(twin, torch.optim.Adam(twin.parameters(), lr=0.03), x, y, 25)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (step, (a - b).abs().max().item())
    plain = regression(seed=2)[0]
    adam = torch_steps(plain, LearnedOptimizer(plain.parameters(), rule=Adam(0.03)), x, y, 25)
    assert torch.allclose(adam[-1], theirs[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_an_untrained_mlp_optimizer_steps_below_its_nominal_step_and_does_not_diverge(seed):
    curvature = torch.logspace(-1, 1, 50, dtype=torch.float64)

    def f(x):
        return 0.5 * (curvature * x * x).sum()

    torch.manual_seed(seed)
    rule, x0 = MLPOptimizer(lr=1e-3), torch.randn(50, dtype=torch.float64)
    rule.bind({"x": x0.shape}, 1, x0)
    params, state = {"x": x0}, rule.init_state({"x": x0})
    for step in range(100):
        updates, state = rule({"x": curvature * params["x"]}, state, params, step, f(params["x"]))
        if step == 0:
            assert updates["x"].square().mean().sqrt() < rule.lr, "the first update exceeds the nominal step"
        params = {"x": params["x"] + updates["x"]}
    assert torch.isfinite(params["x"]).all()
    assert (params["x"] - x0).norm() < 100 * rule.lr * 50**0.5  # every step stays within the nominal size
    assert f(params["x"]) < 1.2 * f(x0)


def test_factored_second_moments_equal_full_ones_for_a_rank_one_gradient_square():
    torch.manual_seed(0)
    full, factored = MLPOptimizer(lr=0.01), FactoredMLPOptimizer(lr=0.01, factor_min=3)
    factored.load_state_dict(full.state_dict())
    w, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    for rule in (full, factored):
        rule.bind({"w": w.shape, "b": b.shape}, 1, w)
    params = {"w": w, "b": b}
    states = [full.init_state(params), factored.init_state(params)]
    assert set(states[1]["w"]) == {"m", "row", "col"} and set(states[1]["b"]) == {"m", "v"}
    assert states[1]["w"]["row"].numel() + states[1]["w"]["col"].numel() < states[0]["w"]["v"].numel()
    a, c = torch.randn(6, 1, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    for step in range(5):  # g = s a c^T: every g^2, so every average of them, has rank one: factoring is exact
        s = torch.randn((), dtype=torch.float64)
        grads = {"w": s * a * c, "b": s * c[0]}
        (u_full, states[0]), (u_fac, states[1]) = (
            r(grads, s, params, step, None) for r, s in zip((full, factored), states)
        )
        for name in params:
            assert torch.allclose(u_full[name], u_fac[name], rtol=1e-10, atol=1e-15), (step, name)
        params = {n: p + u_full[n] for n, p in params.items()}


@pytest.mark.parametrize("name", ["mlp", "lstm-optimizer"])
def test_a_state_dict_saved_mid_run_continues_identically(name):
    model, x, y = regression(seed=3)
    opt = LearnedOptimizer(model.parameters(), rule=RULE_FORMS[name]())
    torch_steps(model, opt, x, y, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    uninterrupted = torch_steps(model, opt, x, y, 5)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = regression(seed=9)[0]
    resumed_model.load_state_dict(saved["model"])
    resumed = LearnedOptimizer(resumed_model.parameters(), rule=RULE_FORMS[name]())
    resumed.load_state_dict(saved["opt"])
    assert resumed.steps == 5
    for a, b in zip(uninterrupted, torch_steps(resumed_model, resumed, x, y, 5)):
        assert torch.equal(a, b)


def test_the_mlp_rule_in_mamls_inner_loop_has_a_finite_difference_correct_meta_gradient():
    torch.manual_seed(0)
    rule = perturbed(MLPOptimizer(lr=0.05), scale=0.2)
    learner = MAML(MLP(1, [6], 1).double(), update_rule=rule, inner_steps=3).double()
    b = SinusoidTasks(shots=5, queries=6, seed=3).sample(0, range(3), dtype=torch.float64)
    params = list(learner.parameters())
    assert {n for n, _ in learner.named_parameters() if n.startswith("update_rule.")} >= {
        "update_rule.net.0.weight", "update_rule.momentum_offsets", "update_rule.rms_offsets"}  # fmt: skip
    learner.zero_grad()
    learner.meta_loss(b)[0].backward()
    g = parameters_to_vector([p.grad for p in params])
    for v, fd in directional_differences(learner, b):
        assert torch.isclose(g @ v, fd, rtol=1e-5, atol=1e-9), ((g @ v).item(), fd.item())


@pytest.mark.parametrize("name", ["mlp", "adafactor", "adam-correction", "adam-correction-scaled", "meta-lstm"])
def test_saved_meta_parameters_rebuild_the_same_optimizer_in_one_line(name, tmp_path):
    rule = RULE_FORMS[name]()
    model, x, y = regression(seed=4)
    rule.bind({n: p.shape for n, p in model.named_parameters()}, 1, next(model.parameters()))
    path = save_meta(tmp_path / "opt.safetensors", rule)
    assert set(load_meta(path)) == set(rule.meta())
    twin = copy.deepcopy(model)
    a = torch_steps(model, LearnedOptimizer(model.parameters(), rule=rule), x, y, 3)
    b = torch_steps(twin, LearnedOptimizer.from_file(twin.parameters(), path), x, y, 3)
    # the same to float64 rounding: for some weights (the MLP's init follows the global RNG, so on which tests ran
    # before this one) the two differ in the last bit (3.5e-18 seen), cause not pinned down
    torch.testing.assert_close(a[-1], b[-1], rtol=1e-14, atol=1e-16)
    assert type(load_rule(path)[0]) is type(rule)


def test_bad_uses_fail_in_one_line():
    model, x, y = regression()
    with pytest.raises(ValueError, match="do not fit"):
        LearnedOptimizer(model.parameters(), rule=MLPOptimizer(hidden=4), meta=MLPOptimizer(hidden=8).meta())
    opt = LearnedOptimizer(model.parameters(), rule=MetaLearnerLSTM(0.05))
    (model(x) - y).square().mean().backward()
    with pytest.raises(ValueError, match="reads the loss"):
        opt.step()
    lstm = LearnedOptimizer(model.parameters(), rule=LearnedOptimizerLSTM(0.05))
    next(model.parameters()).grad = None
    with pytest.raises(ValueError, match="every parameter needs a gradient"):
        lstm.step()
    lstm.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(ValueError, match="add_param_group"):
        lstm.step()
    with pytest.raises(ValueError, match="nominal step"):
        MLPOptimizer(lr=0)
    assert {"lopt-mlp", "lopt-adafactor", "adam-correction", "adam"} <= set(RULES)


@pytest.mark.parametrize("name", ["mlp", "adafactor", "adam-correction"])
def test_the_rules_batch_over_tasks_with_vmap(name):
    b, grads = SinusoidTasks(shots=5, queries=6, seed=3).sample(0, range(3), dtype=torch.float64), []
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        rule = RULE_FORMS[name]()
        if name == "adafactor":
            rule.factor_min = 2
        learner = MAML(MLP(1, [6], 1).double(), update_rule=rule, inner_steps=2, strategy=strategy).double()
        learner.meta_loss(b)[0].backward()
        grads.append(parameters_to_vector([p.grad for p in learner.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: AdamCorrection(0.01)], ids=["adam", "adam-correction"])
def test_adam_rules_give_a_finite_second_order_meta_gradient_where_a_gradient_is_exactly_zero(make):
    model = MLP(1, [6], 1).double()
    with torch.no_grad():  # a dead ReLU unit: its weights and bias get exactly zero gradients, so v = 0 there
        model[0].weight[0].zero_()
        model[0].bias[0] = -1.0
    learner = MAML(model, update_rule=make(), inner_steps=2).double()
    learner.meta_loss(SinusoidTasks(shots=5, queries=6, seed=3).sample(0, range(2), dtype=torch.float64))[0].backward()
    for name, p in learner.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_max_scale_bounds_the_multiplier_of_adams_step_and_is_scale_mult_near_zero():
    rule = AdamCorrection(0.01, scale_mult=2.0, max_scale=3.0)
    s = torch.linspace(-100, 100, 2001, dtype=torch.float64)
    multiplier = torch.exp(rule.log_scale(s))
    assert float(multiplier.max()) <= 3.0 + 1e-12 and float(multiplier.min()) >= 1 / 3.0 - 1e-12
    assert float(multiplier.max()) > 2.99  # reached, not clipped far below the bound
    small = torch.tensor([1e-4], dtype=torch.float64)
    torch.testing.assert_close(rule.log_scale(small), 2.0 * small, rtol=1e-6, atol=0)
    unbounded = AdamCorrection(0.01, scale_mult=2.0)
    assert torch.equal(unbounded.log_scale(s), 2.0 * s)
    with pytest.raises(ValueError, match="max_scale must be 0"):
        AdamCorrection(0.01, scale_mult=1.0, max_scale=0.5)


def test_the_loss_guard_pulls_a_step_past_adams_back_to_adams_when_the_loss_jumps():
    torch.manual_seed(0)
    guarded = AdamCorrection(0.01, scale_mult=1.0, max_scale=3.0, guard=0.5, guard_decay=0.8)
    plain = AdamCorrection(0.01, scale_mult=1.0, max_scale=3.0)
    plain.load_state_dict(guarded.state_dict())
    x = torch.randn(40, dtype=torch.float64)
    for rule in (guarded, plain):
        rule.double().bind({"x": x.shape}, 1, x)
    out = torch.randn(2, 40, dtype=torch.float64) * 3  # the MLP's (direction, log-magnitude) outputs
    m, v = torch.randn(1, 40, dtype=torch.float64), torch.rand(1, 40, dtype=torch.float64)
    state = guarded.init_state({"x": x})
    gate, kept = guarded.shared(state, torch.tensor(2.0, dtype=torch.float64), 0)  # step 0: no rise yet
    assert float(gate) == 1.0 and torch.allclose(kept["ell"], torch.tensor([2.0]).log().double())
    torch.testing.assert_close(guarded.step_from(out, x, m, v, 0, gate), plain.step_from(out, x, m, v, 0))
    state = {"x": {**state["x"], **kept}}
    jump = torch.tensor(2.0 * math.e**2, dtype=torch.float64)  # log loss 2 nats above its average
    gate, kept = guarded.shared(state, jump, 1)
    torch.testing.assert_close(gate, torch.tensor([math.exp(-2 / 0.5)], dtype=torch.float64))
    torch.testing.assert_close(kept["ell"], (0.8 * math.log(2.0) + 0.2 * jump.log()).reshape(1))
    a = plain.log_scale(out[1])
    adam = plain.step_from(out, x, m, v, 1) - MLPOptimizer.step_from(plain, out, x, m, v, 1)  # Adam's scaled part
    expected = adam * torch.exp(torch.where(a > 0, a * gate, a) - a)  # a rise over 1 gated, a shrink kept
    got = guarded.step_from(out, x, m, v, 1, gate) - MLPOptimizer.step_from(plain, out, x, m, v, 1)
    torch.testing.assert_close(got, expected)
    assert (a > 0).any() and (a < 0).any() and not torch.allclose(got, adam)
    # the torch.optim form needs the loss, and takes the functional step
    model, xs, ys = regression()
    opt = LearnedOptimizer(model.parameters(), rule=guarded)
    (model(xs) - ys).square().mean().backward()
    with pytest.raises(ValueError, match="reads the loss"):
        opt.step()
    assert not guarded.in_place_ready() and plain.in_place_ready()
    with pytest.raises(ValueError, match="loss guard needs"):
        AdamCorrection(0.01, guard=0.5)
