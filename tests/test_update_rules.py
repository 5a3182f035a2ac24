"""Learned inner-loop update rules: Meta-Curvature, the coordinate-wise LSTM optimizer and the
Ravi & Larochelle meta-learner LSTM, plugged into MAML."""

from pathlib import Path

import pytest
import torch
from gradcheck import directional_differences
from safetensors.torch import load_file
from torch.nn.utils import parameters_to_vector

from innerloop import MAML, SGD, LearnedOptimizerLSTM, MetaCurvature, MetaLearnerLSTM, SinusoidTasks
from innerloop.core.rules import RULES, UpdateRule
from innerloop.core.update_rules import preprocess  # the old import path still works
from innerloop.errors import ConfigError
from innerloop.models import MLP
from innerloop.training.config import load_config

LEARNED = {
    "metacurvature": lambda lr: MetaCurvature(lr),
    "lstm-optimizer": lambda lr: LearnedOptimizerLSTM(lr),
    "meta-lstm": lambda lr: MetaLearnerLSTM(lr),
}


def small_mlp(seed=0, hidden=(8, 8)):
    torch.manual_seed(seed)
    return MLP(1, list(hidden), 1).double()


def batch(n=4, shots=5, queries=6, seed=3, iteration=0):
    return SinusoidTasks(shots=shots, queries=queries, seed=seed).sample(iteration, range(n), dtype=torch.float64)


def learner_with(name, steps=2, seed=0, strategy="vmap"):
    learner = MAML(small_mlp(seed), update_rule=LEARNED[name](0.05), inner_steps=steps, strategy=strategy).double()
    with torch.no_grad():  # move every meta-parameter off its SGD-reproducing start so all of them matter
        generator = torch.Generator().manual_seed(seed + 1)
        for p in learner.update_rule.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return learner


def meta_gradient(learner, b):
    learner.zero_grad()
    loss, _ = learner.meta_loss(b)
    loss.backward()
    return [p.grad for p in learner.parameters()]


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_the_meta_gradient_reaches_every_meta_parameter_and_matches_finite_differences(name):
    learner, b = learner_with(name), batch()
    grads = meta_gradient(learner, b)
    for (pname, _p), g in zip(learner.named_parameters(), grads):
        assert g is not None and (g != 0).any(), f"no meta-gradient reaches {pname}"
    # Directional finite differences along random directions, float64.
    g = parameters_to_vector(grads)
    for v, fd in directional_differences(learner, b):
        assert torch.isclose(g @ v, fd, rtol=1e-5, atol=1e-9), (name, (g @ v).item(), fd.item())


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_vmap_and_loop_agree(name):
    b = batch()
    vmap = meta_gradient(learner_with(name, strategy="vmap"), b)
    loop = meta_gradient(learner_with(name, strategy="loop"), b)
    for a, c in zip(vmap, loop):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def sgd_adaptation(steps=3):
    b = batch(n=1)
    sgd = MAML(small_mlp(), update_rule=SGD(0.05), inner_steps=steps).double()
    return b, sgd.adapt(b.support_x[0], b.support_y[0], steps)


@pytest.mark.parametrize("name", ["metacurvature", "lstm-optimizer"])
def test_an_untrained_rule_is_exactly_sgd(name):
    b, expected = sgd_adaptation()
    rule = MAML(small_mlp(), update_rule=LEARNED[name](0.05), inner_steps=3).double()
    adapted = rule.adapt(b.support_x[0], b.support_y[0], 3)
    for k in expected:
        assert torch.equal(adapted[k], expected[k]), k


def test_the_meta_learner_lstm_with_closed_forget_and_rate_gates_is_sgd():
    b, expected = sgd_adaptation()
    rule = MetaLearnerLSTM(0.05, forget_bias=40.0)  # sigmoid(40) == 1.0 in float64: no shrinkage
    with torch.no_grad():
        rule.input_gate.weight.zero_()
        rule.forget_gate.weight.zero_()
    adapted = MAML(small_mlp(), update_rule=rule, inner_steps=3).double().adapt(b.support_x[0], b.support_y[0], 3)
    for k in expected:  # the input gate is sigmoid(logit(0.05)): 0.05 up to rounding
        torch.testing.assert_close(adapted[k], expected[k], rtol=1e-13, atol=1e-15)
    # and an untrained rule does shrink/scale: it is not SGD by accident
    moved = MAML(small_mlp(), update_rule=MetaLearnerLSTM(0.05, forget_bias=2.0), inner_steps=3).double()
    other = moved.adapt(b.support_x[0], b.support_y[0], 3)
    assert not all(torch.allclose(other[k], expected[k]) for k in expected)


def test_meta_learner_lstm_gates_are_coordinate_wise_with_shared_weights():
    rule = MetaLearnerLSTM(0.05, hidden=20).double()
    small = MAML(small_mlp(hidden=(4,)), update_rule=rule, inner_steps=1)
    large_rule = MetaLearnerLSTM(0.05, hidden=20).double()
    MAML(small_mlp(hidden=(64, 64)), update_rule=large_rule, inner_steps=1)
    # The paper's gates: i_t, f_t from [h_t, theta_{t-1}, gate_{t-1}] with one weight row shared by all coordinates.
    assert rule.input_gate.weight.shape == (1, 20 + 2) and rule.forget_gate.weight.shape == (1, 20 + 2)
    assert rule.encoder.gates.weight.shape == (4 * 20, 4 + 20)  # preprocessed gradient (2) and loss (2)
    n_rule = sum(p.numel() for p in rule.parameters())
    assert n_rule == sum(p.numel() for p in large_rule.parameters())  # independent of the base model's size
    # Each coordinate gets its own gate values, and permuting coordinates permutes the update.
    params = {n: p.detach() for n, p in small.model_params().items()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    g = torch.linspace(-1, 1, theta.numel(), dtype=torch.float64)
    loss = torch.tensor(0.7, dtype=torch.float64)
    new, state = rule.update({"w": theta}, {"w": g}, 0, rule.init_state({"w": theta}), loss)
    assert state["i"].shape == (theta.numel(), 1) and state["f"].shape == (theta.numel(), 1)
    assert state["i"].unique().numel() > 1  # not one global rate
    perm = torch.randperm(theta.numel(), generator=torch.Generator().manual_seed(0))
    new_p, _ = rule.update({"w": theta[perm]}, {"w": g[perm]}, 0, rule.init_state({"w": theta}), loss)
    torch.testing.assert_close(new_p["w"], new["w"][perm], rtol=0, atol=1e-15)


def test_gradient_preprocessing_follows_andrychowicz_appendix_a():
    x = torch.tensor([1.0, -1e-2, 1e-6, -1e-5, 0.0], dtype=torch.float64)
    p = 10.0
    out = preprocess(x, p)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        out[1], torch.tensor([torch.log(torch.tensor(1e-2)).item() / p, -1.0], dtype=torch.float64)
    )
    # |x| < e^-10 ~ 4.5e-5: (-1, e^p x)
    torch.testing.assert_close(
        out[2], torch.tensor([-1.0, torch.exp(torch.tensor(p)).item() * 1e-6], dtype=torch.float64)
    )
    torch.testing.assert_close(out[4], torch.tensor([-1.0, 0.0], dtype=torch.float64))


def test_a_rule_serving_one_model_refuses_another():
    rule = MetaCurvature(0.05)
    MAML(small_mlp(hidden=(8, 8)), update_rule=rule)
    with pytest.raises(ValueError, match="already set up for other parameters"):
        MAML(small_mlp(hidden=(16,)), update_rule=rule)


def test_bad_rule_configurations_fail_clearly():
    with pytest.raises(ConfigError, match=r"does not apply to algorithm\.name='reptile'"):
        load_config("reptile-sine", ["algorithm.update_rule=meta-lstm"])
    with pytest.raises(ConfigError, match="update_rule='adamw' is not supported; choose one of"):
        load_config("maml-sine", ["algorithm.update_rule=adamw"])
    with pytest.raises(ValueError, match="initial rate must be in"):
        MetaLearnerLSTM(1.5)


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_each_learned_rule_learns_on_a_short_run(name):
    torch.manual_seed(0)
    learner = MAML(MLP(1, [40, 40], 1), update_rule=LEARNED[name](0.01), inner_steps=1)
    held_out = SinusoidTasks(shots=10, queries=50, seed=123).sample(0, range(100))

    def post_adaptation_mse():
        return learner.evaluate(held_out, [1])[1]["loss"].mean().item()

    rule_before = parameters_to_vector(learner.update_rule.parameters()).detach().clone()
    untrained = post_adaptation_mse()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    for iteration in range(300):
        optimizer.zero_grad()
        learner.meta_backward(tasks.sample(iteration, range(10)))
        optimizer.step()
    trained = post_adaptation_mse()
    # 300 iterations take the post-adaptation MSE from about 4.1 to about 2.9 (MAML with SGD: 2.98).
    assert trained < 0.8 * untrained, (name, untrained, trained)
    assert not torch.equal(
        parameters_to_vector(learner.update_rule.parameters()), rule_before
    )  # the rule itself learned


# Recorded from the implementation before issue 19 (rules returned new parameters; update_rules.py was one
# module), with tests/golden/update_rules_v0.safetensors written by: for each name of RULES, MAML(MLP(1, [8, 8], 1)
# seeded 0, update_rule=RULES[name](0.05) (hidden=4 for the LSTM rules), inner_steps=2, strategy="vmap").double(),
# the rule's parameters moved by 0.05 * randn (generator seed 1); its state_dict, adapt(task 0, 3 steps) and the
# meta-loss and meta-gradient of 3 sinusoid tasks (shots 5, queries 6, seed 3), second and first order.
RECORDED = Path(__file__).parent / "golden" / "update_rules_v0.safetensors"
RECORDED_RULES = ("lslr", "lstm-optimizer", "meta-lstm", "metacurvature", "metasgd", "sgd")  # RULES before issue 19


def test_every_recorded_rule_is_still_a_rule():
    assert {k.split("/", 1)[0] for k in load_file(RECORDED)} == set(RECORDED_RULES) <= set(RULES)


@pytest.mark.parametrize("name", RECORDED_RULES)
def test_each_rule_loads_its_old_state_dict_and_reproduces_the_recorded_numbers(name):
    recorded = load_file(RECORDED)
    rule = RULES[name](0.05, hidden=4) if "lstm" in name else RULES[name](0.05)
    learner = MAML(small_mlp(seed=5), update_rule=rule, inner_steps=2, strategy="vmap").double()  # other init
    old = {k.split("/", 2)[2]: v for k, v in recorded.items() if k.startswith(f"{name}/state/")}
    assert old.keys() == learner.state_dict().keys()  # the checkpoint layout is unchanged
    learner.load_state_dict(old)
    b = batch(n=3)
    # Same operations as when recorded: bit-equal on the recording CPU, but another CPU's kernels (an Intel AVX-512 Xeon)
    # round 2e-16 apart (measured); the LSTMs round differently anyway. A changed computation moves them far more.
    tol = dict(rtol=1e-12, atol=1e-14)
    for k, v in learner.adapt(b.support_x[0], b.support_y[0], 3).items():
        torch.testing.assert_close(v, recorded[f"{name}/adapt/{k}"], **tol)
    for order in ("second", "first"):
        learner.first_order = order == "first"
        learner.zero_grad()
        loss, _ = learner.meta_loss(b)
        loss.backward()
        torch.testing.assert_close(loss.detach(), recorded[f"{name}/{order}/loss"], **tol)
        for k, p in learner.named_parameters():
            torch.testing.assert_close(p.grad, recorded[f"{name}/{order}/grad/{k}"], **tol)


def test_a_rule_written_for_the_old_contract_is_refused_in_one_line():
    class OldStyle(UpdateRule):
        def forward(self, params, grads, step):  # returned new parameters
            return {n: p - 0.1 * grads[n] for n, p in params.items()}

    with pytest.raises(ConfigError, match=r"old rule contract.*forward\(grads, state, params, step, loss\)"):
        MAML(small_mlp(), update_rule=OldStyle())
