"""Meta-gradients against finite differences, first order against its definition, vmap against loop."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from innerloop import ANIL, FOMAML, MAML, MetaSGD, PerLayerPerStepRates, SinusoidTasks
from innerloop.core.rules import RULES
from innerloop.models import MLP


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(1, [8, 8], 1).double()


def batch(n=4, shots=5, queries=6, seed=3):
    return SinusoidTasks(shots=shots, queries=queries, seed=seed).sample(0, range(n), dtype=torch.float64)


def finite_difference(learner, b, eps=1e-6):
    params = list(learner.parameters())
    theta = parameters_to_vector(params).detach().clone()
    grad = torch.zeros_like(theta)
    with torch.no_grad():
        for i in range(theta.numel()):
            for sign in (1, -1):
                t = theta.clone()
                t[i] += sign * eps
                vector_to_parameters(t, params)
                loss, _ = learner.meta_loss(b)
                grad[i] += sign * loss / (2 * eps)
        vector_to_parameters(theta, params)
    return grad


def analytic(learner, b):
    learner.zero_grad()
    loss, _ = learner.meta_loss(b)
    loss.backward()
    return parameters_to_vector([p.grad for p in learner.parameters()])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_second_order_maml_matches_finite_differences(steps, strategy):
    learner = MAML(small_mlp(), inner_lr=0.05, inner_steps=steps, strategy=strategy)
    b = batch()
    g = analytic(learner, b)
    fd = finite_difference(learner, b)
    rel = (g - fd).norm() / fd.norm()
    assert rel < 1e-4, rel
    # It really is second order: the first-order estimate is measurably different.
    fo = analytic(FOMAML(small_mlp(), inner_lr=0.05, inner_steps=steps, strategy=strategy), b)
    assert (fo - fd).norm() / fd.norm() > 1e-3


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_equals_query_gradient_at_adapted_params(steps):
    model = small_mlp()
    learner = FOMAML(model, inner_lr=0.05, inner_steps=steps, strategy="loop")
    b = batch()
    g = analytic(learner, b)
    expected = torch.zeros_like(g)
    for task in b:
        adapted = learner.adapt(task.support_x[0], task.support_y[0], steps=steps)
        adapted = {n: p.detach().requires_grad_() for n, p in adapted.items()}
        loss = nn.functional.mse_loss(learner(task.query_x[0], params=adapted), task.query_y[0])
        grads = torch.autograd.grad(loss, [adapted[n] for n, _ in model.named_parameters()])
        expected += parameters_to_vector(grads) / b.num_tasks
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda m, s: MAML(m, inner_lr=0.05, inner_steps=2, strategy=s),
        lambda m, s: FOMAML(m, inner_lr=0.05, inner_steps=2, strategy=s),
        lambda m, s: MetaSGD(m, inner_lr=0.05, inner_steps=2, strategy=s),
        lambda m, s: ANIL(m, inner_lr=0.05, inner_steps=2, strategy=s),
        lambda m, s: MAML(m, update_rule=PerLayerPerStepRates(0.05), inner_steps=2, strategy=s),
    ],
    ids=["maml", "fomaml", "metasgd", "anil", "lslr"],
)
def test_vmap_and_loop_give_the_same_meta_gradients(make):
    grads = {}
    for strategy in ("vmap", "loop"):
        learner = make(small_mlp(), strategy)
        grads[strategy] = analytic(learner, batch(n=5))
    assert grads["vmap"].abs().max() > 0
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=0, atol=1e-10)


def test_vmap_and_loop_give_the_same_evaluation():
    out = {}
    for strategy in ("vmap", "loop"):
        learner = MAML(small_mlp(), inner_lr=0.05, strategy=strategy)
        out[strategy] = learner.evaluate(batch(n=5), [0, 1, 4])
    for step in (0, 1, 4):
        torch.testing.assert_close(out["vmap"][step]["loss"], out["loop"][step]["loss"], rtol=0, atol=1e-12)


def test_metasgd_rates_and_lslr_values_receive_meta_gradients():
    for learner in (
        MetaSGD(small_mlp(), inner_lr=0.05, inner_steps=2),
        MAML(small_mlp(), update_rule=PerLayerPerStepRates(0.05), inner_steps=2),
    ):
        analytic(learner, batch())
        rates = [(n, p) for n, p in learner.named_parameters() if n.startswith("update_rule.")]
        assert len(rates) == 6  # one per adapted tensor
        for name, p in rates:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    lslr = MAML(small_mlp(), update_rule=PerLayerPerStepRates(0.05), inner_steps=2)
    assert all(p.shape == (2,) for n, p in lslr.named_parameters() if n.startswith("update_rule."))
    analytic(lslr, batch())
    assert all((p.grad != 0).all() for n, p in lslr.named_parameters() if n.startswith("update_rule."))


def test_anil_changes_only_the_head_in_the_inner_loop():
    model = small_mlp()
    learner = ANIL(model, inner_lr=0.1)
    assert learner.adapted_names == ["4.weight", "4.bias"]
    b = batch()
    adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=3)
    for name, p in model.named_parameters():
        changed = not torch.equal(adapted[name], p)
        assert changed == name.startswith("4."), name
    # The body still gets the outer gradient.
    analytic(learner, b)
    assert model[0].weight.grad.abs().sum() > 0


def test_anil_equals_maml_restricted_to_the_head():
    b = batch()
    anil = ANIL(small_mlp(), inner_lr=0.1, inner_steps=2, strategy="loop")
    maml = MAML(small_mlp(), inner_lr=0.1, inner_steps=2, adapt="head", strategy="loop")
    torch.testing.assert_close(analytic(anil, b), analytic(maml, b), rtol=1e-12, atol=1e-12)


def test_adapt_filters():
    model = small_mlp()
    assert MAML(model, adapt=r"^2\.").adapted_names == ["2.weight", "2.bias"]
    assert MAML(model, adapt=["0.bias"]).adapted_names == ["0.bias"]
    assert MAML(model, adapt=lambda n: n.endswith("weight")).adapted_names == ["0.weight", "2.weight", "4.weight"]
    with pytest.raises(ValueError, match="selects no parameter"):
        MAML(model, adapt="^nothing")
    with pytest.raises(ValueError, match="not parameters of the model"):
        MAML(model, adapt=["missing.weight"])


def test_shared_parameters_only_get_the_outer_gradient():
    model = small_mlp()
    learner = MAML(model, inner_lr=0.1, adapt=r"^4\.")
    b = batch()
    adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=2)
    assert torch.equal(adapted["0.weight"], model[0].weight)
    analytic(learner, b)
    assert model[0].weight.grad.abs().sum() > 0


def test_batch_norm_is_transductive_and_works_under_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()
    bn_weight = model[1].weight
    learner = MAML(model, inner_lr=0.05, inner_steps=2, strategy="vmap")
    assert model[1].weight is bn_weight  # same parameter object, no running statistics
    assert not list(model.buffers())
    b = batch()
    g_vmap = analytic(learner, b)
    # Second order through batch norm under vmap is exact (torch's own F.batch_norm is not, see core/batchnorm.py).
    fd = finite_difference(learner, b)
    assert (g_vmap - fd).norm() / fd.norm() < 1e-4
    learner.chooser.strategy = "loop"
    torch.testing.assert_close(g_vmap, analytic(learner, b), rtol=0, atol=1e-10)
    # Batch statistics: the output for one example depends on the others in its batch.
    x = b.support_x[0]
    assert not torch.allclose(learner(x)[:1], learner(x[:2])[:1])


def test_loop_meta_backward_frees_each_task_and_gives_the_batch_gradient(f64):
    """With the loop strategy meta_backward back-propagates task by task; the gradient is the batch's."""
    from innerloop import MAML, SinusoidTasks
    from innerloop.algorithms import ANIL
    from innerloop.models import MLP

    batch = SinusoidTasks(shots=5, queries=5, seed=0).sample(0, range(6)).to(dtype=torch.float64)
    for cls in (MAML, ANIL):
        grads = {}
        for strategy in ("vmap", "loop"):
            torch.manual_seed(0)
            learner = cls(MLP(1, [16, 16], 1), inner_lr=0.05, inner_steps=2, strategy=strategy).double()
            metrics = learner.meta_backward(batch, weight=0.5)
            grads[strategy] = (
                [p.grad.clone() for p in learner.parameters()],
                {k: float(v) for k, v in metrics.items()},
            )
        for a, b in zip(grads["vmap"][0], grads["loop"][0]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert grads["vmap"][1] == pytest.approx(grads["loop"][1], rel=1e-10)
    calls = []
    learner = MAML(MLP(1, [8], 1), inner_lr=0.05, strategy="loop").double()
    original = learner.meta_loss
    learner.meta_loss = lambda b: calls.append(b.num_tasks) or original(b)
    learner.meta_backward(batch)
    assert calls == [1] * 6  # one task at a time


def _graph_size(tensor):
    """Autograd nodes reachable from ``tensor`` (what a backward pass has kept alive)."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: MAML(small_mlp(), inner_lr=0.05, inner_steps=4, **kw),
        lambda **kw: MetaSGD(small_mlp(), inner_lr=0.05, inner_steps=4, **kw),
        lambda **kw: MAML(small_mlp(), update_rule=PerLayerPerStepRates(0.05), inner_steps=4, **kw),
        lambda **kw: ANIL(small_mlp(), inner_lr=0.05, inner_steps=4, **kw),
        lambda **kw: MAML(small_mlp(), update_rule=RULES["lstm-optimizer"](0.05), inner_steps=4, **kw),
    ],
    ids=["maml", "metasgd", "lslr", "anil", "lstm-optimizer"],
)
def test_checkpointed_inner_steps_give_the_same_meta_gradient_and_keep_no_inner_graph(make):
    """checkpoint_steps recomputes the inner steps in backward: same gradient, far smaller stored graph."""
    b = batch(n=3)
    plain, ckpt = make(strategy="loop"), make(checkpoint_steps=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.chooser.strategy == "loop"  # auto means the loop with recomputation
    g_plain, g_ckpt = analytic(plain, b), analytic(ckpt, b)
    assert g_plain.abs().max() > 0
    torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-12, atol=1e-14)
    # With meta_backward (the trainer's call) too.
    plain.zero_grad(), ckpt.zero_grad()
    plain.meta_backward(b), ckpt.meta_backward(b)
    torch.testing.assert_close(
        parameters_to_vector([p.grad for p in ckpt.parameters()]),
        parameters_to_vector([p.grad for p in plain.parameters()]),
        rtol=1e-12,
        atol=1e-14,
    )
    stored = {name: _graph_size(learner.meta_loss(b[:1])[0]) for name, learner in (("plain", plain), ("ckpt", ckpt))}
    assert stored["ckpt"] * 2 < stored["plain"], stored


def test_checkpointed_inner_steps_refuse_vmap():
    with pytest.raises(ValueError, match="strategy='loop'"):
        MAML(small_mlp(), inner_lr=0.05, checkpoint_steps=True, strategy="vmap")


def test_compiled_meta_loss_gives_the_eager_meta_gradient():
    """compile=True: torch.compile of the vmap'd second-order meta-loss, same gradient as eager."""
    b = batch(n=5)
    eager = MAML(small_mlp(), inner_lr=0.05, inner_steps=2, strategy="vmap")
    compiled = MAML(small_mlp(), inner_lr=0.05, inner_steps=2, strategy="vmap", compile=True)
    g_eager = analytic(eager, b)
    for _ in range(2):  # the first call compiles, the second runs the compiled graph
        torch.testing.assert_close(analytic(compiled, b), g_eager, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fixed strategy"):
        MAML(small_mlp(), inner_lr=0.05, compile=True)  # strategy auto
