"""innerloop.analysis (issue 23 items 1 and 4): similarity measures, what adaptation changes, learned rules read
out, black-box learners opened, and `innerloop analyze RUN` writing its report."""

import json
import math

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py
from torch import nn

from innerloop import ANIL, CNP, MAML, SNAIL
from innerloop.analysis import (
    activations,
    attention_weights,
    cnp_probe,
    linear_cka,
    linear_probe,
    parameter_change,
    pwcca,
    representation_similarity,
    response_curves,
    rule_readout,
    snail_attention,
    svcca,
)
from innerloop.core.rules import SGD, MetaCurvature, PerLayerPerStepRates, partition
from innerloop.errors import InputError
from innerloop.models import MLP
from innerloop.tasks import TaskBatch
from innerloop.tasks.fixed import EVAL_DRAW
from innerloop.tasks.sinusoid import SinusoidTasks


def features(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- similarity measures -----------------------------------------------------------------------------
def test_cka_of_a_representation_with_itself_is_one_and_invariant_to_rotation_and_scale():
    x = features(300, 20, 0) @ features(20, 20, 1)  # correlated features: CKA is not trivially 1
    q, _ = torch.linalg.qr(features(20, 20, 2))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-10)  # centring: a shift changes nothing
    # the n x n Gram form (wide features) agrees with the feature form
    wide = features(30, 200, 3)
    assert linear_cka(wide, wide @ torch.linalg.qr(features(200, 200, 4))[0]) == pytest.approx(1.0, abs=1e-10)
    # not invariant to a non-isotropic scaling: the measure can tell representations apart
    assert linear_cka(x, x * torch.linspace(0.1, 10, 20, dtype=torch.float64)) < 0.95


def test_cca_measures_are_one_for_invertible_maps_and_near_zero_for_independent_features():
    x = features(2000, 10, 0)
    a = features(10, 10, 1) + 3 * torch.eye(10, dtype=torch.float64)  # invertible, not orthogonal
    assert svcca(x, x @ a, keep=1.0) == pytest.approx(1.0, abs=1e-10)
    assert pwcca(x, x @ a) == pytest.approx(1.0, abs=1e-10)
    y = features(2000, 10, 5)  # independent of x, n >> d
    assert linear_cka(x, y) < 0.02
    assert svcca(x, y, keep=1.0) < 0.1
    assert pwcca(x, y) < 0.1
    with pytest.raises(InputError, match="same inputs"):
        linear_cka(x, y[:100])


# -- what adaptation changes ---------------------------------------------------------------------------
def sinusoid_learner(cls, **kw):
    torch.manual_seed(0)
    return cls(MLP(1, [16, 16], 1), **kw).double()


def test_parameter_change_is_exactly_zero_for_the_layers_anil_does_not_adapt():
    source = SinusoidTasks(shots=5, queries=5)
    anil = sinusoid_learner(ANIL, inner_lr=0.1, inner_steps=2)
    result = parameter_change(anil, source, steps=3, num_tasks=4)
    assert result["steps"] == [1, 2, 3] and result["tasks"] == 4
    body, head = {k: v for k, v in result["layers"].items() if k != "4"}, result["layers"]["4"]
    assert set(body) == {"0", "2"}
    for layer in body.values():
        assert not layer["adapted"] and layer["mean"] == [0.0, 0.0, 0.0] and layer["std"] == [0.0, 0.0, 0.0]
    assert head["adapted"] and 0 < head["mean"][0] < head["mean"][1] < head["mean"][2]
    # MAML adapts every layer: the body moves too
    maml = parameter_change(sinusoid_learner(MAML, inner_lr=0.1), source, steps=1, num_tasks=4)
    assert all(r["mean"][0] > 0 for r in maml["layers"].values())


def test_parameter_change_is_the_relative_norm_of_the_sgd_step():
    source = SinusoidTasks(shots=5, queries=5)
    maml = sinusoid_learner(MAML, inner_lr=0.1)
    batch = source.sample(EVAL_DRAW, [0], torch.float64)
    theta = {n: p.detach().requires_grad_() for n, p in maml.model_params().items()}
    g = torch.autograd.grad(
        nn.functional.mse_loss(maml(batch.support_x[0], theta), batch.support_y[0]), list(theta.values())
    )
    expected = float((0.1 * g[4]).norm().pow(2) + (0.1 * g[5]).norm().pow(2)) ** 0.5
    expected /= float(theta["4.weight"].detach().norm().pow(2) + theta["4.bias"].detach().norm().pow(2)) ** 0.5
    assert parameter_change(maml, source, steps=1, num_tasks=1)["layers"]["4"]["mean"][0] == pytest.approx(expected)


def test_representation_similarity_of_anil_is_one_in_the_body_and_lower_in_the_head():
    source = SinusoidTasks(shots=5, queries=10)
    anil = sinusoid_learner(ANIL, inner_lr=0.5)
    result = representation_similarity(anil, source, steps=3, num_tasks=5, measures=("cka", "svcca", "pwcca"))
    assert result["layers"] == ["0", "2", "4"]
    for layer in ("0", "2"):  # ANIL's body does not change: its features are the same
        assert result["adapted"][layer]["cka"] == pytest.approx(1.0, abs=1e-12)
        assert result["adapted"][layer]["svcca"] == pytest.approx(1.0, abs=1e-9)
    assert result["adapted"]["4"]["cka"] < 0.999
    assert result["finetune"]["0"]["cka"] < 1.0  # a plain fine-tune moves the body as well
    captured = activations(anil.model, anil.model_params(), torch.zeros(3, 1, dtype=torch.float64))
    assert {k: tuple(v.shape) for k, v in captured.items()} == {"0": (3, 16), "2": (3, 16), "4": (3, 1)}


def test_diverged_tasks_are_counted_and_left_out_not_averaged_in():
    source = SinusoidTasks(shots=5, queries=5)
    learner = sinusoid_learner(MAML, inner_lr=1e12)  # every adaptation diverges
    result = parameter_change(learner, source, steps=6, num_tasks=3)
    assert result["nonfinite"][-1] == 3 and all(math.isfinite(v) for r in result["layers"].values() for v in r["mean"])
    with pytest.raises(InputError, match="non-finite activations"):
        representation_similarity(learner, source, steps=6, num_tasks=2, finetune_lr=0.01)
    with pytest.raises(InputError, match="finite"):
        linear_cka(torch.full((4, 2), float("nan")), torch.ones(4, 2))


def test_a_forward_pass_learner_is_refused_by_the_inner_loop_analyses():
    with pytest.raises(InputError, match="no inner loop"):
        parameter_change(CNP(hidden=8, layers=2), SinusoidTasks(), steps=1, num_tasks=1)


# -- learned rules -------------------------------------------------------------------------------------
def test_rule_readout_reports_the_learned_rates_and_spectra():
    torch.manual_seed(0)
    rule = partition(("head", PerLayerPerStepRates(0.05)), ("all", MetaCurvature(0.01)))
    learner = MAML(MLP(1, [8], 1), update_rule=rule, inner_steps=3)
    with torch.no_grad():
        learner.update_rule.groups[0].rates["2__bias"][1] = 0.5
    readout = rule_readout(learner.update_rule)
    assert readout["lslr"] == {"2.weight": pytest.approx([0.05] * 3), "2.bias": pytest.approx([0.05, 0.5, 0.05])}
    assert set(readout["metacurvature"]) == {"0.weight", "0.bias"}
    assert readout["metacurvature"]["0.weight"] == [pytest.approx([1.0] * 8), pytest.approx([1.0])]


def test_response_curve_of_sgd_is_minus_lr_times_the_gradient():
    params = {"w": torch.zeros(50, 7, dtype=torch.float64)}
    sgd = SGD(0.3)
    sgd.bind({"w": params["w"].shape}, 1, params["w"])
    result = response_curves(sgd, params, scale=2.0, points=21)
    g = torch.tensor(result["g"])
    for curve in result["curves"].values():
        assert torch.allclose(torch.tensor(curve), -0.3 * g, atol=1e-12)


def test_response_curve_of_a_stateful_rule_depends_on_its_history():
    from innerloop.core.rules import LearnedOptimizerLSTM

    torch.manual_seed(0)
    rule = LearnedOptimizerLSTM(0.1)
    params = {"w": torch.zeros(40, dtype=torch.float64)}
    rule.bind({"w": params["w"].shape}, 2, params["w"])
    with torch.no_grad():
        rule.output.weight.normal_()  # a trained correction (the untrained one is zero: plain SGD)
    curves = response_curves(rule, params, scale=1.0, points=40)["curves"]
    assert curves["history=0"] != curves["history=0.5"] != curves["history=-0.5"]


# -- black-box learners ----------------------------------------------------------------------------------
def test_sinusoid_task_parameters_are_the_ones_sampled():
    source = SinusoidTasks(shots=4, queries=3, seed=3)
    batch, truth = source.sample(7, [0, 2, 5], torch.float64), source.task_parameters(7, [0, 2, 5])
    y = truth["amplitude"][:, None, None] * torch.sin(batch.support_x - truth["phase"][:, None, None])
    assert torch.allclose(y, batch.support_y, atol=1e-12)


def test_linear_probe_recovers_a_linear_code_and_not_noise():
    amplitude = torch.rand(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    r = amplitude[:, None] * features(1, 16, 1) + 0.01 * features(400, 16, 2)
    probe = linear_probe(r, {"amplitude": amplitude, "noise": features(400, 1, 3)[:, 0]})
    assert probe["amplitude"]["r2_fit"] > 0.999 and probe["amplitude"]["r2_heldout"] > 0.999
    assert probe["noise"]["r2_heldout"] < 0.2


def test_cnp_probe_of_a_briefly_trained_cnp_gives_r2_in_the_unit_interval():
    torch.manual_seed(0)
    source = SinusoidTasks(shots=10, queries=10)
    cnp = CNP(hidden=16, layers=2)
    opt = torch.optim.Adam(cnp.parameters(), lr=1e-2)
    for it in range(30):
        loss, _ = cnp.meta_loss(source.sample(it, range(16)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = cnp_probe(cnp, source, num_tasks=120, batch_size=60)
    assert result["representation_size"] == 16 and result["tasks"] == 120
    for target in ("amplitude", "phase", "A cos(phase)", "A sin(phase)"):
        assert 0.0 <= result["probe"][target]["r2_fit"] <= 1.0
    assert result["probe"]["amplitude"]["r2_fit"] > 0.3  # r encodes the amplitude after 30 steps
    with pytest.raises(InputError, match="task_parameters"):
        cnp_probe(cnp, TaskBatch(*(torch.zeros(1, 2, 1) for _ in range(4))), num_tasks=1)


def test_snail_attention_weights_reproduce_its_logits_and_sum_to_one():
    torch.manual_seed(0)
    embedding = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    snail = SNAIL(
        embedding, ways=3, shots=2, embedding_dim=8, architecture=(("attention", 4, 4), ("tc", 4), ("attention", 4, 4))
    )
    g = torch.Generator().manual_seed(1)
    images = lambda n: torch.randn(2, n, 1, 4, 4, generator=g)  # noqa: E731
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    batch = TaskBatch(images(6), labels, images(3), torch.tensor([[0, 1, 2], [1, 1, 0]]))
    weights, logits = attention_weights(snail, batch.support_x[0], batch.support_y[0], batch.query_x[0])
    assert torch.allclose(logits, snail(batch.support_x[0], batch.support_y[0], batch.query_x[0]), atol=1e-6)
    assert len(weights) == 2 and all(w.shape == (3, 7) for w in weights)
    assert all(torch.allclose(w.sum(-1), torch.ones(3)) for w in weights)
    result = snail_attention(snail, batch, episodes=1, num_tasks=2)
    assert result["tasks"] == 2 and len(result["episodes"]) == 1 and result["chance"] == pytest.approx(1 / 3)
    assert all(0.0 <= s <= 1.0 for s in result["own_class_share"]["mean"])


# -- the command -------------------------------------------------------------------------------------------
def test_innerloop_analyze_writes_the_report_of_a_short_maml_sine_run(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fast = ["train.iterations=2", "train.val_every=2", "train.val_tasks=2", "train.progress=false", "eval.tasks=2"]
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-lslr-sine", "--out", run, *fast)
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "analyze", run, "--tasks", 4, "--steps", 2)
    assert code == 0, err
    folder = run / "analysis" / "step-2-tasks4"
    assert str(folder / "report.md") in out
    report = json.loads((folder / "report.json").read_text())
    assert report["learner"] == "MAML" and report["parameter_change"]["steps"] == [1, 2]
    assert set(report["similarity"]["adapted"]) == {"0", "2", "4"}
    assert all(math.isfinite(v) for r in report["similarity"]["adapted"].values() for v in r.values())
    assert set(report["rule"]["lslr"]) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    for figure in ("parameter_change.png", "similarity.png", "rates.png"):
        assert (folder / figure).stat().st_size > 1000
        assert f"({figure})" in (folder / "report.md").read_text()
    first = (folder / "report.json").read_bytes()
    code, out, err = cli(monkeypatch, capsys, "analyze", run, "--tasks", 4, "--steps", 2)  # a rerun: a new folder
    assert code == 0, err
    assert (run / "analysis" / "step-2-tasks4-2" / "report.json").exists()
    assert (folder / "report.json").read_bytes() == first  # the earlier report is untouched
    code, _, err = cli(monkeypatch, capsys, "analyze", run, "--output", folder)  # never overwritten
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = cli(monkeypatch, capsys, "analyze", tmp_path / "nothing")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
