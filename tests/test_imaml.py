"""iMAML (Rajeswaran et al. 2019): the inner solution and the implicit meta-gradient against a closed form on linear
regression and against finite differences on a tanh MLP, memory flat in the inner steps, vmap = loop, learning."""

import gc
import json
import weakref

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from innerloop import IMAML, MAML, SinusoidTasks, TaskBatch
from innerloop.core.params import flatten, head_names
from innerloop.errors import ConfigError
from innerloop.models import MLP, Conv4
from innerloop.training.builders import build_learner
from innerloop.training.config import load_config


def regression_tasks(tasks=3, d=4, shots=12, queries=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(tasks, d, 1, generator=g, dtype=torch.float64)

    def draw(n):
        x = torch.randn(tasks, n, d, generator=g, dtype=torch.float64)
        return x, x @ w + 0.1 * torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)

    return TaskBatch(*draw(shots), *draw(queries))


def with_ones(x):
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def grads_of(learner):
    return flatten([p.grad for p in learner.parameters()])


@pytest.mark.parametrize("damping, decay", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.3)])
def test_linear_regression_matches_the_closed_form(damping, decay):
    """f(x) = [x, 1] @ v, L(v) = mean((Xv - y)^2) + decay/2 ||v||^2 (a loss that sees the parameters): with
    A = 2 X'X / n + decay I, b = 2 X'y / n, phi* = (A + lam I)^-1 (b + lam theta) and the meta-gradient is
    ((1 + damping) I + A / lam)^-1 grad L_query(phi*)."""

    def loss_fn(output, target, params):
        return ((output - target) ** 2).mean() + decay / 2 * sum((p**2).sum() for p in params.values())

    torch.manual_seed(0)
    batch, lam = regression_tasks(), 0.7
    model = nn.Linear(4, 1).double()
    learner = IMAML(model, 0.25, 150, lam, cg_steps=10, cg_damping=damping, loss_fn=loss_fn, strategy="vmap")
    theta = flatten([model.weight, model.bias]).detach()
    eye = torch.eye(5, dtype=torch.float64)
    expected_phi, expected_grads, expected_loss = [], [], []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        xs, xq = with_ones(sx), with_ones(qx)
        a, b = 2 * xs.T @ xs / len(xs) + decay * eye, 2 * xs.T @ sy[:, 0] / len(xs)
        phi = torch.linalg.solve(a + lam * eye, b + lam * theta)
        grad_query = 2 * xq.T @ (xq @ phi - qy[:, 0]) / len(xq) + decay * phi
        expected_phi.append(phi)
        expected_grads.append(torch.linalg.solve((1 + damping) * eye + a / lam, grad_query))
        expected_loss.append(((xq @ phi - qy[:, 0]) ** 2).mean() + decay / 2 * phi @ phi)

    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    torch.testing.assert_close(flatten(adapted), expected_phi[0], rtol=0, atol=1e-9)
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    torch.testing.assert_close(grads_of(learner), torch.stack(expected_grads).mean(0), rtol=0, atol=1e-6)
    assert metrics["inner_residual"] < 1e-9  # Lemma 1's stationarity holds at the solved phi*
    torch.testing.assert_close(loss.detach(), torch.stack(expected_loss).mean(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 7])
def test_the_released_codes_inner_loop_and_cg_matrix_match_their_closed_form(steps):
    """proximal="final" (the authors' imaml_dev code): v_{t+1} = v_t - lr (A v_t - b) from theta for ``steps`` steps
    on the support loss alone, then phi = v - lr lam (v - theta); with cg_lam_damping c the meta-gradient is
    ((1 + damping) I + A / (lam + c))^-1 grad L_query(phi). Evaluation after 0 steps is theta itself."""
    batch, lam, lr, damping, c = regression_tasks(), 2.0, 0.1, 1.0, 10.0
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    learner = IMAML(
        model, lr, steps, lam, cg_steps=10, cg_damping=damping, proximal="final", cg_lam_damping=c, strategy="vmap"
    )
    theta = flatten([model.weight, model.bias]).detach()
    eye = torch.eye(5, dtype=torch.float64)
    expected_grads, expected_loss, theta_loss = [], [], []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        xs, xq = with_ones(sx), with_ones(qx)
        a, b = 2 * xs.T @ xs / len(xs), 2 * xs.T @ sy[:, 0] / len(xs)
        v = theta
        for _ in range(steps):
            v = v - lr * (a @ v - b)
        phi = v - lr * lam * (v - theta)
        grad_query = 2 * xq.T @ (xq @ phi - qy[:, 0]) / len(xq)
        expected_grads.append(torch.linalg.solve((1 + damping) * eye + a / (lam + c), grad_query))
        expected_loss.append(((xq @ phi - qy[:, 0]) ** 2).mean())
        theta_loss.append(((xq @ theta - qy[:, 0]) ** 2).mean())

    loss, _ = learner.meta_loss(batch)
    loss.backward()
    torch.testing.assert_close(grads_of(learner), torch.stack(expected_grads).mean(0), rtol=0, atol=1e-9)
    torch.testing.assert_close(loss.detach(), torch.stack(expected_loss).mean(), rtol=0, atol=1e-12)
    evaluated = learner.evaluate(batch, [0, steps])
    torch.testing.assert_close(evaluated[0]["loss"], torch.stack(theta_loss), rtol=0, atol=1e-12)
    torch.testing.assert_close(evaluated[steps]["loss"], torch.stack(expected_loss), rtol=0, atol=1e-12)


def tanh_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()


@pytest.mark.parametrize("adapt", ["all", "head"])  # head: the body is shared and gets the exact total derivative
def test_meta_gradient_matches_finite_differences_of_the_query_loss_at_the_inner_solution(adapt):
    """Central differences of theta -> L_query(phi*(theta)) with phi* solved to convergence (lam large, so G is
    strongly convex) against the implicit meta-gradient with CG converged, along random directions."""
    g = torch.Generator().manual_seed(1)
    sx, qx = (
        torch.randn(1, 10, 2, generator=g, dtype=torch.float64),
        torch.randn(1, 8, 2, generator=g, dtype=torch.float64),
    )
    batch = TaskBatch(sx, sx.sin().sum(-1, keepdim=True), qx, qx.sin().sum(-1, keepdim=True))
    model = tanh_mlp()
    learner = IMAML(model, inner_lr=0.05, inner_steps=300, lam=8.0, cg_steps=40, adapt=adapt, strategy="loop")
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    meta_grad = grads_of(learner)
    params = list(model.parameters())
    theta = flatten(params).detach().clone()

    def query_loss_at_solution(vector):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vector.clone(), params)
            phi = learner.solve(learner.model_params(), sx[0], batch.support_y[0], 300)
            return learner.task_loss(learner.predict(phi, qx[0]), batch.query_y[0])

    eps = 1e-5
    for direction in torch.randn(3, theta.numel(), generator=g, dtype=torch.float64):
        numeric = (
            query_loss_at_solution(theta + eps * direction) - query_loss_at_solution(theta - eps * direction)
        ) / (2 * eps)
        torch.testing.assert_close(meta_grad @ direction, numeric, rtol=1e-6, atol=1e-8)


class PeakLiveBytes(TorchDispatchMode):
    """The largest number of bytes held at once by storages that the ops inside the mode created (deterministic:
    a storage is counted from its creation until CPython frees it, however it is kept, autograd graph included)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.counted = set()

    def _freed(self, key, nbytes):
        self.counted.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t._is_view():
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.counted:
                    self.counted.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, nbytes)
        return out


def peak_bytes_of_a_meta_step(learner, batch):
    gc.collect()  # every measurement starts with no pending garbage cycles
    with PeakLiveBytes() as mode:
        loss, _ = learner.meta_loss(batch)
        loss.backward()
    return mode.peak


@pytest.mark.parametrize("proximal", ["every", "final"])
def test_memory_does_not_grow_with_the_inner_steps(proximal):
    batch = SinusoidTasks(shots=10, queries=10, seed=0).sample(0, range(4)).to(dtype=torch.float64)
    peaks = {}
    for steps in (5, 100):
        torch.manual_seed(0)
        model = MLP(1, [40, 40], 1).double()
        imaml = IMAML(model, inner_lr=0.01, inner_steps=steps, proximal=proximal, strategy="loop")
        torch.manual_seed(0)
        maml = MAML(MLP(1, [40, 40], 1).double(), inner_lr=0.01, inner_steps=steps // 5, strategy="loop")
        peaks[steps] = peak_bytes_of_a_meta_step(imaml, batch), peak_bytes_of_a_meta_step(maml, batch)
    assert peaks[100][1] > 5 * peaks[5][1]  # the measure sees MAML's inner graph grow (1 vs 20 steps)
    assert peaks[100][0] <= 1.05 * peaks[5][0]  # iMAML keeps no inner step: the same peak for 5 and 100 steps


SINE4 = SinusoidTasks(shots=10, queries=10, seed=0).sample(0, range(4)).to(dtype=torch.float64)


def image_tasks(tasks=3, ways=5, shots=1, queries=2):
    g = torch.Generator().manual_seed(0)
    labels = [torch.arange(ways).repeat(n).expand(tasks, -1).contiguous() for n in (shots, queries)]
    images = [torch.randn(tasks, ways * n, 1, 28, 28, generator=g, dtype=torch.float64) for n in (shots, queries)]
    return TaskBatch(images[0], labels[0], images[1], labels[1])


@pytest.mark.parametrize("task", ["sinusoid-all", "sinusoid-head", "conv4"])  # conv4: batch norm, second order
def test_vmap_and_loop_give_the_same_meta_gradient(task):
    if task == "conv4":
        batch, make = image_tasks(), lambda: Conv4(1, 8, out_features=5, image_size=28).double()
    else:
        batch = SinusoidTasks(shots=10, queries=10, seed=0).sample(3, range(5)).to(dtype=torch.float64)
        make = lambda: MLP(1, [40, 40], 1).double()  # noqa: E731
    results = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        adapt = "head" if task.endswith("head") else "all"
        learner = IMAML(make(), inner_lr=0.02, inner_steps=4, lam=2.0, adapt=adapt, strategy=strategy)
        loss, metrics = learner.meta_loss(batch)
        loss.backward()
        results[strategy] = loss.detach(), metrics["inner_residual"], grads_of(learner)
    for vmapped, looped in zip(*results.values()):
        torch.testing.assert_close(vmapped, looped, rtol=0, atol=1e-10)


def test_hessian_free_solver_reaches_the_closed_form_in_one_newton_step():
    """iMAML-HF on linear regression: G is quadratic, so one Newton step with CG run to the dimension (5) lands on
    phi* = (A + lam I)^-1 (b + lam theta) (the line search keeps t = 1), and the meta-gradient is the closed form's."""
    batch, lam = regression_tasks(), 0.7
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    learner = IMAML(model, 0.25, 1, lam, cg_steps=10, inner_solver="hf", hf_cg_steps=5, strategy="vmap")
    theta, eye = flatten([model.weight, model.bias]).detach(), torch.eye(5, dtype=torch.float64)
    expected_phi, expected_grads = [], []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        xs, xq = with_ones(sx), with_ones(qx)
        a, b = 2 * xs.T @ xs / len(xs), 2 * xs.T @ sy[:, 0] / len(xs)
        phi = torch.linalg.solve(a + lam * eye, b + lam * theta)
        expected_phi.append(phi)
        expected_grads.append(torch.linalg.solve(eye + a / lam, 2 * xq.T @ (xq @ phi - qy[:, 0]) / len(xq)))
    torch.testing.assert_close(flatten(learner.adapt(batch.support_x[1], batch.support_y[1])), expected_phi[1])
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    assert metrics["inner_residual"].max() < 1e-9
    torch.testing.assert_close(grads_of(learner), torch.stack(expected_grads).mean(0), rtol=0, atol=1e-6)


def test_hessian_free_steps_lower_the_proximal_objective_under_vmap_and_the_loop_alike():
    """On a batch-norm Conv-4 (non-convex G): each Newton-CG step with its line search never raises G and two of them
    lower it below two gradient-descent steps; on an MLP vmap = loop, and memory stays flat in the number of steps."""
    lam, g = 2.0, torch.Generator().manual_seed(0)
    sx, sy = torch.randn(5, 1, 16, 16, generator=g, dtype=torch.float64), torch.arange(5)
    torch.manual_seed(0)
    learner = IMAML(Conv4(1, 4, out_features=5, image_size=16).double(), 0.1, 2, lam, inner_solver="hf")
    gd = IMAML(learner.model, 0.1, 2, lam, strategy="loop")
    theta = learner.model_params()

    def objective(params):
        proximal = sum(((params[n] - theta[n]) ** 2).sum() for n in theta)
        return learner.support_loss(params, {}, sx, sy) + lam / 2 * proximal

    with torch.no_grad():
        hf_values = torch.stack([objective(p) for p in learner.solve(theta, sx, sy, 2, trajectory=True)])
        gd_value = objective(gd.solve(theta, sx, sy, 2))
    assert (hf_values.diff() <= 1e-12).all() and hf_values[-1] < gd_value < hf_values[0], (hf_values, gd_value)
    sine = SINE4[:2]
    results = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        mlp = IMAML(MLP(1, [40, 40], 1).double(), 0.1, 2, lam, inner_solver="hf", strategy=strategy)
        loss, metrics = mlp.meta_loss(sine)
        loss.backward()
        results[strategy] = loss.detach(), metrics["inner_residual"], grads_of(mlp)
    for vmapped, looped in zip(*results.values()):
        torch.testing.assert_close(vmapped, looped, rtol=0, atol=1e-10)
    peaks = [  # from the second step on, each step frees what the one before took
        peak_bytes_of_a_meta_step(IMAML(MLP(1, [40, 40], 1).double(), 0.1, k, lam, inner_solver="hf"), sine[:1])
        for k in (2, 4)
    ]
    assert peaks[1] <= 1.05 * peaks[0], peaks


def test_per_task_surrogates_carry_each_tasks_meta_gradient():
    batch = regression_tasks()
    learner = IMAML(nn.Linear(4, 1).double(), inner_lr=0.1, inner_steps=20, strategy="vmap")
    losses, _ = learner.meta_loss(batch, reduction="none")
    per_task = [torch.autograd.grad(losses[i], list(learner.parameters()), retain_graph=True) for i in range(3)]
    mean, _ = learner.meta_loss(batch)
    torch.testing.assert_close(losses.mean(), mean)
    mean.backward()
    torch.testing.assert_close(grads_of(learner), torch.stack([flatten(g) for g in per_task]).mean(0))
    assert not torch.allclose(flatten(per_task[0]), flatten(per_task[1]))


def test_meta_training_on_sinusoids_lowers_the_adapted_loss():
    tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    held_out = tasks.sample(10**6, range(100))
    torch.manual_seed(0)
    learner = IMAML(MLP(1, [40, 40], 1), inner_lr=0.02, inner_steps=5, lam=20.0, strategy="vmap")
    optimizer = torch.optim.Adam(learner.parameters(), lr=2e-3)
    before = learner.evaluate(held_out, [5])[5]["loss"].mean()
    for it in range(125):
        optimizer.zero_grad()
        loss, _ = learner.meta_loss(tasks.sample(it, range(10)))
        loss.backward()
        optimizer.step()
    after = learner.evaluate(held_out, [5])[5]["loss"].mean()
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize(
    "option, value",
    [
        ("inner_lr", 0.0),
        ("lam", -1.0),
        ("cg_damping", -0.1),
        ("cg_steps", 0),
        ("inner_steps", 0),
        ("inner_solver", "newton"),
        ("hf_cg_steps", 0),
        ("proximal", "sometimes"),
        ("cg_lam_damping", -1.0),
    ],
)
def test_bad_options_are_refused_naming_them(option, value):
    with pytest.raises(ValueError, match=option):
        IMAML(nn.Linear(2, 1), **{option: value})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"inner_solver": "hf"}, "inner_solver='gd'"),
        ({"inner_lr": 0.6, "lam": 2.0}, "inner_lr \\* lam <= 1"),
        ({"inner_lr": "fast"}, "inner_lr must be a positive number"),  # checked before the product is formed
    ],
)
def test_a_pull_back_needs_gradient_descent_and_a_rate_that_does_not_overshoot(options, message):
    with pytest.raises(ValueError, match=message):
        IMAML(nn.Linear(2, 1), proximal="final", **options)


# -- through the registry: config, builder, CLI ---------------------------------------------------------------
FAST = ["train.iterations=4", "train.val_every=2", "train.val_tasks=5", "train.checkpoint_every=2", "eval.tasks=10"]


def test_the_preset_builds_an_imaml_learner_with_its_options():
    overrides = ["algorithm.lam=3.5", "algorithm.cg_steps=7", "algorithm.cg_damping=0.25", "algorithm.adapt=head"]
    learner = build_learner(load_config("imaml-sine", overrides))
    assert isinstance(learner, IMAML) and learner.adapted_names == head_names(learner.model)
    assert (learner.inner_lr, learner.inner_steps, learner.lam, learner.cg_steps, learner.cg_damping) == (
        0.02,
        10,
        3.5,
        7,
        0.25,
    )


def test_the_omniglot_preset_is_the_released_code_and_bad_settings_name_the_key():
    learner = build_learner(load_config("imaml-omniglot-5w1s", ["model.filters=4"]))
    assert (learner.proximal, learner.cg_lam_damping, learner.cg_damping, learner.lam) == ("final", 10.0, 1.0, 2.0)
    for overrides, key in (
        (["algorithm.proximal=always"], "proximal"),
        (["algorithm.inner_solver=hf"], "proximal"),
        (["algorithm.inner_lr=0.6"], "inner_lr"),
        (["algorithm.cg_lam_damping=-1"], "cg_lam_damping"),
    ):
        with pytest.raises(ConfigError, match=rf"algorithm\.{key} must be"):
            load_config("imaml-omniglot-5w1s", overrides)


def test_train_resume_and_eval_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "imaml-sine", "--out", run, *FAST)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "split" not in r]
    assert [r["iteration"] for r in train_rows][-1] == 4 and all("inner_residual" in r for r in train_rows)
    code, _, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "imaml-sine",
        "--out",
        run,
        "--resume",
        *FAST[1:],
        "train.iterations=6",
    )
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", "10", "--steps", "0", "--steps", "3")
    assert code == 0 and "imaml" in out, err


def test_config_lists_imaml_and_its_options(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "config")
    section = out[out.index("algorithm.name=imaml") :].split("###")[0]
    assert code == 0 and all(f"`algorithm.{key}`" in section for key in ("lam", "cg_steps", "cg_damping", "adapt"))


@pytest.mark.parametrize(
    "override",
    [
        "algorithm.lam=0",
        "algorithm.cg_steps=0",
        "algorithm.inner_steps=0",
        "algorithm.cg_damping=-1",
        "algorithm.inner_solver=newton",
        "algorithm.hf_cg_steps=0",
    ],
)
def test_bad_imaml_settings_are_one_line_naming_the_key(tmp_path, monkeypatch, capsys, override):
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "imaml-sine", "--out", tmp_path / "x", override)
    assert code == 2 and err.count("\n") == 1 and override.split("=")[0] in err, err


def test_a_diverging_run_stops_in_one_line_proposing_a_larger_lambda(tmp_path, monkeypatch, capsys):
    args = ["train", "--config", "imaml-sine", "--out", tmp_path / "x", "train.iterations=3", "algorithm.inner_lr=1.0"]
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code != 0 and err.count("\n") == 1 and "diverged" in err and "raise algorithm.lam" in err, err
