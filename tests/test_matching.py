"""Matching Networks (issue 20 item 4): the cosine attention head against a hand computation, full context
embeddings (shapes, that they change the embedding, finite-difference gradients), vmap = loop, the registry /
preset / CLI path, and short training runs that beat the untrained network."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cli_runner import FAST_CLI_RUN as FAST
from cli_runner import cli  # tests/cli_runner.py
from shared_data import needs_omniglot  # tests/shared_data.py
from torch import nn

from innerloop.algorithms import MatchingNets
from innerloop.algorithms.matching import FullContextEmbedding, MatchingHead, cosine_attention_logits
from innerloop.data import EpisodicTasks
from innerloop.errors import ConfigError
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch
from innerloop.training.builders import build_learner
from innerloop.training.config import load_config

D64 = torch.float64


def images(tasks=3, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    x = lambda n: torch.rand(tasks, ways * n, 1, size, size, generator=g, dtype=D64)  # noqa: E731
    return TaskBatch(x(shots), y, x(queries), yq)


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_cosine_attention_equals_a_hand_computation(scale):
    """P(y = k | x) = sum_i softmax_i(c cos(x, x_i)) [y_i = k], computed element by element."""
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(5, 4, generator=g, dtype=D64), torch.randn(3, 4, generator=g, dtype=D64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    head = MatchingHead(scale=scale)
    log_p = head.logits(head.fit(support, F.one_hot(labels, 3).to(D64)), query)
    for q in range(3):
        cos = [float(query[q] @ support[i] / (query[q].norm() * support[i].norm())) for i in range(5)]
        weights = torch.tensor(cos, dtype=D64).mul(scale).softmax(0)
        for k in range(3):
            expected = sum(float(weights[i]) for i in range(5) if labels[i] == k)
            assert log_p[q, k].exp().item() == pytest.approx(expected, rel=1e-12)


def test_a_class_without_support_gets_no_mass_and_finite_gradients():
    support = torch.randn(4, 3, dtype=D64, requires_grad=True)
    onehot = F.one_hot(torch.tensor([0, 0, 1, 1]), 3).to(D64)  # class 2 absent
    log_p = cosine_attention_logits(torch.randn(2, 3, dtype=D64), support, onehot, 50.0)
    assert (log_p[:, 2].exp() == 0).all()
    torch.testing.assert_close(log_p[:, :2].exp().sum(-1), torch.ones(2, dtype=D64))
    log_p[:, :2].sum().backward()
    assert torch.isfinite(support.grad).all()


def test_fce_shapes_and_it_changes_the_embedding():
    torch.manual_seed(0)
    fce = FullContextEmbedding(6, steps=3).double()
    support, query = torch.randn(2, 5, 6, dtype=D64), torch.randn(2, 4, 6, dtype=D64)  # leading task dimension
    g = fce.support(support)
    f = fce.query(query, g)
    assert g.shape == (2, 5, 6) and f.shape == (2, 4, 6)
    assert (g - support).abs().min() > 0 and (f - query).abs().min() > 0
    # the bidirectional LSTM reads the whole support set: changing the last example moves the first one's g
    moved = support.clone()
    moved[:, -1] += 1.0
    assert (fce.support(moved)[:, 0] - g[:, 0]).abs().max() > 1e-6
    head = MatchingHead(fce)
    onehot = F.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).to(D64).expand(2, 5, 3)
    assert not torch.allclose(
        head.logits(head.fit(support, onehot), query), MatchingHead().logits((support, onehot), query)
    )


def test_fce_gradients_match_finite_differences():
    torch.manual_seed(0)
    fce = FullContextEmbedding(3, steps=2).double()
    head = MatchingHead(fce, scale=3.0)
    onehot = F.one_hot(torch.tensor([0, 1, 0]), 2).to(D64)
    support = torch.randn(3, 3, dtype=D64, requires_grad=True)
    query = torch.randn(2, 3, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, q: head.logits(head.fit(s, onehot), q), (support, query))
    weight = fce.attention_lstm.gates.weight  # and through the LSTMs' own parameters
    base = weight.detach().clone()

    def of_weight(w):
        with torch.no_grad():
            weight.copy_(w)
        return head.logits(head.fit(support.detach(), onehot), query.detach()).sum()

    of_weight(base).backward()
    analytic = weight.grad.clone()
    eps, i = 1e-6, (1, 2)
    bumped = base.clone()
    bumped[i] += eps
    plus = of_weight(bumped).item()
    bumped[i] -= 2 * eps
    minus = of_weight(bumped).item()
    of_weight(base)
    assert analytic[i].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("fce", [False, True])
def test_vmap_and_loop_agree_on_loss_and_gradients(fce):
    batch = images()
    out = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        learner = MatchingNets(Conv4(1, 4, image_size=16), fce=fce, fce_steps=2, scale=5.0, strategy=strategy).double()
        loss, _ = learner.meta_loss(batch)
        grads = torch.autograd.grad(loss, list(learner.parameters()))
        out[strategy] = loss, grads
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(out["vmap"][1], out["loop"][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    assert len(out["vmap"][1]) > len(list(Conv4(1, 4, image_size=16).parameters())) or not fce  # the LSTMs learn


def test_adapt_and_predict_are_what_evaluate_scores():
    torch.manual_seed(0)  # no batch norm: evaluate embeds support and query in one pass, adapt/predict apart
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten())
    learner = MatchingNets(body, fce=True, feature_dim=64).double()
    batch = images()
    results = learner.evaluate(batch)[0]
    for t in range(batch.num_tasks):
        log_p = learner.predict(learner.adapt(batch.support_x[t], batch.support_y[t]), batch.query_x[t])
        assert log_p.shape == (6, 3)
        torch.testing.assert_close(results["loss"][t], F.cross_entropy(log_p, batch.query_y[t]), rtol=1e-9, atol=0)


def test_fce_needs_the_embedding_size():
    with pytest.raises(ValueError, match="feature_dim="):
        MatchingNets(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), fce=True)


def test_the_preset_builds_its_learner_and_bad_settings_name_the_key():
    learner = build_learner(load_config("matchingnets-omniglot-5w1s", ["algorithm.fce=true", "algorithm.scale=4"]))
    assert isinstance(learner, MatchingNets) and learner.head.fce is not None and learner.head.scale == 4
    for override in ("algorithm.scale=0", "algorithm.fce_steps=0"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config("matchingnets-omniglot-5w1s", [override])


@needs_omniglot
def test_train_and_eval_the_preset_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    small = ["task.queries=2", "train.meta_batch_size=2", "model.filters=8", "algorithm.fce=true"]
    code, out, err = cli(
        monkeypatch, capsys, "train", "--config", "matchingnets-omniglot-5w1s", "--out", run, *FAST, *small
    )
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())["results"]["1"]["0"]
    assert result["accuracy"]["n"] == 4 and 0 <= result["accuracy"]["mean"] <= 1
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", "3", "--shots", "2")  # other shots at test
    assert code == 0 and "2-shot" in out, err


def synthetic(classes=40, per_class=12, seed=0):
    """4x4 uint8 images: 4 pixels carry the class (a fixed pattern, little noise), the other 12 are uniform noise."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 256, (classes, 4), generator=g).float()
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = torch.randint(0, 256, (len(labels), 16), generator=g).float()
    x[:, :4] = (pattern[labels] + 8 * torch.randn(len(labels), 4, generator=g)).clamp(0, 255)
    return SimpleNamespace(images=x.to(torch.uint8).view(-1, 1, 4, 4), labels=labels)


@pytest.mark.parametrize("fce", [False, True])
def test_a_short_training_beats_the_untrained_network(fce):
    """60 Adam steps on 5-way 1-shot episodes of 30 synthetic classes whose class lives in 4 of 16 pixels: the
    query loss and the accuracy on episodes of 10 unseen classes improve clearly over the untrained embedding's."""
    data = synthetic()
    base = torch.arange(len(data.labels)) < 30 * 12
    train = EpisodicTasks(SimpleNamespace(images=data.images[base], labels=data.labels[base]), 5, 1, 5, seed=0)
    test = SimpleNamespace(images=data.images[~base], labels=data.labels[~base] - 30)
    held_out = EpisodicTasks(test, ways=5, shots=1, queries=5, seed=1).sample(0, range(40))
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    learner = MatchingNets(body, fce=fce, feature_dim=16, scale=5.0)
    before = learner.evaluate(held_out)[0]
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for it in range(60):
        opt.zero_grad()
        learner.meta_backward(train.sample(it, range(8)))
        opt.step()
    after = learner.evaluate(held_out)[0]
    assert after["loss"].mean() < 0.8 * before["loss"].mean(), (before["loss"].mean(), after["loss"].mean())
    assert after["accuracy"].mean() > before["accuracy"].mean() + 0.15
