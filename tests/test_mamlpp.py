"""MAML++ (Antoniou et al. 2019): multi-step loss weights, per-step batch norm, derivative-order annealing,
the meta-gradient against float64 finite differences with every switch on, vmap = loop, config and CLI."""

import json
import math
import shutil

import pytest
import torch
from cli_runner import cli  # tests/cli_runner.py
from torch import nn

from innerloop import MAML, MAMLPlusPlus, PerLayerPerStepRates, TaskBatch
from innerloop.algorithms.mamlpp import multi_step_weights
from innerloop.core.rules import SGD
from innerloop.errors import CheckpointError, ConfigError
from innerloop.training.builders import build_learner
from innerloop.training.config import load_config
from innerloop.training.trainer import Trainer


def tiny_conv(seed: int = 0) -> nn.Module:
    """conv 3x3 -> batch norm -> tanh -> linear: smooth, so finite differences are exact to rounding."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()


def conv_batch(tasks: int = 3, seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def images(n):
        return torch.randn(tasks, n, 1, 5, 5, generator=g, dtype=torch.float64)

    labels = torch.arange(3).repeat(2).expand(tasks, 6)
    return TaskBatch(images(6), labels, images(6), labels)


def learner(strategy: str = "vmap", **kwargs) -> MAMLPlusPlus:
    options = dict(inner_steps=3, msl_epochs=2, epoch_iterations=1, strategy=strategy)
    options.update(kwargs)
    options.setdefault("update_rule", PerLayerPerStepRates(0.3))
    return MAMLPlusPlus(tiny_conv(), **options)


def meta_grads(model: nn.Module, batch: TaskBatch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.meta_loss(batch)[0].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- multi-step loss
def test_multi_step_weights_match_hand_values_sum_to_one_and_reach_the_last_step():
    cases = {  # (steps, epoch, anneal epochs): weights by hand from the released code's schedule
        (5, 0, 10): [0.2] * 5,
        (5, 5, 10): [0.1] * 4 + [0.6],
        (5, 9, 10): [0.02] * 4 + [0.92],
        (5, 99, 100): [0.006] * 4 + [0.976],  # non-final weights floored at 0.03 / N
        (2, 9, 10): [0.05, 0.95],
        (5, 10, 10): [0.0] * 4 + [1.0],  # annealed: the last step alone
        (5, 3, 0): [0.0] * 4 + [1.0],  # msl_epochs=0: MSL off
    }
    for (steps, epoch, anneal), expected in cases.items():
        weights = multi_step_weights(steps, epoch, anneal)
        assert weights == pytest.approx(expected, abs=1e-12), (steps, epoch, anneal)
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)


def test_msl_loss_is_the_weighted_sum_of_the_per_step_query_losses_and_follows_the_epoch():
    model = learner(inner_steps=3, msl_epochs=2, epoch_iterations=2)
    batch = conv_batch()
    for iteration, expected in ((0, [1 / 3] * 3), (3, [1 / 6, 1 / 6, 2 / 3]), (4, [0, 0, 1])):
        model.iteration.fill_(iteration)
        assert model.step_weights() == pytest.approx(expected)
        msl, metrics = model.meta_loss(batch, reduction="none")
        per_step = model.evaluate(batch, steps=[1, 2, 3])
        by_hand = sum(w * per_step[k + 1]["loss"] for k, w in enumerate(expected))
        torch.testing.assert_close(msl.detach(), by_hand, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(metrics["loss"], per_step[3]["loss"], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- per-step batch norm
def test_per_step_batch_norm_parameters_get_gradients_train_apart_and_act_at_their_own_step():
    model = learner(inner_steps=3)
    batch = conv_batch()
    assert set(model.adapted_names) == {"0.weight", "0.bias", "4.weight", "4.bias"}  # not adapted in the inner loop
    assert {n: tuple(p.shape) for n, p in model.step_norms.items()} == {"1__weight": (2, 2), "1__bias": (2, 2)}
    grads = meta_grads(model, batch)
    for name in ("model.1.weight", "model.1.bias", "step_norms.1__weight", "step_norms.1__bias"):
        rows = grads[name].reshape(-1, 2)
        assert all(row.abs().sum() > 1e-8 for row in rows), name  # every step's row gets a gradient
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        model.meta_step(batch, optimizer)
    assert int(model.iteration) == 3  # meta_step advances the schedules' clock
    step0, later = model.model[1].weight.detach(), model.step_norms["1__weight"].detach()
    assert (step0 - later[0]).abs().max() > 1e-3 and (later[0] - later[1]).abs().max() > 1e-3
    before = model.evaluate(batch, steps=[1, 2])
    with torch.no_grad():  # step 1's bias: used by the support pass of step 1 and the query after it
        model.step_norms["1__bias"][0] += 0.5
    after = model.evaluate(batch, steps=[1, 2])
    torch.testing.assert_close(after[1]["loss"], before[1]["loss"], rtol=0, atol=0)
    assert (after[2]["loss"] - before[2]["loss"]).abs().min() > 1e-6


def test_step_k_normalises_its_support_pass_and_the_query_after_it_with_row_k():
    model = learner(inner_steps=3, update_rule=SGD(0.3))
    with torch.no_grad():
        for p in model.step_norms.values():
            p.add_(0.5 * torch.randn_like(p))
    batch = conv_batch(tasks=1)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    theta = {n: p.detach() for n, p in model.model.named_parameters()}

    def with_row(params, k):  # step k's batch-norm weight and bias: the model's at k = 0, else step_norms row k - 1
        rows = {
            n: theta[n] if k == 0 else model.step_norms[n.replace(".", "__")][k - 1].detach()
            for n in ("1.weight", "1.bias")
        }
        return {**params, **rows}

    def loss(params, x, y):
        return nn.functional.cross_entropy(torch.func.functional_call(model.model, params, (x,)), y)

    fast, expected = dict(theta), []
    for k in range(3):  # by hand: SGD on the support loss with row k, then the query with row k
        grads = torch.func.grad(loss)(with_row(fast, k), sx, sy)
        fast = {n: p - 0.3 * grads[n] if n in model.adapted_names else p for n, p in fast.items()}
        expected.append(loss(with_row(fast, k), qx, qy))
    result = model.evaluate(batch, steps=[1, 2, 3])
    for k in range(3):
        torch.testing.assert_close(result[k + 1]["loss"][0], expected[k], rtol=1e-10, atol=1e-12)


def test_untrained_per_step_batch_norm_is_maml_and_switching_it_off_is_maml():
    batch = conv_batch()
    for per_step_bn in (True, False):  # per-step rows start as the model's own; MSL off: the last step's loss
        mpp = learner(inner_steps=2, msl_epochs=0, per_step_bn=per_step_bn, update_rule=SGD(0.3))
        maml = MAML(tiny_conv(), inner_lr=0.3, inner_steps=2, adapt=mpp.adapted_names, strategy="vmap")
        torch.testing.assert_close(mpp.meta_loss(batch)[0], maml.meta_loss(batch)[0], rtol=1e-12, atol=1e-12)
        ours, theirs = meta_grads(mpp, batch), meta_grads(maml, batch)
        for name in mpp.norm_names:  # MAML's batch-norm gradient is the sum over the steps' rows
            ours[f"model.{name}"] += ours.pop(f"step_norms.{name.replace('.', '__')}").sum(0)
        assert set(ours) == set(theirs)
        for name, g in theirs.items():
            torch.testing.assert_close(ours[name], g, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- derivative-order annealing
def test_derivative_order_switches_from_fomaml_to_maml_at_the_configured_epoch():
    batch = conv_batch()
    mpp = learner(inner_steps=2, msl_epochs=0, per_step_bn=False, first_order_epochs=2, update_rule=SGD(0.3))
    fomaml = MAML(tiny_conv(), inner_lr=0.3, inner_steps=2, first_order=True, strategy="vmap")
    maml = MAML(tiny_conv(), inner_lr=0.3, inner_steps=2, strategy="vmap")
    first, second = meta_grads(fomaml, batch), meta_grads(maml, batch)
    assert max((first[n] - second[n]).abs().max() for n in first) > 1e-4  # the two orders really differ here
    for iteration, expected in ((0, first), (1, first), (2, second), (5, second)):
        mpp.iteration.fill_(iteration)
        assert mpp.second_order_now() is (expected is second)
        ours = meta_grads(mpp, batch)
        for name, g in expected.items():
            torch.testing.assert_close(ours[name], g, rtol=1e-10, atol=1e-12, msg=f"{name} at {iteration}")


# --------------------------------------------------------------------------- exactness
def test_meta_gradient_with_every_switch_on_matches_float64_finite_differences():
    model = learner(inner_steps=3, msl_epochs=4)  # MSL mid-anneal, per-step BN, LSLR, second order
    model.iteration.fill_(1)
    batch = conv_batch()
    with torch.no_grad():  # per-step rows apart from the model's, so a wrong row would show
        for p in model.step_norms.values():
            p.add_(0.3 * torch.randn_like(p))
    grads = meta_grads(model, batch)
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    torch.manual_seed(3)
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    eps = 1e-6

    def loss_at(sign: float) -> float:
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * direction[n])
            value = float(model.meta_loss(batch)[0])
            for n, p in params.items():
                p.sub_(sign * eps * direction[n])
        return value

    numeric = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    analytic = float(sum((grads[n] * direction[n]).sum() for n in params))
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_vmap_loop_and_recomputed_steps_give_the_same_meta_gradient():
    batch = conv_batch(tasks=4)
    vm, loop, recomputed = learner("vmap"), learner("loop"), learner("loop", checkpoint_steps=True)
    for model in (vm, loop, recomputed):
        model.load_state_dict(vm.state_dict())
        model.iteration.fill_(1)
    a = meta_grads(vm, batch)
    for other in (loop, recomputed):
        b = meta_grads(other, batch)
        assert set(a) == set(b)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- bad input
def test_per_step_batch_norm_without_batch_norm_and_batch_norm_only_adaptation_are_refused():
    with pytest.raises(ConfigError, match="has no batch-norm layer; set per_step_bn=False"):
        MAMLPlusPlus(nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="selects only batch-norm parameters"):
        MAMLPlusPlus(tiny_conv(), adapt=r"^1\.")
    with pytest.raises(ConfigError, match="per_step_bn=True keeps one per inner step"):
        MAMLPlusPlus(tiny_conv()).clone()


# --------------------------------------------------------------------------- learning
def blob_tasks(draw: int, tasks: int = 8, ways: int = 3, shots: int = 2, queries: int = 5) -> TaskBatch:
    """Few-shot classification of noisy copies of random 6x6 class prototypes (labels per task)."""
    g = torch.Generator().manual_seed(draw)
    prototypes = torch.randn(tasks, ways, 1, 6, 6, generator=g)

    def examples(n):
        y = torch.arange(ways).repeat(n)
        return prototypes[:, y] + 1.5 * torch.randn(tasks, ways * n, 1, 6, 6, generator=g), y.expand(tasks, -1)

    return TaskBatch(*examples(shots), *examples(queries))


def test_a_short_run_beats_the_untrained_learner_on_held_out_tasks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 3))
    rule = PerLayerPerStepRates(0.05)
    model = MAMLPlusPlus(net, update_rule=rule, inner_steps=3, msl_epochs=2, epoch_iterations=20, strategy="vmap")
    test = blob_tasks(10**6, tasks=100)

    def held_out() -> dict[str, float]:
        return {k: float(v.mean()) for k, v in model.evaluate(test, steps=[3])[3].items()}

    untrained = held_out()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for iteration in range(60):
        model.meta_step(blob_tasks(iteration), optimizer)
    trained = held_out()
    assert int(model.iteration) == 60 and model.step_weights() == [0.0, 0.0, 1.0]  # MSL annealed at epoch 2
    assert trained["loss"] < 0.75 * untrained["loss"], (untrained, trained)
    assert trained["accuracy"] > untrained["accuracy"] + 0.08, (untrained, trained)


# --------------------------------------------------------------------------- config, preset, trainer
def test_the_preset_is_the_papers_configuration_and_builds_the_learner():
    config = load_config("mamlpp-omniglot-5w1s", [])
    a, t = config.algorithm, config.train
    assert (a.name, a.inner_steps, a.update_rule, a.inner_lr, a.per_step_bn) == ("mamlpp", 5, "lslr", 0.1, True)
    assert (a.msl_epochs, a.first_order_epochs, a.epoch_iterations, t.iterations) == (10, 50, 500, 50000)
    assert (t.lr_schedule, t.meta_lr, t.min_lr, t.meta_batch_size) == ("cosine", 0.001, 1e-5, 8)
    small = load_config("mamlpp-omniglot-5w1s", ["model.filters=4", "algorithm.first_order_epochs=0"])
    model = build_learner(small)
    assert isinstance(model, MAMLPlusPlus) and isinstance(model.update_rule, PerLayerPerStepRates)
    assert len(model.step_norms) == 8 and model.second_order_now()  # 4 blocks x (weight, bias); 4 rows each
    with pytest.raises(ConfigError, match=r"algorithm\.epoch_iterations must be >= 1 for mamlpp"):
        load_config("mamlpp-omniglot-5w1s", ["algorithm.epoch_iterations=0"])
    with pytest.raises(ConfigError, match=r"train\.lr_schedule"):
        load_config("maml-sine", ["train.lr_schedule=linear"])


SINE = [
    "algorithm.name=mamlpp",
    "algorithm.per_step_bn=false",
    "algorithm.inner_steps=2",
    "algorithm.msl_epochs=2",
    "algorithm.first_order_epochs=1",
    "algorithm.epoch_iterations=2",
    "algorithm.strategy=vmap",
    "train.lr_schedule=cosine",
    "train.min_lr=0.0001",
    "train.meta_lr=0.01",
    "train.iterations=6",
    "train.checkpoint_every=3",
    "train.keep_checkpoints=3",
    "train.meta_batch_size=4",
    "train.val_every=100",
    "train.val_tasks=4",
    "train.log_every=1",
    "train.progress=false",
]


def test_the_cli_trains_mamlpp_and_refuses_per_step_batch_norm_without_batch_norm(tmp_path, monkeypatch, capsys):
    code, _, err = cli(
        monkeypatch, capsys, "train", "-c", "maml-sine", "algorithm.name=mamlpp", "--out", tmp_path / "a"
    )
    assert (
        code == 2 and err.strip().startswith("error: algorithm.per_step_bn=true") and len(err.strip().splitlines()) == 1
    )
    args = ["train", "-c", "maml-sine", *SINE, "train.iterations=2", "--out", tmp_path / "b", "--no-evaluate"]
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "msl_loss", "grad_norm"} <= set(records[0])


def test_cosine_schedule_and_the_learners_clock_resume_exactly(tmp_path):
    full = Trainer(load_config("maml-sine", SINE, out_dir=str(tmp_path / "full")))
    full.fit()
    lrs = [full.optimizer.param_groups[0]["lr"]]
    expected = 0.0001 + (0.01 - 0.0001) * (1 + math.cos(math.pi * 6 / 6)) / 2  # CosineAnnealingLR at T_max
    assert lrs[0] == pytest.approx(expected) and int(full.learner.iteration) == 6
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "full", split)
    shutil.rmtree(split / "checkpoints" / "step-00000006")  # as if stopped after the checkpoint at 3
    resumed = Trainer(load_config("maml-sine", SINE, out_dir=str(split)), resume=True)
    assert resumed.start_iteration == 3 and int(resumed.learner.iteration) == 3
    resumed.fit()
    a, b = full.learner.state_dict(), resumed.learner.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.optimizer.param_groups[0]["lr"] == lrs[0]
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "split" not in r] == list(range(1, 7))
    with pytest.raises(CheckpointError, match=r"train\.iterations=6"):
        Trainer(load_config("maml-sine", [*SINE, "train.iterations=8"], out_dir=str(split)), resume=True)
