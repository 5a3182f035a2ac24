"""Baseline and Baseline++ (issue 20 item 5): the test-time fit is torch's SGD with the paper's settings (closed-form
gradients = autograd), it separates a separable support set, vmap = loop = leading task dimensions, the base-class
batches, the registry / preset / CLI path, and a short pre-training that beats the untrained network."""

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
from torch.func import grad

from innerloop.algorithms import BaseClassTasks, Baseline, BaselinePlusPlus
from innerloop.algorithms.baseline import FineTunedHead, cosine_scores
from innerloop.data import EpisodicTasks
from innerloop.errors import ConfigError, DatasetError, InputError
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch
from innerloop.training.builders import build_learner, build_tasks
from innerloop.training.config import load_config

D64 = torch.float64


def clusters(tasks=(), ways=5, shots=2, d=8, seed=0, spread=3.0):
    """Support embeddings ``(*tasks, ways * shots, d)`` around separated class centres and their one-hot labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots)
    centres = spread * torch.randn(*tasks, ways, d, generator=g, dtype=D64)
    z = centres[..., y, :] + 0.3 * torch.randn(*tasks, ways * shots, d, generator=g, dtype=D64)
    return z, F.one_hot(y, ways).to(D64).expand(*tasks, ways * shots, ways)


@pytest.mark.parametrize("cosine", [False, True])
def test_the_closed_form_gradient_is_autograd_s(cosine):
    head = FineTunedHead(cosine=cosine)
    z, y = clusters()
    draw, _ = head.schedule(5, 8, 10)
    params = {"weight": draw[:, :8].clone(), ("gain" if cosine else "bias"): draw[:, 8].abs() + 0.5}
    auto = grad(lambda p: -(y * head.scores(p, z).log_softmax(-1)).sum(-1).mean())(params)
    for key, value in head.gradient(params, z, y).items():
        torch.testing.assert_close(value, auto[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cosine", [False, True])
def test_the_test_time_fit_is_torch_sgd_with_the_paper_s_settings(cosine):
    """100 epochs over the support set in batches of 4: torch.optim.SGD(lr=0.01, momentum=0.9, dampening=0.9,
    weight_decay=0.001) on an nn.Linear (Baseline) or a weight-normalised cosine layer (Baseline++), from the
    head's own initialisation and batch order, ends at the same classifier."""
    head = FineTunedHead(cosine=cosine)
    z, y = clusters(shots=3)  # 15 examples: batches of 4, 4, 4, 3
    labels = y.argmax(-1)
    draw, orders = head.schedule(5, 8, 15)
    weight = nn.Parameter(draw[:, :8].clone())
    second = nn.Parameter(weight.detach().norm(dim=-1) if cosine else draw[:, 8].clone())
    opt = torch.optim.SGD([weight, second], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    for order in orders:
        for start in range(0, 15, 4):
            idx = order[start : start + 4]
            scores = cosine_scores(z[idx], weight, second, 2.0) if cosine else F.linear(z[idx], weight, second)
            opt.zero_grad()
            F.cross_entropy(scores, labels[idx]).backward()
            opt.step()
    fitted = head.fit(z, y)
    torch.testing.assert_close(fitted["weight"], weight.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fitted["gain" if cosine else "bias"], second.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cosine", [True, False])
def test_the_fit_classifies_a_separable_support_set_perfectly(cosine):
    head = FineTunedHead(cosine=cosine)
    for seed in range(3):
        z, y = clusters(ways=5, shots=1, d=16, seed=seed)
        logits = head.logits(head.fit(z, y), z)
        assert (logits.argmax(-1) == y.argmax(-1)).all(), seed


@pytest.mark.parametrize("cosine", [False, True])
def test_the_fit_under_vmap_on_leading_dimensions_and_per_task_agree(cosine):
    head = FineTunedHead(cosine=cosine, epochs=5)
    z, y = clusters(tasks=(3,))
    per_task = [head.fit(z[t], y[t]) for t in range(3)]
    for fitted in (torch.vmap(head.fit)(z, y), head.fit(z, y)):
        for t in range(3):
            for key, value in per_task[t].items():
                torch.testing.assert_close(fitted[key][t], value, rtol=1e-12, atol=1e-14)


def images(tasks=3, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    x = lambda n: torch.rand(tasks, ways * n, 1, size, size, generator=g, dtype=D64)  # noqa: E731
    return TaskBatch(x(shots), y, x(queries), yq)


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus])
def test_evaluate_vmap_and_loop_agree_and_meta_loss_is_the_base_classifier_s(cls):
    batch = images()
    out = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        learner = cls(Conv4(1, 4, image_size=16), num_classes=12, finetune_epochs=10, strategy=strategy).double()
        out[strategy] = learner.evaluate(batch)[0]
    for key in ("loss", "accuracy"):
        torch.testing.assert_close(out["vmap"][key], out["loop"][key], rtol=1e-9, atol=1e-12)
    base = TaskBatch(batch.support_x, batch.support_y + 3, batch.query_x, batch.query_y + 9)  # base-class ids
    loss, _ = learner.meta_loss(base)
    x = torch.cat([base.support_x, base.query_x], 1).flatten(0, 1)
    y = torch.cat([base.support_y, base.query_y], 1).flatten()
    expected = F.cross_entropy(learner.classifier(learner.embed(None, x)), y)  # one batch: its batch statistics
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match=r"12 base classes but the batch holds label 13.*BaseClassTasks\(source\)"):
        learner.meta_loss(TaskBatch(base.support_x, base.support_y, base.query_x, base.query_y + 2))


def synthetic(classes=40, per_class=12, seed=0):
    """4x4 uint8 images: 4 pixels carry the class (a fixed pattern, little noise), the other 12 are uniform noise."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 256, (classes, 4), generator=g).float()
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = torch.randint(0, 256, (len(labels), 16), generator=g).float()
    x[:, :4] = (pattern[labels] + 8 * torch.randn(len(labels), 4, generator=g)).clamp(0, 255)
    return SimpleNamespace(images=x.to(torch.uint8).view(-1, 1, 4, 4), labels=labels)


def test_base_class_tasks_label_each_example_with_its_class_table_id():
    data = synthetic()
    source = EpisodicTasks(data, ways=5, shots=2, queries=3, seed=1)
    base = BaseClassTasks(source)
    batch, plain = base.sample(4, [0, 2]), source.sample(4, [0, 2])
    classes = source.task_classes(4, [0, 2])
    assert base.num_classes == 40 and torch.equal(batch.support_x, plain.support_x)
    assert torch.equal(batch.support_y, classes.gather(1, plain.support_y))
    assert torch.equal(batch.query_y, classes.gather(1, plain.query_y))
    ids = source.image_indices(4, [0, 2])  # the images really are of those classes
    assert torch.equal(data.labels[ids[..., :2].flatten(1)], batch.support_y)
    with pytest.raises(TypeError, match="EpisodicTasks"):
        BaseClassTasks(object())


@pytest.mark.parametrize("cls", [Baseline, BaselinePlusPlus])
def test_a_short_pre_training_lowers_the_loss_and_beats_the_untrained_network(cls):
    """80 Adam steps over the 30 base classes of a synthetic dataset whose class lives in 4 of 16 pixels: the base
    loss falls and 5-way 1-shot accuracy on 10 unseen classes rises clearly above the untrained embedding's."""
    data = synthetic()
    base_classes = torch.arange(len(data.labels)) < 30 * 12
    train = SimpleNamespace(images=data.images[base_classes], labels=data.labels[base_classes])
    test = SimpleNamespace(images=data.images[~base_classes], labels=data.labels[~base_classes] - 30)
    tasks = BaseClassTasks(EpisodicTasks(train, ways=8, shots=2, queries=2, seed=0))
    held_out = EpisodicTasks(test, ways=5, shots=1, queries=5, seed=1).sample(0, range(40))
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    learner = cls(body, num_classes=tasks.num_classes, feature_dim=16, finetune_epochs=20)
    before, probe = learner.evaluate(held_out)[0]["accuracy"].mean(), tasks.sample(10**6, range(4))
    loss_before = learner.meta_loss(probe)[0].item()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for it in range(80):
        opt.zero_grad()
        learner.meta_backward(tasks.sample(it, range(2)))
        opt.step()
    assert learner.meta_loss(probe)[0].item() < 0.7 * loss_before
    after = learner.evaluate(held_out)[0]["accuracy"].mean()
    assert after > before + 0.15, (float(before), float(after))


def test_the_presets_build_their_learners_and_bad_settings_name_the_key():
    for name, cls in (("baseline", Baseline), ("baseline++", BaselinePlusPlus)):
        config = load_config(f"{name}-omniglot-5w1s", ["algorithm.finetune_epochs=7", "model.filters=4"])
        learner = build_learner(config)
        assert type(learner) is cls and learner.head.epochs == 7 and learner.head.cosine == (cls is BaselinePlusPlus)
        train = build_tasks(config, "train")
        assert isinstance(train, BaseClassTasks) and learner.num_classes == train.num_classes  # characters x rotations
        assert not isinstance(build_tasks(config, "val"), BaseClassTasks)  # validation and test: plain episodes
    for override in ("algorithm.finetune_epochs=0", "algorithm.finetune_momentum=2", "algorithm.scale=0"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config("baseline++-omniglot-5w1s", [override])


@needs_omniglot
def test_stated_base_classes_are_checked_against_the_data_and_build_without_it(tmp_path, monkeypatch):
    found = build_learner(load_config("baseline-omniglot-5w1s", ["model.filters=4"])).num_classes
    stated = build_learner(
        load_config("baseline-omniglot-5w1s", ["model.filters=4", f"algorithm.base_classes={found}"])
    )
    assert stated.num_classes == found == 4 * 1028  # characters x rotations of the Vinyals train split
    with pytest.raises(ConfigError, match=f"algorithm.base_classes=64 but the train split has {found} classes"):
        build_learner(load_config("baseline-omniglot-5w1s", ["model.filters=4", "algorithm.base_classes=64"]))
    monkeypatch.setenv("INNERLOOP_DATA", str(tmp_path))  # no mini-ImageNet here: the preset's 64 classes are used
    assert build_learner(load_config("baseline++-miniimagenet-5w1s", ["model.filters=4"])).num_classes == 64
    with pytest.raises(DatasetError, match="mini-ImageNet train not found"):
        build_learner(load_config("baseline++-miniimagenet-5w1s", ["algorithm.base_classes=null"]))


@needs_omniglot
def test_train_and_eval_baseline_pp_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    small = ["model.filters=8", "algorithm.finetune_epochs=5"]
    code, out, err = cli(
        monkeypatch, capsys, "train", "--config", "baseline++-omniglot-5w1s", "--out", run, *FAST, *small
    )
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())["results"]["1"]["0"]
    assert result["accuracy"]["n"] == 4 and 0 <= result["accuracy"]["mean"] <= 1
    code, out, err = cli(monkeypatch, capsys, "eval", run, "--tasks", "3", "--shots", "2")  # other shots at test
    assert code == 0 and "2-shot" in out, err
