"""Conditional Neural Processes: permutation invariance, the likelihood, batching paths, learning,
the config guard against inner steps, and the command line."""

import json
import math

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py

from innerloop.algorithms import CNP
from innerloop.algorithms.cnp import CNPNet, gaussian_nll
from innerloop.errors import ConfigError
from innerloop.tasks import SinusoidTasks, TaskBatch
from innerloop.training.builders import build_learner
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import load_config


def cnp64(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CNP(**kwargs).double()


def sine_batch(tasks=4, shots=10, queries=10, seed=0, dtype=torch.float64) -> TaskBatch:
    return SinusoidTasks(shots, queries, seed=seed).sample(0, range(tasks), dtype=dtype)


# --------------------------------------------------------------------------- the model


def test_prediction_ignores_the_order_of_the_support_set_but_not_its_content():
    learner = cnp64()
    b = sine_batch(tasks=1)
    sx, sy, qx = b.support_x[0], b.support_y[0], b.query_x[0]
    mu, sigma = learner(sx, sy, qx)
    assert mu.shape == sigma.shape == (10, 1)
    r = learner.adapt(sx, sy)  # the two-call form: the representation, then the Gaussian at the queries
    assert r.shape == (128,) and all(torch.equal(a, b) for a, b in zip(learner.predict(r, qx), (mu, sigma)))
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        perm = torch.randperm(10, generator=g)
        assert not torch.equal(perm, torch.arange(10))
        mu_p, sigma_p = learner(sx[perm], sy[perm], qx)
        torch.testing.assert_close(mu_p, mu, rtol=0, atol=1e-12)
        torch.testing.assert_close(sigma_p, sigma, rtol=0, atol=1e-12)
    # Moving one support target moves the prediction: the support set is really read.
    moved = sy.clone()
    moved[4] += 1.0
    mu_m, sigma_m = learner(sx, moved, qx)
    assert (mu_m - mu).abs().max() > 1e-4 and (sigma_m - sigma).abs().max() > 1e-6


def test_sigma_is_floored_and_nll_is_the_gaussian_log_density():
    learner = cnp64()
    b = sine_batch(tasks=1)
    mu, sigma = learner(b.support_x[0], b.support_y[0], b.query_x[0])
    assert (sigma > 0.1).all()
    # A huge negative raw sigma still gives the floor 0.1, not 0.
    net = learner.model
    with torch.no_grad():
        net.decoder[-1].bias[1] = -1e4
    assert torch.allclose(learner(b.support_x[0], b.support_y[0], b.query_x[0])[1], torch.full_like(sigma, 0.1))
    y = b.query_y[0]
    expected = -torch.distributions.Normal(mu, sigma).log_prob(y).sum(-1)
    torch.testing.assert_close(gaussian_nll(y, mu, sigma), expected, rtol=1e-12, atol=1e-12)


def test_evaluate_reports_query_mse_as_loss_and_the_same_metrics_at_every_step():
    learner = cnp64()
    b = sine_batch(tasks=3)
    results = learner.evaluate(b, [5, 0, 1])
    assert set(results) == {0, 1, 5}
    for t in range(3):
        mu, sigma = learner(b.support_x[t], b.support_y[t], b.query_x[t])
        torch.testing.assert_close(results[0]["loss"][t], ((mu - b.query_y[t]) ** 2).mean(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            results[0]["nll"][t], gaussian_nll(b.query_y[t], mu, sigma).mean(), rtol=1e-12, atol=1e-12
        )
    for s in (1, 5):
        assert set(results[s]) == {"loss", "nll"}
        for name in ("loss", "nll"):
            assert torch.equal(results[s][name], results[0][name])
    loss, metrics = learner.meta_loss(b)
    torch.testing.assert_close(loss, results[0]["nll"].mean())  # the objective is the NLL ...
    torch.testing.assert_close(metrics["loss"], results[0]["loss"].mean())  # ... "loss" the MSE, as for MAML
    with pytest.raises(ValueError, match="steps"):
        learner.evaluate(b, [-1])


# --------------------------------------------------------------------------- batching and gradients


def test_vmap_loop_and_a_leading_task_dimension_agree_on_loss_and_gradients():
    b = sine_batch(tasks=5)
    out = {}
    for strategy in ("vmap", "loop"):
        learner = cnp64(strategy=strategy)
        loss, _ = learner.meta_loss(b)
        out[strategy] = (loss, torch.autograd.grad(loss, list(learner.parameters())))
    # The network itself also takes the task dimension directly: a third, independent path.
    learner = cnp64()
    mu, sigma = learner.model(b.support_x, b.support_y, b.query_x)
    loss = gaussian_nll(b.query_y, mu, sigma).mean()
    out["batched"] = (loss, torch.autograd.grad(loss, list(learner.parameters())))
    assert any(g.abs().max() > 1e-4 for g in out["loop"][1])
    for other in ("vmap", "batched"):
        torch.testing.assert_close(out[other][0], out["loop"][0], rtol=0, atol=1e-10)
        for g, g_loop in zip(out[other][1], out["loop"][1]):
            torch.testing.assert_close(g, g_loop, rtol=0, atol=1e-10)
    ev = {s: cnp64(strategy=s).evaluate(b, [0])[0] for s in ("vmap", "loop")}
    for name in ("loss", "nll"):
        torch.testing.assert_close(ev["vmap"][name], ev["loop"][name], rtol=0, atol=1e-10)


def test_the_meta_gradient_reaches_every_parameter_and_only_meta_parameters_exist():
    learner = cnp64(strategy="vmap")
    names = [n for n, _ in learner.named_parameters()]
    assert names == [f"model.{n}" for n, _ in learner.model.named_parameters()]
    assert len(names) == 12  # 3 linear layers in the encoder, 3 in the decoder, weight and bias each
    loss, _ = learner.meta_loss(sine_batch(tasks=4))
    loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_hidden_as_widths_and_as_width_times_layers():
    assert [m.out_features for m in CNP(hidden=32, layers=2).model.encoder if hasattr(m, "out_features")] == [32, 32]
    net = CNP(hidden=[16, 24, 8]).model
    assert [m.out_features for m in net.encoder if hasattr(m, "out_features")] == [16, 24, 8]
    assert [m.out_features for m in net.decoder if hasattr(m, "out_features")] == [16, 24, 2]
    assert net.decoder[0].in_features == 1 + 8  # x* and r
    with pytest.raises(ValueError, match="empty"):
        CNPNet(widths=[])


# --------------------------------------------------------------------------- learning


def test_a_short_meta_training_run_learns_to_regress_unseen_sinusoids():
    torch.manual_seed(0)
    learner = CNP(strategy="vmap")  # float32, the default width: 3 + 3 layers of 128
    train = SinusoidTasks(shots=10, queries=10, seed=0)
    held_out = SinusoidTasks(shots=10, queries=100, seed=1).sample(0, range(200))
    untrained = learner.evaluate(held_out, [0])[0]["loss"].mean()
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for iteration in range(450):  # ~5 s on one core
        opt.zero_grad()
        loss, _ = learner.meta_loss(train.sample(iteration, range(25)))
        loss.backward()
        opt.step()
    trained = learner.evaluate(held_out, [0])[0]["loss"].mean()
    assert untrained > 2.5  # predicting ~0 on sinusoids of amplitude up to 5
    assert trained < 0.5 * untrained, (float(untrained), float(trained))


# --------------------------------------------------------------------------- configuration


def test_the_preset_builds_the_papers_network():
    cfg = load_config("cnp-sine")
    assert cfg.algorithm.name == "cnp" and cfg.eval.steps == [0] and cfg.train.meta_batch_size == 25
    learner = build_learner(cfg)
    assert isinstance(learner, CNP)
    assert [m.out_features for m in learner.model.encoder if hasattr(m, "out_features")] == [128, 128, 128]
    load_config("cnp-sine", ["algorithm.eval_steps=0"])  # asking for zero steps is fine
    with pytest.raises(ValueError, match="pass no model"):
        build_learner(cfg, model=CNPNet())


@pytest.mark.parametrize(
    "preset, overrides, asked, fix",
    [
        ("cnp-sine", ["algorithm.inner_steps=1"], "algorithm.inner_steps=1", "set algorithm.inner_steps=0"),
        ("cnp-sine", ["algorithm.eval_steps=5"], "algorithm.eval_steps=5", "leave algorithm.eval_steps unset"),
        ("cnp-sine", ["eval.steps=[0,1,5]"], "eval.steps=[0, 1, 5]", "set eval.steps=[0]"),
        # On top of a MAML preset both its inner steps and its step columns are named.
        (
            "maml-sine",
            ["algorithm.name=cnp"],
            "algorithm.inner_steps=1, algorithm.eval_steps=10, eval.steps=[0, 1, 5, 10]",
            "set algorithm.inner_steps=0, leave algorithm.eval_steps unset, set eval.steps=[0]",
        ),
    ],
)
def test_inner_steps_for_a_forward_pass_learner_are_refused_with_the_fix(preset, overrides, asked, fix):
    with pytest.raises(ConfigError) as err:
        load_config(preset, overrides)
    message = str(err.value)
    assert "one forward pass" in message and asked in message and fix in message


def test_other_inner_loop_options_and_classification_are_refused_for_cnp():
    with pytest.raises(ConfigError, match="update_rule"):
        load_config("cnp-sine", ["algorithm.update_rule=lslr"])
    with pytest.raises(ConfigError, match="regression only"):
        load_config("cnp-sine", ["task.name=omniglot", "model.name=conv4"])


# --------------------------------------------------------------------------- command line


def test_train_and_eval_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "cnp"
    code, out, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "cnp-sine",
        "--out",
        run,
        "train.iterations=20",
        "train.val_every=10",
        "train.val_tasks=10",
        "train.checkpoint_every=10",
        "train.log_every=5",
        "train.progress=false",
        "eval.tasks=20",
    )
    assert code == 0, err
    assert "trained cnp for 20 iterations" in out and "5-shot, 0 steps" in out
    assert "validation: loss=" in out and "nll=" in out
    assert load_checkpoint(run).iteration == 20

    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", 30, "--shots", 5, "--output", tmp_path / "e.json")
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("query MSE"))
    assert "5-shot, 0 steps" in lines[header] and lines[header + 1].startswith("cnp")
    result = json.loads((tmp_path / "e.json").read_text())["results"]["5"]["0"]
    assert result["loss"]["n"] == 30 and math.isfinite(result["nll"]["mean"])

    # Asking a forward-pass learner for adaptation steps is one clear line, not a table of copies.
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--steps", 0, "--steps", 5)
    assert code == 2 and "one forward pass" in err and "set eval.steps=[0]" in err and "Traceback" not in err
