"""MetaOptNet heads (issue 20 item 3): the ridge-regression head (R2D2) against its closed form, the Crammer-Singer
SVM head against its KKT conditions and duality gap, implicit gradients against finite differences, vmap = loop,
the registry / preset / CLI path, and a short training run on the real Omniglot data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from cli_runner import FAST_CLI_RUN as FAST
from cli_runner import cli  # tests/cli_runner.py
from shared_data import needs_omniglot  # tests/shared_data.py
from torch import nn

from innerloop.algorithms import R2D2, MetaOptNetSVM
from innerloop.algorithms.metaoptnet import (
    RidgeHead,
    SVMHead,
    project_to_simplex,
    ridge_weights,
    solve_svm_dual,
    svm_kkt_residual,
)
from innerloop.errors import ConfigError, InputError
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch
from innerloop.training.builders import build_learner, build_tasks
from innerloop.training.config import load_config

D64 = torch.float64


def embeddings(s=6, d=9, n=3, seed=0, spread=1.0):
    """Support embeddings ``(s, d)`` around ``n`` class centres, one-hot labels ``(s, n)`` covering every class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(s) % n
    centres = spread * torch.randn(n, d, generator=g, dtype=D64)
    return centres[y] + torch.randn(s, d, generator=g, dtype=D64), F.one_hot(y, n).to(D64)


def duality_gap(z, onehot, alpha, c):
    """Crammer-Singer primal at W = Z^T A minus the dual value (>= 0; 0 at the solution)."""
    w = z.T @ alpha
    scores = z @ w
    slack = (1 - onehot + scores - (scores * onehot).sum(-1, keepdim=True)).amax(-1)
    primal = 0.5 * (w**2).sum() + c * slack.sum()
    dual = -(0.5 * (alpha * (z @ z.T @ alpha)).sum() - (onehot * alpha).sum())
    return primal - dual


# --------------------------------------------------------------------------- ridge regression (R2D2)
@pytest.mark.parametrize("s, d", [(6, 9), (12, 4)])  # the Woodbury S x S solve, and the primal D x D one
def test_ridge_weights_equal_the_primal_closed_form_and_a_least_squares_fit(s, d):
    z, y = embeddings(s, d)
    lam = 0.7
    w = ridge_weights(z, y, lam)
    primal = torch.linalg.solve(z.T @ z + lam * torch.eye(d, dtype=D64), z.T @ y)
    torch.testing.assert_close(w, primal, rtol=1e-10, atol=1e-12)
    # by hand: each class's ridge problem as least squares on the augmented system [Z; sqrt(lam) I] w = [y; 0]
    for k in range(y.shape[1]):
        a = torch.cat([z, lam**0.5 * torch.eye(d, dtype=D64)])
        b = torch.cat([y[:, k], torch.zeros(d, dtype=D64)])
        torch.testing.assert_close(w[:, k], torch.linalg.lstsq(a, b[:, None]).solution[:, 0], rtol=1e-9, atol=1e-11)


def test_ridge_head_logits_scale_bias_intercept_and_learned_lambda():
    head = RidgeHead(lam=2.0, scale=3.0, intercept=True).double()
    with torch.no_grad():
        head.bias.fill_(0.25)
    z, y = embeddings(6, 5)
    q = torch.randn(4, 5, dtype=D64)
    ones = torch.ones(6, 1, dtype=D64)
    w = torch.linalg.solve(torch.cat([z, ones], 1).T @ torch.cat([z, ones], 1) + 2.0 * torch.eye(6, dtype=D64),
                           torch.cat([z, ones], 1).T @ y)  # fmt: skip
    logits = head.logits(head.fit(z, y), q)
    torch.testing.assert_close(logits, 3.0 * torch.cat([q, torch.ones(4, 1, dtype=D64)], 1) @ w + 0.25)
    assert {n for n, _ in head.named_parameters()} == {"log_lam", "scale", "bias"}
    torch.testing.assert_close(head.lam, torch.tensor(2.0, dtype=D64))
    fixed = RidgeHead(lam=2.0, learn_lam=False, learn_scale=False).double()
    assert list(fixed.parameters()) == [] and set(fixed.state_dict()) == {"log_lam", "scale", "bias"}


def test_ridge_gradients_match_finite_differences():
    z, y = embeddings(6, 9)
    q = torch.randn(5, 9, dtype=D64)
    head = RidgeHead(lam=0.5, scale=2.0).double()
    z.requires_grad_(True)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda zs, zq: head.logits(head.fit(zs, y), zq), (z, q))
    # lambda's gradient (through log lambda) too
    loss = F.cross_entropy(head.logits(head.fit(z, y), q), torch.arange(5) % 3)
    (g,) = torch.autograd.grad(loss, head.log_lam)
    eps = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            head.log_lam += sign * eps
            values.append(F.cross_entropy(head.logits(head.fit(z, y), q), torch.arange(5) % 3))
            head.log_lam -= sign * eps
    torch.testing.assert_close(g, (values[0] - values[1]) / (2 * eps), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- the SVM dual (MetaOptNet)
def test_simplex_projection_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(0)
    v = 3 * torch.randn(50, 5, generator=g, dtype=D64)
    p = project_to_simplex(v, 0.3)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.full((50,), 0.3, dtype=D64))
    # optimality of a projection onto a convex set: <v - p, x - p> <= 0 for every x in the set (vertices suffice)
    for vertex in 0.3 * torch.eye(5, dtype=D64):
        assert (((v - p) * (vertex - p)).sum(-1) <= 1e-12).all()


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_svm_dual_solution_satisfies_the_kkt_conditions_and_closes_the_duality_gap(c):
    z, y = embeddings(8, 12, n=4, seed=1)
    kernel = z @ z.T
    alpha = solve_svm_dual(kernel, y, c, iterations=1000)
    bound = c * y
    assert (alpha <= bound + 1e-12).all()  # primal feasibility of the dual: A <= C Y, A 1 = 0
    torch.testing.assert_close(alpha.sum(-1), torch.zeros(8, dtype=D64), rtol=0, atol=1e-12)
    grad = kernel @ alpha - y
    free = bound - alpha > 1e-9
    for n in range(8):  # stationarity: equal gradient on the free coordinates, no lower one at a bound
        g_free = grad[n][free[n]]
        assert g_free.max() - g_free.min() < 1e-8, (n, g_free)
        assert (grad[n][~free[n]] <= g_free.min() + 1e-8).all(), n
    assert svm_kkt_residual(kernel, y, alpha, c) < 1e-10
    assert 0 <= duality_gap(z, y, alpha, c) < 1e-8
    assert duality_gap(z, y, solve_svm_dual(kernel, y, c, iterations=5), c) > 1e-4  # the gap does measure


def test_svm_classifies_separable_support_embeddings_perfectly():
    z, y = embeddings(20, 24, n=5, seed=2, spread=6.0)
    head = SVMHead(C=10.0, iterations=2000).double()
    scores = head.logits(head.fit(z, y), z)
    assert torch.equal(scores.argmax(-1), y.argmax(-1))
    margins = (scores * y).sum(-1, keepdim=True) - scores
    assert (margins + y >= 1 - 1e-6).all()  # hard margin: every constraint holds without slack


def test_svm_logit_gradients_match_finite_differences_of_the_solved_problem():
    z, y = embeddings(6, 10, n=3, seed=3)
    q = torch.randn(4, 10, dtype=D64, requires_grad=True)
    head = SVMHead(C=0.5, iterations=600, scale=1.5).double()
    alpha = solve_svm_dual(z @ z.T, y, 0.5, 600)
    assert svm_kkt_residual(z @ z.T, y, alpha, 0.5) < 1e-13
    free = 0.5 * y - alpha > 0
    assert free.any() and (~free).any() and (free.sum(-1) > 1).any()  # a face with free and bound coordinates
    z.requires_grad_(True)

    def logits(zs, zq):
        return head.logits(head.fit(zs, y), zq)

    # v^T J u against central differences along a random u and v (gradcheck's fast mode: a few solves)
    torch.manual_seed(0)
    assert torch.autograd.gradcheck(logits, (z, q), fast_mode=True, atol=1e-7, rtol=1e-5)


def test_svm_head_batched_over_tasks_under_vmap_equals_per_task():
    zs, ys = zip(*(embeddings(6, 8, n=3, seed=s) for s in range(3)))
    z, y = torch.stack(zs).requires_grad_(True), torch.stack(ys)
    head = SVMHead(iterations=300).double()
    batched = head.fit(z, y)
    mapped = torch.func.vmap(head.fit)(z, y)
    looped = torch.stack([head.fit(z[t], y[t]) for t in range(3)])
    w = torch.randn_like(batched)
    grads = [torch.autograd.grad((out * w).sum(), z)[0] for out in (batched, mapped, looped)]
    for out, g in zip((mapped, looped), grads[1:]):
        torch.testing.assert_close(out, batched, rtol=0, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=0, atol=1e-10)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().max() > 1e-3


def test_a_singular_svm_dual_is_refused_in_one_line_naming_the_fix():
    z, y = embeddings(12, 4, n=3)
    with pytest.raises(InputError, match=r"12 support examples in a 4-dimensional embedding.*set ridge > 0"):
        SVMHead().fit(z, y)
    w = SVMHead(ridge=0.1, iterations=500).double().fit(z, y)  # the strictly convex dual solves
    assert w.shape == (4, 3) and torch.isfinite(w).all()


@pytest.mark.parametrize(
    "cls, option, value",
    [(R2D2, "lam", 0.0), (R2D2, "scale", -1.0), (MetaOptNetSVM, "C", 0.0), (MetaOptNetSVM, "iterations", 0),
     (MetaOptNetSVM, "cg_steps", 0), (MetaOptNetSVM, "ridge", -0.1)],
)  # fmt: skip
def test_bad_options_are_refused_naming_them(cls, option, value):
    with pytest.raises(ValueError, match=option):
        cls(nn.Linear(2, 3), **{option: value})


# --------------------------------------------------------------------------- the learners
def image_batch(tasks=3, ways=3, shots=2, queries=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randperm(ways * shots, generator=g) % ways for _ in range(tasks)])
    query_labels = torch.stack([torch.randperm(ways * queries, generator=g) % ways for _ in range(tasks)])
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=D64),
        labels,
        torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=D64),
        query_labels,
    )


def conv_learner(cls, **kwargs):
    torch.manual_seed(0)
    return cls(Conv4(1, 8, image_size=16), **kwargs).double()


@pytest.mark.parametrize("cls, options", [(R2D2, {}), (MetaOptNetSVM, {"iterations": 200})])
def test_vmap_and_loop_agree_on_loss_and_gradients(cls, options):
    b = image_batch()
    out = {}
    for strategy in ("vmap", "loop"):
        learner = conv_learner(cls, strategy=strategy, **options)
        loss, _ = learner.meta_loss(b)
        out[strategy] = (loss, torch.autograd.grad(loss, list(learner.parameters())))
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=0, atol=1e-10)
    assert any(g.abs().max() > 1e-4 for g in out["loop"][1])
    for gv, gl in zip(out["vmap"][1], out["loop"][1]):
        torch.testing.assert_close(gv, gl, rtol=1e-8, atol=1e-10)


def test_adapt_returns_the_class_weights_and_predict_their_logits():
    b = image_batch(tasks=1, ways=4, shots=2)
    for cls in (R2D2, MetaOptNetSVM):
        learner = conv_learner(cls)
        w = learner.adapt(b.support_x[0], b.support_y[0])
        assert w.shape == ((8 + 1) if cls is R2D2 else 8, 4)
        logits = learner.predict(w, b.query_x[0])
        assert logits.shape == (8, 4)
        torch.testing.assert_close(learner(b.support_x[0], b.support_y[0], b.query_x[0]), logits, rtol=0, atol=0)


# --------------------------------------------------------------------------- registry, preset, command line
@pytest.mark.parametrize(
    "preset, cls, overrides, attrs",
    [("r2d2-omniglot-5w1s", R2D2, ["algorithm.lam=3.0", "algorithm.learn_lam=false"], {"lam": 3.0}),
     ("metaoptnet-svm-omniglot-5w1s", MetaOptNetSVM, ["algorithm.C=0.3", "algorithm.iterations=7"],
      {"C": 0.3, "iterations": 7})],
)  # fmt: skip
def test_the_presets_build_their_learners_with_their_options(preset, cls, overrides, attrs):
    learner = build_learner(load_config(preset, overrides))
    assert isinstance(learner, cls)
    for key, value in attrs.items():
        assert float(getattr(learner.head, key)) == pytest.approx(value)


@pytest.mark.parametrize(
    "override", ["algorithm.lam=0", "algorithm.scale=-1", "algorithm.C=0", "algorithm.iterations=0",
                 "algorithm.ridge=-1"],
)  # fmt: skip
def test_bad_settings_are_config_errors_naming_the_key(override):
    preset = "r2d2-omniglot-5w1s" if override.split("=")[0] in ("algorithm.lam", "algorithm.scale") else None
    preset = preset or "metaoptnet-svm-omniglot-5w1s"
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(preset, [override])


@needs_omniglot
@pytest.mark.parametrize("preset", ["r2d2-omniglot-5w1s", "metaoptnet-svm-omniglot-5w1s"])
def test_train_and_eval_the_preset_from_the_command_line(tmp_path, monkeypatch, capsys, preset):
    run = tmp_path / "run"
    small = ["task.ways=5", "task.shots=1", "task.queries=2", "train.meta_batch_size=2", "model.filters=16"]
    small += ["algorithm.iterations=100"] if "svm" in preset else []
    code, out, err = cli(monkeypatch, capsys, "train", "--config", preset, "--out", run, *FAST, *small)
    assert code == 0 and f"trained {preset.split('-omniglot')[0]} for 2 iterations" in out, err
    result = json.loads((run / "eval.json").read_text())["results"]["1"]["0"]
    assert result["accuracy"]["n"] == 4 and 0 <= result["accuracy"]["mean"] <= 1
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--tasks", "4", "--shots", "2")  # other shots than trained
    assert code == 0, err


@needs_omniglot
@pytest.mark.parametrize("preset", ["r2d2-omniglot-5w1s", "metaoptnet-svm-omniglot-5w1s"])
def test_a_few_steps_on_omniglot_tasks_lower_the_loss(preset):
    """20 Adam steps on 5-way 1-shot Omniglot training tasks (Conv-4-16): the loss on 20 held-out training-split
    tasks falls clearly below that of the untrained network."""
    small = ["task.ways=5", "task.shots=1", "task.queries=5", "model.filters=16"]
    config = load_config(
        preset, [*small, "algorithm.strategy=vmap"] + (["algorithm.iterations=150"] if "svm" in preset else [])
    )
    torch.manual_seed(0)
    learner = build_learner(config)
    tasks = build_tasks(config, "train")
    held_out = tasks.sample(10**6, range(20))
    before = learner.evaluate(held_out)[0]["loss"].mean()
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for it in range(20):
        opt.zero_grad()
        learner.meta_backward(tasks.sample(it, range(4)))
        opt.step()
    after = learner.evaluate(held_out)[0]["loss"].mean()
    assert after < 0.85 * before, (float(before), float(after))
