"""The in-place ``torch.optim`` step of the learned optimizers (issue 21, speed): same values as the functional rule
the inner loop differentiates, block by block, with the accumulators and work buffers updated in place."""

import pytest
import torch
from test_learned_optimizers import perturbed
from torch._dynamo.utils import counters
from torch.func import functional_call, grad_and_value

from innerloop.core import LearnedOptimizer
from innerloop.core.rules import Adam, AdamCorrection, FactoredMLPOptimizer, MLPOptimizer

FORMS = {
    "mlp": lambda: MLPOptimizer(lr=0.01),
    "adafactor": lambda: FactoredMLPOptimizer(lr=0.01, factor_min=3),
    "adam-correction": lambda: AdamCorrection(lr=0.01, correction=0.01),
    "adam-correction-fixed-lr": lambda: AdamCorrection(lr=0.01, correction=0.01, learn_lr=False),
    "adam-correction-scaled": lambda: AdamCorrection(lr=0.01, correction=0.01, scale_mult=0.5),
    "adam": lambda: Adam(0.02),
}


def model(dtype):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2)]
    return torch.nn.Sequential(*layers).to(dtype)


def functional_run(net, rule, meta, x, y, steps, skip=None, rises=(), lrs=None):
    """The parameters after each step of ``rule.run`` at ``meta`` (the functional form), as one vector. At the
    steps in ``rises`` the rule is handed ten times the loss (a loss guard's gate closes there); ``lrs``: per name,
    a multiplier of the update (default 1)."""
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    state, out = rule.init_state(params), []
    for step in range(steps):
        grads, loss = grad_and_value(lambda p: (functional_call(net, p, (x,)) - y).square().mean())(params)
        names = [n for n in params if n != skip]
        loss = 10 * loss if step in rises else loss
        updates, new = rule.run({n: grads[n] for n in names}, {n: state[n] for n in names}, params, step, loss, meta)
        state = {**state, **new}
        params = {n: p + (lrs or {}).get(n, 1.0) * updates[n] if n in updates else p for n, p in params.items()}
        out.append(torch.cat([p.reshape(-1) for p in params.values()]))
    return out


def optim_run(net, opt, x, y, steps, skip=None):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        if skip is not None:
            dict(net.named_parameters())[skip].grad = None
        opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    return out


@pytest.mark.parametrize("block", [5, 9, 1 << 16])
@pytest.mark.parametrize("name", sorted(FORMS))
def test_the_in_place_step_equals_the_functional_rule_block_by_block(name, block):
    net, dtype = model(torch.float64), torch.float64
    x, y = torch.randn(16, 4, dtype=dtype), torch.randn(16, 2, dtype=dtype)
    rule = FORMS[name]()
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    meta = {k: v.detach().clone() for k, v in perturbed(FORMS[name]().to(dtype), seed=4).meta().items()}
    opt = LearnedOptimizer(net.named_parameters(), rule=rule, meta=meta)  # meta: not the rule's own weights
    opt.rule.block = block
    expected = functional_run(net, opt.rule, meta, x, y, 6)
    entries = None
    for step, want in enumerate(expected):
        got = optim_run(net, opt, x, y, 1)[0]
        assert torch.allclose(got, want, rtol=0, atol=1e-13), (name, block, step, (got - want).abs().max().item())
        now = [t for entry in opt.state.values() for t in entry.values()]  # held: an id is never reused meanwhile
        assert entries is None or all(a is b for a, b in zip(now, entries)), "accumulators re-allocated, not updated"
        entries = now
    assert not torch.equal(expected[0], expected[-1])


@pytest.mark.parametrize("name", ["mlp", "adafactor", "adam-correction"])
def test_the_in_place_step_in_float32_equals_the_functional_rule_to_rounding(name):
    net = model(torch.float32)
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    rule = perturbed(FORMS[name](), seed=2)
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    expected = functional_run(net, rule, None, x, y, 5)
    opt = LearnedOptimizer(net.parameters(), rule=rule)
    opt.rule.block = 8
    for got, want in zip(optim_run(net, opt, x, y, 5), expected):
        assert (got - want).abs().max() < 1e-6 * want.abs().max(), (got - want).abs().max().item()


def test_a_parameter_without_gradient_is_left_alone_and_its_accumulators_too():
    net = model(torch.float64)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    rule = perturbed(MLPOptimizer(lr=0.01))
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    expected = functional_run(net, rule, None, x, y, 4, skip="2.weight")
    opt = LearnedOptimizer(net.named_parameters(), rule=rule)
    got = optim_run(net, opt, x, y, 4, skip="2.weight")
    assert torch.allclose(got[-1], expected[-1], rtol=0, atol=1e-13)
    frozen = dict(net.named_parameters())["2.weight"]
    assert torch.equal(opt.state[frozen]["m"], torch.zeros_like(opt.state[frozen]["m"]))


def test_the_work_buffers_are_reused_between_steps():
    net = model(torch.float32)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt = LearnedOptimizer(net.parameters(), rule=MLPOptimizer())
    optim_run(net, opt, x, y, 1)
    buffers = [opt._scratch["x"], *opt._scratch["h"], opt._scratch["out"]]
    optim_run(net, opt, x, y, 2)
    assert all(a is b for a, b in zip(buffers, [opt._scratch["x"], *opt._scratch["h"], opt._scratch["out"]]))


@pytest.mark.parametrize("name", ["mlp", "adafactor", "adam-correction"])
def test_the_feature_buffer_holds_one_block_not_the_largest_tensor(name):
    net = model(torch.float32)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt = LearnedOptimizer(net.parameters(), rule=FORMS[name]())
    opt.rule.block = 8
    optim_run(net, opt, x, y, 2)
    largest = max(p.numel() for p in net.parameters())  # 63, the 9 x 7 weight (factored: blocks of whole rows, 7)
    assert opt._scratch["x"].shape == (opt.rule.num_features() + 1, 8)
    assert opt._scratch["spare"].numel() == largest


def test_state_dicts_are_snapshots_that_in_place_steps_never_write_into():
    net = model(torch.float64)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    opt = LearnedOptimizer(net.parameters(), rule=MLPOptimizer(lr=0.01))
    optim_run(net, opt, x, y, 2)
    saved = opt.state_dict()
    before = {k: {n: t.clone() for n, t in entry.items()} for k, entry in saved["state"].items()}
    optim_run(net, opt, x, y, 2)
    twins = [LearnedOptimizer(model(torch.float64).parameters(), rule=MLPOptimizer(lr=0.01)) for _ in range(2)]
    for twin in twins:
        twin.load_state_dict(saved)
    optim_run(net, twins[0], x, y, 1)
    for k, entry in saved["state"].items():
        for n, t in entry.items():
            assert torch.equal(t, before[k][n]), (k, n)


class HalfSteps(MLPOptimizer):
    """A variant that changes only the functional form (its in-place hooks are the parent's)."""

    def step_from(self, out, g, m, v, step):
        return 0.5 * super().step_from(out, g, m, v, step)


def test_a_subclass_that_changes_only_the_functional_form_keeps_it_in_the_torch_optim_form():
    net = model(torch.float64)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    rule = perturbed(HalfSteps(lr=0.01))
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    expected = functional_run(net, rule, None, x, y, 3)
    got = optim_run(net, LearnedOptimizer(net.parameters(), rule=rule), x, y, 3)
    assert torch.allclose(got[-1], expected[-1], rtol=0, atol=1e-13)
    assert MLPOptimizer().in_place_ready() and not rule.in_place_ready()

    class SharedGate(MLPOptimizer):  # a new value shared by every tensor's step: the in-place path does not know it
        def shared(self, state, loss, step):
            return torch.ones(1), {}

    assert not SharedGate().in_place_ready()


COMPILED = {
    "mlp": lambda: MLPOptimizer(lr=0.01),
    "adafactor": lambda: FactoredMLPOptimizer(lr=0.01, factor_min=3),
    "adam-correction-guarded": lambda: AdamCorrection(lr=0.01, correction=0.01, scale_mult=0.5, max_scale=3, guard=1.0),
    "half-steps": lambda: HalfSteps(lr=0.01),  # a subclass's step_from: the compiled step calls it
}


def closure_run(net, opt, x, y, steps, rises=()):
    """As :func:`optim_run`, handing the loss to the step (the loss guard reads it; ten times it at ``rises``)."""
    out = []
    for step in range(steps):
        opt.zero_grad()
        loss = (net(x) - y).square().mean()
        loss.backward()
        opt.step(loss=10 * loss.detach() if step in rises else loss.detach())
        out.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    return out


@pytest.mark.parametrize(("name", "dtype"), [(n, torch.float32) for n in COMPILED] + [("mlp", torch.float64)])
def test_the_compiled_step_equals_the_functional_rule(name, dtype):
    net = model(dtype)
    x, y = torch.randn(32, 4, dtype=dtype), torch.randn(32, 2, dtype=dtype)
    rule = COMPILED[name]().to(dtype)
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    meta = {k: v.detach().clone() for k, v in perturbed(COMPILED[name]().to(dtype), seed=3).meta().items()}
    rises = (2,) if "guarded" in name else ()  # the loss rises at step 2: the guard's gate closes (< 1) there
    expected = functional_run(net, rule, meta, x, y, 5, rises=rises)  # the guard reads the loss closure_run hands
    if rises:
        assert not torch.allclose(expected[-1], functional_run(net, rule, meta, x, y, 5)[-1]), "the gate did nothing"
    before = counters["stats"]["unique_graphs"]
    opt = LearnedOptimizer(net.parameters(), rule=rule, meta=meta, compile=True)  # meta: not the rule's own
    got = closure_run(net, opt, x, y, 5, rises=rises)
    assert counters["stats"]["unique_graphs"] > before, "nothing was compiled"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for step, (a, b) in enumerate(zip(got, expected)):
        assert (a - b).abs().max() <= tol * b.abs().max(), (name, step, (a - b).abs().max().item())
    assert not torch.equal(expected[0], expected[-1])


def test_the_compiled_step_updates_its_state_in_place_and_resumes_from_a_state_dict():
    net = model(torch.float32)
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    rule = AdamCorrection(lr=0.01, correction=0.01, scale_mult=0.5, max_scale=3, guard=1.0)
    opt = LearnedOptimizer(net.parameters(), rule=rule, compile=True)
    closure_run(net, opt, x, y, 2)
    held = {id(p): {k: t for k, t in opt.state[p].items() if torch.is_tensor(t)} for p in net.parameters()}
    saved, weights = opt.state_dict(), {k: t.clone() for k, t in net.state_dict().items()}
    frozen = {k: {n: t.clone() for n, t in e.items() if torch.is_tensor(t)} for k, e in saved["state"].items()}
    straight = closure_run(net, opt, x, y, 3, rises=(1,))
    for p in net.parameters():  # the compiled functions wrote into the tensors the state holds, not new ones
        assert all(opt.state[p][k] is t for k, t in held[id(p)].items())
    for k, entry in frozen.items():  # and not into the state dict taken before
        assert all(torch.equal(saved["state"][k][n], t) for n, t in entry.items()), k
    twin_net = model(torch.float32)
    twin_net.load_state_dict(weights)
    twin = LearnedOptimizer(twin_net.parameters(), rule=rule, compile=True)
    twin.load_state_dict(saved)
    resumed = closure_run(twin_net, twin, x, y, 3, rises=(1,))
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)


def test_compile_on_a_rule_without_a_compiled_step_is_one_line():
    net = model(torch.float32)
    with pytest.raises(ValueError, match=r"compile=True: Adam.*has no compiled step"):
        LearnedOptimizer(net.parameters(), rule=Adam(0.01), compile=True)

    class Wider(MLPOptimizer):  # a network the compiled step does not write out
        def mlp(self, x, step):
            return 2 * super().mlp(x, step)

    with pytest.raises(ValueError, match="overrides forward or mlp"):
        LearnedOptimizer(net.parameters(), rule=Wider(lr=0.01), compile=True)


def test_a_machine_where_the_step_cannot_be_compiled_gets_one_line(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def fails(*args):
        raise BackendCompilerFailed(fails, RuntimeError("CppCompileError: g++ not found"), None)

    net = model(torch.float32)
    opt = LearnedOptimizer(net.parameters(), rule=MLPOptimizer(lr=0.01), compile=True)
    opt._compiled.update(norms=fails, update=fails)  # what torch.compile gives where no compiler runs
    (net(torch.randn(4, 4)) ** 2).sum().backward()
    with pytest.raises(RuntimeError, match=r"compile=True: torch\.compile could not build the step here") as info:
        opt.step()
    assert "compile=False" in str(info.value) and "\n" not in str(info.value)


def test_the_compiled_step_factors_a_conv_kernel_as_the_functional_rule():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(72, 2))
    x, y = torch.randn(8, 3, 5, 5), torch.randn(8, 2)
    rule = FactoredMLPOptimizer(lr=0.01, factor_min=3)  # the kernel's 2-D view (8, 27) is factored
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    meta = {
        k: v.detach().clone() for k, v in perturbed(FactoredMLPOptimizer(lr=0.01, factor_min=3), seed=5).meta().items()
    }
    expected = functional_run(net, rule, meta, x, y, 4)
    before = counters["stats"]["unique_graphs"]
    opt = LearnedOptimizer(net.parameters(), rule=rule, meta=meta, compile=True)
    got = optim_run(net, opt, x, y, 4)
    assert counters["stats"]["unique_graphs"] > before, "nothing was compiled"
    assert "row" in opt.state[net[0].weight]
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max().item()


@pytest.mark.parametrize("path", ["functional", "in-place", "compiled"])
def test_a_groups_lr_multiplies_the_learned_update_and_a_scheduler_sets_it(path):
    net = model(torch.float64 if path != "compiled" else torch.float32)
    dtype = next(net.parameters()).dtype
    x, y = torch.randn(16, 4, dtype=dtype), torch.randn(16, 2, dtype=dtype)
    rule = {"functional": lambda: AdamCorrection(lr=0.01, correction=0.01, guard=1.0, scale_mult=0.5)}.get(
        path, lambda: MLPOptimizer(lr=0.01)
    )()
    rule.bind({n: p.shape for n, p in net.named_parameters()}, 1, next(net.parameters()))
    rule = perturbed(rule)
    lrs = {n: 0.5 for n, _ in net.named_parameters() if n.endswith("weight")}  # biases in a group at lr 1
    expected = functional_run(net, rule, None, x, y, 3, lrs=lrs)
    weights = [p for n, p in net.named_parameters() if n in lrs]
    biases = [p for n, p in net.named_parameters() if n not in lrs]
    opt = LearnedOptimizer([{"params": weights, "lr": 0.5}, {"params": biases}], rule=rule, compile=path == "compiled")
    assert path != "in-place" or opt._in_place(weights, weights)
    got = closure_run(net, opt, x, y, 3)
    tol = 1e-5 if path == "compiled" else 1e-12
    assert (got[-1] - expected[-1]).abs().max() <= tol * expected[-1].abs().max()
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.5

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: float(epoch == 0))  # to zero after one epoch
    before = [p.detach().clone() for p in net.parameters()]
    closure_run(net, opt, x, y, 1)
    assert not all(torch.equal(a, p) for a, p in zip(before, net.parameters()))  # lr still 0.5 / 1: a step
    scheduler.step()
    before = [p.detach().clone() for p in net.parameters()]
    closure_run(net, opt, x, y, 1)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_a_group_setting_the_learned_optimizer_would_ignore_is_one_line():
    net = model(torch.float64)
    with pytest.raises(ValueError, match=r"groups take only lr .* got \['momentum'\]"):
        LearnedOptimizer([{"params": net.parameters(), "momentum": 0.9}], rule=MLPOptimizer())
    opt = LearnedOptimizer(net.parameters(), rule=MLPOptimizer())
    opt.param_groups[0]["lr"] = -1.0
    (net(torch.randn(3, 4, dtype=torch.float64)) ** 2).sum().backward()
    with pytest.raises(ValueError, match=r"finite and >= 0, got -1\.0"):
        opt.step()


def test_a_state_dict_saved_before_groups_had_lr_loads_and_steps_as_it_did():
    net = model(torch.float64)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    opt = LearnedOptimizer(net.parameters(), rule=MLPOptimizer(lr=0.01))
    closure_run(net, opt, x, y, 2)
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["lr"]  # what an earlier innerloop wrote
    reference = LearnedOptimizer(net.parameters(), rule=MLPOptimizer(lr=0.01))
    reference.load_state_dict(opt.state_dict())
    start = [p.detach().clone() for p in net.parameters()]
    expected = closure_run(net, reference, x, y, 1)[-1]
    with torch.no_grad():
        for p, s in zip(net.parameters(), start):
            p.copy_(s)
    resumed = LearnedOptimizer(net.parameters(), rule=MLPOptimizer(lr=0.01))
    resumed.load_state_dict(old)
    torch.optim.lr_scheduler.StepLR(resumed, step_size=1)  # a scheduler reads (and records) each group's lr
    assert torch.equal(closure_run(net, resumed, x, y, 1)[-1], expected)
