"""Your own training loop: the per-task handle (``learner.clone()``), per-task losses from the batched
path (``reduction="none"``) and lists of tasks of different sizes (``TaskList``)."""

import copy
import re
import statistics
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from innerloop import (
    ANIL,
    FOMAML,
    MAML,
    LearnedOptimizerLSTM,
    MetaCurvature,
    MetaLearnerLSTM,
    MetaSGD,
    SinusoidTasks,
    TaskBatch,
    TaskList,
)
from innerloop.core.rules import MetaSGDRates, chain, partition, scale
from innerloop.errors import ConfigError, InputError
from innerloop.models import MLP, Conv4


def mlp(seed=0, hidden=(16, 16), out=1):
    torch.manual_seed(seed)
    return MLP(1, list(hidden), out).double()


def sine(n=4, shots=5, queries=7, seed=3, draw=0):
    return SinusoidTasks(shots=shots, queries=queries, seed=seed).sample(draw, range(n), dtype=torch.float64)


def perturbed(learner, seed=1, scale=0.05):
    """Move the update rule's meta-parameters off their SGD-reproducing start, so every one matters."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in learner.update_rule.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return learner


LEARNERS = {
    "maml-2nd-order": lambda: MAML(mlp(), inner_lr=0.05, inner_steps=3),
    "fomaml": lambda: FOMAML(mlp(), inner_lr=0.05, inner_steps=3),
    "maml-adapt-head": lambda: MAML(mlp(), inner_lr=0.05, inner_steps=2, adapt="head"),
    "metasgd": lambda: MetaSGD(mlp(), inner_lr=0.05, init_range=(0.01, 0.1), inner_steps=2),
    "anil": lambda: ANIL(mlp(), inner_lr=0.05, inner_steps=3),
    "metacurvature": lambda: perturbed(MAML(mlp(), update_rule=MetaCurvature(0.05), inner_steps=2)),
    "lstm-optimizer": lambda: perturbed(MAML(mlp(), update_rule=LearnedOptimizerLSTM(0.05), inner_steps=2)),
    "meta-lstm": lambda: perturbed(MAML(mlp(), update_rule=MetaLearnerLSTM(0.05), inner_steps=2)),
    "partition-chain": lambda: perturbed(
        MAML(
            mlp(),
            update_rule=partition(
                ("head", LearnedOptimizerLSTM(0.05, hidden=4)), ("all", chain(MetaSGDRates(), scale(2)))
            ),
            inner_steps=2,
        )
    ),
}


def batched_gradient(learner, batch):
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters()}


def handle_gradient(learner, batch, steps):
    """The loop a learn2learn user writes, on innerloop's handle."""
    learner.zero_grad()
    for task in batch:
        sx, sy, qx, qy = task.support_x[0], task.support_y[0], task.query_x[0], task.query_y[0]
        learner_i = learner.clone()
        for _ in range(steps):
            learner_i.adapt(F.mse_loss(learner_i(sx), sy))
        (F.mse_loss(learner_i(qx), qy) / batch.num_tasks).backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters()}


def assert_same(a, b, tol=1e-12):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.allclose(a[n], b[n], rtol=tol, atol=tol), f"{n}: max difference {(a[n] - b[n]).abs().max():.3g}"


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_handle_gives_the_meta_loss_meta_gradient(name):
    learner, batch = LEARNERS[name](), sine()
    expected = batched_gradient(learner, batch)
    assert all(g.abs().sum() > 0 for g in expected.values())  # every meta-parameter matters
    assert_same(handle_gradient(learner, batch, learner.inner_steps), expected)


def test_handle_on_conv4_with_batch_norm_matches_meta_loss():
    torch.manual_seed(0)
    learner = MAML(
        Conv4(out_features=3, hidden=4, in_channels=1).double(), inner_lr=0.1, inner_steps=2, strategy="loop"
    )
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        torch.arange(3).repeat(2, 2),
        torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64),
        torch.arange(3).repeat(2, 3),
    )
    expected = batched_gradient(learner, batch)
    learner.zero_grad()
    for t in batch:
        task = learner.clone()
        for _ in range(2):
            task.adapt(F.cross_entropy(task(t.support_x[0]), t.support_y[0]))
        (F.cross_entropy(task(t.query_x[0]), t.query_y[0]) / 2).backward()
    assert_same({n: p.grad for n, p in learner.named_parameters()}, expected, tol=1e-10)


def test_handle_adapts_only_the_adapted_names_and_never_touches_the_model():
    learner = MAML(mlp(), inner_lr=0.1, adapt="head")
    before = {n: (p, p.detach().clone()) for n, p in learner.model.named_parameters()}
    task, b = learner.task(), sine(1)
    for _ in range(3):
        task.adapt(task.loss(b.support_x[0], b.support_y[0]))
    assert task.steps == 3 and task.adapted_names == ["4.weight", "4.bias"]
    for n, p in task.params.items():
        slot, value = before[n]
        assert dict(learner.model.named_parameters())[n] is slot and torch.equal(slot, value)  # model untouched
        assert (p is slot) == (n not in task.adapted_names)  # shared ones are theta itself
        assert n not in task.adapted_names or not torch.equal(p, value)
    # features/head split: task(x) == task.head(task.features(x)) (the embedding of ANIL; x itself here)
    assert torch.equal(task(b.query_x[0]), task.head(task.features(b.query_x[0])))


def test_anil_handle_can_embed_once_per_task():
    learner, batch = ANIL(mlp(), inner_lr=0.05, inner_steps=3), sine()
    expected = batched_gradient(learner, batch)
    learner.zero_grad()
    for t in batch:
        task = learner.clone()
        z_support, z_query = task.features(t.support_x[0]), task.features(t.query_x[0])  # the body, once
        for _ in range(3):
            task.adapt(F.mse_loss(task.head(z_support), t.support_y[0]))
        (F.mse_loss(task.head(z_query), t.query_y[0]) / batch.num_tasks).backward()
    assert_same({n: p.grad for n, p in learner.named_parameters()}, expected)


def hand_written_inner_loop(model, theta, loss_of, steps, lr):
    """theta' by torch.func.grad of a loss of (params, theta), independently of innerloop."""
    fast = dict(theta)
    for _ in range(steps):
        g = grad(loss_of)(fast, theta)
        fast = {n: fast[n] - lr * g[n] for n in fast}
    return fast


def test_parameter_dependent_weighted_gaussian_loss_matches_torch_func():
    """A proximal term ||phi - theta||^2 (iMAML-style), per-example weights and a (mu, log var) output."""
    torch.manual_seed(0)
    model = mlp(out=2)
    learner = MAML(model, inner_lr=0.05, inner_steps=3)
    b = sine(1)
    sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
    w = torch.linspace(0.5, 1.5, sx.shape[0], dtype=torch.float64)
    lam = 0.3

    def nll(out, y, weights):
        mu, logvar = out[:, :1], out[:, 1:]
        return (weights[:, None] * F.gaussian_nll_loss(mu, y, logvar.exp(), reduction="none")).mean()

    def support_loss(params, theta):
        out = functional_call(model, params, (sx,))
        return nll(out, sy, w) + lam * sum(((params[n] - theta[n]) ** 2).sum() for n in params)

    theta = dict(model.named_parameters())
    fast = hand_written_inner_loop(model, theta, support_loss, 3, 0.05)
    expected = torch.autograd.grad(
        nll(functional_call(model, fast, (qx,)), qy, torch.ones(len(qx))), list(theta.values())
    )

    task = learner.clone()
    for _ in range(3):
        proximal = sum(((task.params[n] - task.initial_params[n]) ** 2).sum() for n in task.adapted_names)
        task.adapt(nll(task(sx), sy, w) + lam * proximal)
    got = torch.autograd.grad(nll(task(qx), qy, torch.ones(len(qx))), list(learner.parameters()))
    for n, a, e in zip(theta, got, expected):
        assert torch.allclose(a, e, rtol=1e-12, atol=1e-13), n
    # the proximal term matters: without it the gradient differs
    plain = learner.clone()
    for _ in range(3):
        plain.adapt(nll(plain(sx), sy, w))
    other = torch.autograd.grad(nll(plain(qx), qy, torch.ones(len(qx))), list(learner.parameters()))
    assert any(not torch.allclose(a, o) for a, o in zip(got, other))


def test_the_learn2learn_maml_loop_ports_line_for_line():
    """learn2learn's examples/maml_sine.py body, with innerloop's names; the same training as meta_loss."""
    torch.manual_seed(0)
    model = mlp()
    maml = MAML(model, inner_lr=0.05, first_order=False)  # l2l.algorithms.MAML(model, lr=0.05, first_order=False)
    reference = copy.deepcopy(maml)
    opt = torch.optim.Adam(maml.parameters(), 1e-2)
    ref_opt = torch.optim.Adam(reference.parameters(), 1e-2)
    loss_fn = torch.nn.MSELoss()
    meta_batch, adapt_steps = 4, 2
    tasks = SinusoidTasks(shots=5, queries=5, seed=0)
    for it in range(3):
        batch = tasks.sample(it, range(meta_batch), dtype=torch.float64)
        opt.zero_grad()
        for task in range(meta_batch):
            adapt_x, adapt_y, eval_x, eval_y = (
                t[task] for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            )
            learner = maml.clone()
            for _step in range(adapt_steps):
                learner.adapt(loss_fn(learner(adapt_x), adapt_y))
            eval_loss = loss_fn(learner(eval_x), eval_y)
            (eval_loss / meta_batch).backward()
        opt.step()
        # the batched path, on a copy
        reference.inner_steps = adapt_steps
        ref_opt.zero_grad()
        reference.meta_loss(batch)[0].backward()
        ref_opt.step()
    for (n, p), q in zip(maml.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), n


def test_the_readme_port_of_the_learn2learn_loop_runs_and_trains_as_meta_loss():
    """README, "Coming from learn2learn / higher": its first code block, with the two commented innerloop lines taken."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Coming from learn2learn / higher") :]
    code = re.search(r"```python\n(.*?)```", section[: section.index("\n## ", 5)], re.S).group(1).splitlines()
    assert code[0].startswith("import learn2learn") and "maml.clone()" in "\n".join(code)
    ported = "\n".join([line.split("# ", 1)[1] for line in code[:2]] + code[2:])
    model = mlp()
    reference = MAML(copy.deepcopy(model), inner_lr=0.5)
    batches = [sine(3, draw=i) for i in range(2)]
    tasks = iter([(b.support_x[i], b.support_y[i], b.query_x[i], b.query_y[i]) for b in batches for i in range(3)])
    namespace = dict(
        model=model,
        optim=torch.optim,
        lr=1e-3,
        iterations=2,
        meta_batch=3,
        adapt_steps=1,
        loss_fn=F.mse_loss,
        sample_task=lambda: next(tasks),
    )
    exec(ported, namespace)
    ref_opt = torch.optim.Adam(reference.parameters(), 1e-3)
    for b in batches:
        ref_opt.zero_grad()
        reference.meta_loss(b)[0].backward()
        ref_opt.step()
    for p, q in zip(namespace["maml"].parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)
    assert not torch.equal(next(model.parameters()), next(mlp().parameters()))  # it trained


def test_handle_first_order_override_and_clone():
    learner, b = MAML(mlp(), inner_lr=0.05, inner_steps=2), sine(1)
    fo = FOMAML(mlp(), inner_lr=0.05, inner_steps=2)
    expected = handle_gradient(fo, b, 2)
    learner.zero_grad()
    task = learner.clone(first_order=True)
    task.adapt(task.loss(b.support_x[0], b.support_y[0]))
    branch = task.clone()  # an independent copy from here on
    task.adapt(task.loss(b.support_x[0], b.support_y[0]))
    assert branch.steps == 1 and task.steps == 2 and not torch.equal(branch.params["4.bias"], task.params["4.bias"])
    task.loss(b.query_x[0], b.query_y[0]).backward()
    got = {n: p.grad for n, p in learner.named_parameters()}
    assert_same(got, expected)


def test_handle_refuses_losses_it_cannot_differentiate():
    learner, b = MAML(mlp(), inner_lr=0.05), sine(1)
    task = learner.clone()
    with pytest.raises(InputError, match=r"scalar tensor, got \(5, 1\).*loss\.mean\(\)"):
        task.adapt((task(b.support_x[0]) - b.support_y[0]) ** 2)
    with torch.no_grad():
        loss = task.loss(b.support_x[0], b.support_y[0])
    with pytest.raises(InputError, match=r"no gradient.*torch\.no_grad"):
        task.adapt(loss)
    assert task.steps == 0
    with pytest.raises(
        InputError, match=r"outputs \(5, 1\).*target has shape \(5,\)"
    ):  # the learner's own loss: checked
        task.loss(b.support_x[0], b.support_y[0][:, 0])


def test_reduction_none_gives_per_task_losses():
    learner, batch = MAML(mlp(), inner_lr=0.05, inner_steps=2), sine(5)
    losses, metrics = learner.meta_loss(batch, reduction="none")
    assert losses.shape == (5,) and metrics["loss"].shape == (5,)
    for i in range(5):
        assert torch.allclose(losses[i], learner.meta_loss(batch[i])[0], rtol=1e-12)
    mean, mean_metrics = learner.meta_loss(batch)
    assert torch.allclose(losses.mean(), mean) and torch.allclose(
        learner.meta_loss(batch, reduction="sum")[0], losses.sum()
    )
    assert mean_metrics["loss"].shape == ()
    # weights on tasks reach the meta-gradient
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    g_weighted = torch.autograd.grad((w * losses).sum(), list(learner.parameters()))
    g_first = torch.autograd.grad(learner.meta_loss(batch[0])[0], list(learner.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(g_weighted, g_first))
    with pytest.raises(ConfigError, match="reduction='avg' is not one of"):
        learner.meta_loss(batch, reduction="avg")


@pytest.mark.parametrize("name", ["maml-2nd-order", "anil", "meta-lstm"])
def test_tasks_of_different_sizes_run_as_a_list(name):
    learner = LEARNERS[name]()
    a, b, c = (
        sine(2, shots=3, queries=4, seed=1),
        sine(1, shots=8, queries=2, seed=2),
        sine(1, shots=5, queries=9, seed=4),
    )
    tasks = [a, (b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]), c]  # 4 tasks
    listed = TaskList(tasks)
    assert len(listed) == 4 and isinstance(listed[1:], TaskList)
    singles = [learner.meta_loss(t)[0] for t in (a[0], a[1], b, c)]
    loss, metrics = learner.meta_loss(tasks)
    assert torch.allclose(loss, torch.stack(singles).mean(), rtol=1e-12)
    assert torch.allclose(learner.meta_loss(listed, reduction="none")[0], torch.stack(singles), rtol=1e-12)
    expected = torch.autograd.grad(torch.stack(singles).mean(), list(learner.parameters()))
    learner.zero_grad()
    backward_metrics = learner.meta_backward(tasks)  # task by task, each graph freed
    for p, e in zip(learner.parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-10, atol=1e-13)
    assert torch.allclose(backward_metrics["loss"], metrics["loss"], rtol=1e-12)
    # evaluation takes the list too
    assert learner.evaluate(listed, [0, 1])[1]["loss"].shape == (4,)


def test_task_list_refuses_what_it_cannot_read():
    with pytest.raises(InputError, match="task 1 of the list is a Tensor"):
        TaskList([sine(1), torch.zeros(3)])
    with pytest.raises(InputError, match="empty"):
        TaskList([])


def test_handle_runs_within_1_2x_of_a_hand_written_per_task_loop():
    """Sinusoid MLP 40-40, 10 tasks, 5 second-order steps, forward and backward. Timings are paired and
    interleaved (order alternating) and the median of the per-pair ratios taken: robust to a noisy machine."""
    torch.manual_seed(0)
    model = MLP(1, [40, 40], 1)
    learner = MAML(model, inner_lr=0.01, inner_steps=5)
    batch = SinusoidTasks(shots=10, queries=10, seed=0).sample(0, range(10))
    tasks = [(t.support_x[0], t.support_y[0], t.query_x[0], t.query_y[0]) for t in batch]
    params = dict(model.named_parameters())

    def with_handle():
        for sx, sy, qx, qy in tasks:
            task = learner.clone()
            for _ in range(5):
                task.adapt(F.mse_loss(task(sx), sy))
            (F.mse_loss(task(qx), qy) / 10).backward()

    def by_hand():
        for sx, sy, qx, qy in tasks:
            fast = dict(params)
            for _ in range(5):
                loss = F.mse_loss(functional_call(model, fast, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - 0.01 * g for (n, p), g in zip(fast.items(), grads)}
            (F.mse_loss(functional_call(model, fast, (qx,)), qy) / 10).backward()

    def seconds(fn):
        start = time.perf_counter()
        fn(), fn()
        return time.perf_counter() - start

    for fn in (with_handle, by_hand):
        fn()  # warm-up
    ratios = []
    for r in range(15):
        pair = (with_handle, by_hand) if r % 2 == 0 else (by_hand, with_handle)
        t = {fn: seconds(fn) for fn in pair}
        ratios.append(t[with_handle] / t[by_hand])
    ratio = statistics.median(ratios)
    assert ratio < 1.2, (
        f"handle / hand-written loop: median ratio {ratio:.2f} (pairs: {sorted(round(r, 2) for r in ratios)})"
    )
