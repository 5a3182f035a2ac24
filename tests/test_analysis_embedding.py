"""Feature reuse of embedding learners (innerloop.analysis.embedding): the fine-tune of ProtoNets' embedding."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py

from innerloop import MAML, ProtoNets
from innerloop.analysis import analyze, embedding_finetune, embedding_similarity
from innerloop.analysis.embedding import _task_loss
from innerloop.errors import InputError
from innerloop.models import MLP, Conv4
from innerloop.tasks import TaskBatch


def images(tasks=4, ways=3, shots=2, queries=3, size=16, seed=0) -> TaskBatch:
    """Random images whose class shifts their mean brightness (so the support loss carries a signal)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)

    def x(labels):
        return torch.rand(*labels.shape, 1, size, size, generator=g, dtype=torch.float64) + 0.3 * labels[
            ..., None, None, None
        ].to(torch.float64)

    return TaskBatch(x(y), y, x(yq), yq)


def protonets(seed=0) -> ProtoNets:
    torch.manual_seed(seed)
    return ProtoNets(Conv4(1, 4, image_size=16)).double()


def test_a_fine_tune_of_rate_zero_leaves_every_layer_identical_and_the_scores_unchanged():
    sim = embedding_similarity(protonets(), images(), steps=2, lr=0.0, num_tasks=4)
    assert sim["tasks"] == 4 and sim["layers"] and sim["nonfinite"] == 0
    for n in sim["layers"]:
        assert sim["finetune"][n]["cka"] == pytest.approx(1.0, abs=1e-9)
        assert sim["finetune"][n]["svcca"] == pytest.approx(1.0, abs=1e-6)
        assert sim["change"][n] == {"mean": 0.0, "std": 0.0}
    assert sim["scores"]["accuracy"] == sim["scores"]["finetune_accuracy"]
    assert sim["scores"]["loss"] == sim["scores"]["finetune_loss"]


def test_the_fine_tune_lowers_the_support_loss_and_moves_every_layer():
    learner, batch = protonets(), images(tasks=1)
    sx, sy = batch.support_x[0], batch.support_y[0]
    with torch.no_grad():
        before = float(_task_loss(learner, learner.model_params(), sx, sy, 3)[0])
    own = {n: p.detach().clone() for n, p in learner.state_dict().items()}
    tuned = embedding_finetune(learner, sx, sy, steps=3, lr=0.01)
    after = float(_task_loss(learner, tuned, sx, sy, 3)[0])
    assert after < before
    theta = learner.model_params()
    weights = [n for n in theta if n.endswith("weight")]  # a conv bias before batch norm gets no gradient
    assert set(tuned) == set(theta) and weights and all(not torch.equal(tuned[n], theta[n]) for n in weights)
    assert all(torch.equal(v, own[n]) for n, v in learner.state_dict().items())  # the learner's own are untouched
    sim = embedding_similarity(learner, images(), steps=3, lr=0.01, num_tasks=4)
    assert all(sim["change"][n]["mean"] > 0 for n in sim["layers"])
    assert sim["scores"]["finetune_loss"]["mean"] < sim["scores"]["loss"]["mean"]
    assert all(0.0 <= sim["finetune"][n]["cka"] <= 1.0 + 1e-9 for n in sim["layers"])


def test_a_learner_without_an_embedding_head_is_refused_in_one_line():
    with pytest.raises(InputError, match="not one: use representation_similarity") as err:
        embedding_similarity(MAML(MLP(1, [8], 1)), images(), num_tasks=1)
    assert "\n" not in str(err.value)


def test_analyze_reports_the_embedding_fine_tune_of_protonets(tmp_path):
    report = analyze(protonets(), images(), tmp_path / "report", steps=2, num_tasks=4, finetune_lr=0.005)
    assert report["kind"] == "embedding" and not report["notes"]
    assert report["similarity"]["steps"] == 2 and report["similarity"]["finetune_lr"] == 0.005
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["similarity"]["layers"] == report["similarity"]["layers"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "fine-tune of the embedding" in md and "(similarity.png)" in md
    assert (tmp_path / "report" / "similarity.png").stat().st_size > 1000


def test_innerloop_analyze_takes_the_fine_tune_rate(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fast = ["train.iterations=2", "train.val_every=2", "train.val_tasks=2", "train.progress=false", "eval.tasks=2"]
    code, _, err = cli(monkeypatch, capsys, "train", "--config", "maml-sine", "--out", run, "--no-evaluate", *fast)
    assert code == 0, err
    code, _, err = cli(monkeypatch, capsys, "analyze", run, "--tasks", 2, "--steps", 1, "--finetune-lr", 0.05)
    assert code == 0, err
    report = json.loads((run / "analysis" / "step-2-tasks2" / "report.json").read_text())
    assert report["similarity"]["finetune_lr"] == 0.05
