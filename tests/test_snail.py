"""SNAIL: causal blocks and network, one sequence per query (the shared support prefix equals the full
sequences), queries independent of each other, the support labels are read, batching paths, gradients,
learning, the config guards, and the command line."""

import json

import pytest
import torch
import torch.nn.functional as F
from cli_runner import cli  # tests/cli_runner.py
from shared_data import needs_omniglot  # tests/shared_data.py
from torch import nn

from innerloop.algorithms import SNAIL
from innerloop.algorithms.snail import AttentionBlock, DenseBlock, SNAILNet, SupportBatchNorm, content_order
from innerloop.errors import ConfigError
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch
from innerloop.training.builders import build_learner
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import load_config


def snail64(ways=3, shots=2, hidden=4, seed=0, **kwargs) -> SNAIL:
    """A small float64 SNAIL on 16x16 images (Conv-4 of ``hidden`` filters: ``hidden`` features)."""
    torch.manual_seed(seed)
    return SNAIL(Conv4(1, hidden, image_size=16), ways=ways, shots=shots, **kwargs).double()


def episode_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=0, dtype=torch.float64) -> TaskBatch:
    """Random images, labels class-major as EpisodicTasks lists them (0,0,1,1,2,2)."""
    g = torch.Generator().manual_seed(seed)

    def labels(n):
        return torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)

    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype),
        labels(shots),
        torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype),
        labels(queries),
    )


def changed_positions(a: torch.Tensor, b: torch.Tensor, tol=1e-9) -> list[int]:
    """Sequence positions (dim -2) where two outputs (..., L, C) differ."""
    diff = (a - b).abs().flatten(0, -3).amax(0).amax(-1)  # (L,)
    return (diff > tol).nonzero().flatten().tolist()


# --------------------------------------------------------------------------- the blocks


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_a_dense_block_reads_exactly_the_current_and_the_dilated_past_element(dilation):
    torch.manual_seed(0)
    block = DenseBlock(3, 4, dilation).double()
    h = torch.randn(2, 9, 3, dtype=torch.float64)
    out = block(h)
    assert out.shape == (2, 9, 7) and torch.equal(out[..., :3], h)  # the output is concatenated to the input
    for j in range(9):
        moved = h.clone()
        moved[:, j] += 1.0
        assert changed_positions(block(moved), out) == [t for t in (j, j + dilation) if t < 9], j


def test_the_attention_block_is_causal_and_matches_a_hand_computation():
    torch.manual_seed(0)
    block = AttentionBlock(5, 4, 3).double()
    h = torch.randn(2, 7, 5, dtype=torch.float64)
    out = block(h)
    assert out.shape == (2, 7, 8) and torch.equal(out[..., :5], h)
    q, k, v = block.query(h), block.key(h), block.value(h)
    for t in range(7):
        p = torch.softmax((q[:, t : t + 1] * k[:, : t + 1]).sum(-1) / 2.0, -1)  # sqrt(key size 4) = 2
        torch.testing.assert_close(out[:, t, 5:], (p.unsqueeze(-1) * v[:, : t + 1]).sum(1), rtol=1e-12, atol=1e-12)
    for j in range(7):  # a later element never reaches an earlier output; every output from j on reads it
        moved = h.clone()
        moved[:, j] += 1.0
        assert changed_positions(block(moved), out) == list(range(j, 7)), j


# --------------------------------------------------------------------------- the network


def test_the_papers_few_shot_architecture():
    learner = SNAIL()  # 5-way 1-shot, Conv-4-64 on 28x28: 64 features; T = 6, ceil(log2 6) = 3 dense blocks
    net = learner.model
    attention, tc1, _, tc2, _ = net.blocks
    assert [m.key.out_features for m in net.blocks[::2]] == [64, 256, 512]
    assert [m.value.out_features for m in net.blocks[::2]] == [32, 128, 256]
    assert tc1.dilations == tc2.dilations == [1, 2, 4]  # ceil(log2 T) blocks, receptive field 8 >= T
    assert attention.query.in_features == 64 + 5  # embedding and one-hot label
    channels = 64 + 5 + 32 + 3 * 128 + 128 + 3 * 128 + 256
    assert (net.head.in_features, net.head.out_features) == (channels, 5) == (1253, 5)
    assert not any(isinstance(m, nn.Linear) for m in net.embedding.modules())  # Conv-4 without a head
    assert [n for n, _ in learner.named_parameters()] == [f"model.{n}" for n, _ in net.named_parameters()]
    assert sum(isinstance(m, SupportBatchNorm) for m in net.embedding.modules()) == 4
    assert SNAIL(first_dilation=2).model.blocks[1].dilations == [2, 4, 8]  # the pseudocode's 2^i, i = 1..3
    assert SNAIL(Conv4(1, 8), ways=20, shots=5).model.blocks[3].dilations == [1, 2, 4, 8, 16, 32, 64]  # T = 101
    small = SNAIL(Conv4(1, 8), architecture=[("tc", 4), ("attention", 3, 2)]).model
    assert [type(b).__name__ for b in small.blocks] == ["TCBlock", "AttentionBlock"] and small.head.in_features == 27
    with pytest.raises(ValueError, match="architecture entries"):
        SNAIL(architecture=[("lstm", 32)])


@pytest.mark.parametrize("first_dilation", [1, 2])
def test_the_network_is_causal(first_dilation):
    torch.manual_seed(0)
    net = SNAILNet(Conv4(1, 4, image_size=16), ways=3, shots=2, first_dilation=first_dilation).double()
    u = torch.randn(2, 7, 4 + 3, dtype=torch.float64)  # T = 3 * 2 + 1
    logits = net.sequence(u)
    assert logits.shape == (2, 7, 3)
    for j in range(7):
        moved = u.clone()
        moved[:, j] += 0.5
        changed = changed_positions(net.sequence(moved), logits, tol=1e-12)
        # Perturbing element j leaves every earlier output unchanged; perturbing the query (j = 6)
        # changes the last position only.
        assert changed and min(changed) == j, (j, changed)


@pytest.mark.parametrize("first_dilation", [1, 2])
def test_one_sequence_per_query_equals_the_full_sequences(first_dilation):
    """The shared support prefix + one position per query gives the last-position logits of each full
    sequence [support, query] (T = 7: dilations 2, 4, 8 include one reaching before the start)."""
    learner = snail64(first_dilation=first_dilation)
    b = episode_batch(tasks=2, queries=3)
    sx, sy = learner.order(b.support_x, b.support_y)
    logits = learner.model(sx, sy, b.query_x)
    assert logits.shape == (2, 9, 3)
    prefix, new = learner.model.inputs(sx, sy, b.query_x)  # (2, 6, D + N), (2, 9, D + N)
    sequences = torch.cat([prefix.unsqueeze(1).expand(2, 9, *prefix.shape[1:]), new.unsqueeze(2)], 2)
    assert sequences.shape == (2, 9, 7, 4 + 3)
    assert torch.equal(new[..., 4:], torch.zeros(2, 9, 3, dtype=torch.float64))  # the query's label is zeros
    torch.testing.assert_close(logits, learner.model.sequence(sequences)[..., -1, :], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- what a prediction depends on


def test_a_prediction_does_not_depend_on_the_other_queries_or_tasks():
    learner = snail64()
    b = episode_batch(tasks=3, queries=2)
    sx, sy, qx = b.support_x[0], b.support_y[0], b.query_x[0]
    logits = learner(sx, sy, qx)  # (6, 3)
    torch.testing.assert_close(learner(sx, sy, qx[[4, 1]]), logits[[4, 1]], rtol=0, atol=1e-12)
    torch.testing.assert_close(learner(sx, sy, qx[2:3]), logits[2:3], rtol=0, atol=1e-12)
    moved = qx.clone()
    moved[3] += 1.0
    assert changed_positions(learner(sx, sy, moved).unsqueeze(0), logits.unsqueeze(0)) == [3]
    # Batch statistics are per task: a task's metrics do not depend on the tasks beside it.
    together = learner.evaluate(b)[0]
    alone = learner.evaluate(b.task(1))[0]
    torch.testing.assert_close(together["loss"][1:2], alone["loss"], rtol=0, atol=1e-12)


def test_the_prediction_reads_the_support_labels():
    learner = snail64()
    b = episode_batch(tasks=1)
    sx, sy, qx = b.support_x[0], b.support_y[0], b.query_x[0]
    logits = learner(sx, sy, qx)
    renamed = torch.tensor([2, 0, 1])[sy]  # the same images under other label names
    assert (learner(sx, renamed, qx) - logits).abs().max() > 1e-4
    swapped = sy.clone()
    swapped[[0, 5]] = sy[[5, 0]]
    assert (learner(sx, swapped, qx) - logits).abs().max() > 1e-4


def test_the_support_order_is_a_function_of_the_support_set():
    b = episode_batch(tasks=4, ways=3, shots=2)
    perm = content_order(b.support_x)
    assert sorted(perm[0].tolist()) == list(range(6))
    # Not the class-major order of the batch: positions say nothing about labels.
    assert any(not torch.equal(learner_order, torch.arange(6)) for learner_order in perm)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = TaskBatch(b.support_x[:, shuffle], b.support_y[:, shuffle], b.query_x, b.query_y)
    learner = snail64()
    assert torch.equal(learner.evaluate(shuffled)[0]["loss"], learner.evaluate(b)[0]["loss"])
    as_given = snail64(support_order="batch")
    assert (as_given.evaluate(shuffled)[0]["loss"] - as_given.evaluate(b)[0]["loss"]).abs().max() > 1e-6
    sx, sy = learner.order(b.support_x, b.support_y)
    for t in range(4):  # the support pairs are reordered together
        for i in range(6):
            j = int(perm[t, i])
            assert torch.equal(sx[t, i], b.support_x[t, j]) and sy[t, i] == b.support_y[t, j]


# --------------------------------------------------------------------------- batching and gradients


def test_flat_vmap_and_loop_agree_on_loss_and_gradients():
    b = episode_batch(tasks=3, queries=2)
    out = {}
    for name, kwargs in {
        "flat": {},
        "vmap": {"flatten_tasks": False, "strategy": "vmap"},
        "loop": {"flatten_tasks": False, "strategy": "loop"},
    }.items():
        learner = snail64(**kwargs)
        loss, metrics = learner.meta_loss(b)
        assert not metrics["loss"].requires_grad
        out[name] = (loss, torch.autograd.grad(loss, list(learner.parameters())), learner.evaluate(b, [0])[0])
    assert any(g.abs().max() > 1e-4 for g in out["loop"][1])
    for other in ("flat", "vmap"):
        torch.testing.assert_close(out[other][0], out["loop"][0], rtol=0, atol=1e-12)
        for g, g_loop in zip(out[other][1], out["loop"][1]):
            torch.testing.assert_close(g, g_loop, rtol=0, atol=1e-12)
        for name in ("loss", "accuracy"):
            torch.testing.assert_close(out[other][2][name], out["loop"][2][name], rtol=0, atol=1e-12)


def test_every_parameter_receives_a_meta_gradient():
    torch.manual_seed(0)
    learner = SNAIL()  # the paper's sizes, 5-way 1-shot on 28x28
    b = episode_batch(tasks=2, ways=5, shots=1, queries=1, size=28, dtype=torch.float32)
    loss, _ = learner.meta_loss(b)
    loss.backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_evaluate_reports_cross_entropy_at_the_query_and_the_same_metrics_at_every_step():
    learner = snail64()
    b = episode_batch(tasks=2, queries=3)
    results = learner.evaluate(b, [5, 0, 1])
    assert set(results) == {0, 1, 5}
    for t in range(2):
        logits = learner(b.support_x[t], b.support_y[t], b.query_x[t])
        torch.testing.assert_close(results[0]["loss"][t], F.cross_entropy(logits, b.query_y[t]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(results[0]["accuracy"][t], (logits.argmax(-1) == b.query_y[t]).double().mean())
    for s in (1, 5):
        assert set(results[s]) == {"loss", "accuracy"}
        assert all(torch.equal(results[s][n], results[0][n]) for n in ("loss", "accuracy"))
    loss, metrics = learner.meta_loss(b)
    torch.testing.assert_close(loss, results[0]["loss"].mean())
    torch.testing.assert_close(metrics["accuracy"], results[0]["accuracy"].mean())
    with pytest.raises(ValueError, match="steps"):
        learner.evaluate(b, [-1])


def test_bad_inputs_are_refused():
    learner = snail64()  # 3-way 2-shot
    b = episode_batch(tasks=1, ways=3, shots=1)
    with pytest.raises(ValueError, match=r"3-way 2-shot sequences, i\.e\. 6 support examples per task, got 3"):
        learner.meta_loss(b)
    b = episode_batch(tasks=1)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        learner.meta_loss(TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y + 1))
    with pytest.raises(TypeError, match="integer class labels"):
        learner.adapt(b.support_x[0], b.support_y[0].double())
    with pytest.raises(ValueError, match="support_order"):
        SNAIL(support_order="random")
    with pytest.raises(ValueError, match="embedding_dim"):
        SNAIL(nn.Sequential(nn.Flatten()))
    assert SNAIL(nn.Sequential(nn.Flatten()), embedding_dim=256, ways=2, shots=1).model.head.out_features == 2


# --------------------------------------------------------------------------- learning


def smooth_patterns(n, g):
    return F.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=28, mode="bilinear", align_corners=False)


def pattern_episodes(patterns, tasks, g, ways=5, queries=2, noise=0.5) -> TaskBatch:
    """5-way 1-shot: each task draws 5 of the patterns and a random label for each; images = pattern + noise.
    Labels are a fresh assignment in every task, so they can only be read off the support set."""
    out = []
    for _ in range(tasks):
        chosen = patterns[torch.randperm(len(patterns), generator=g)[:ways]]
        x = chosen.repeat_interleave(1 + queries, 0)
        x = (x + noise * torch.randn(x.shape, generator=g)).view(ways, 1 + queries, 1, 28, 28)
        y = torch.arange(ways)[:, None].expand(ways, 1 + queries)
        out.append(
            TaskBatch(
                x[:, :1].reshape(1, -1, 1, 28, 28),
                y[:, :1].reshape(1, -1),
                x[:, 1:].reshape(1, -1, 1, 28, 28),
                y[:, 1:].reshape(1, -1),
            )
        )
    return TaskBatch.cat(out)


SMALL = (("attention", 16, 16), ("tc", 32), ("attention", 32, 32), ("tc", 32), ("attention", 64, 32))


@pytest.mark.slow
def test_snail_learns_a_synthetic_one_shot_problem_by_reading_the_labels():
    """5-way 1-shot on 12 fixed random patterns plus noise; 260 Adam steps of 4 tasks (about 15 s on one
    core) take held-out tasks far above chance (20%). The labels are a fresh assignment in every task,
    so only reading the support labels gets there; renaming the classes of the test tasks changes nothing.
    The paper's blocks at a quarter of their widths: the full network learns too, but needs more steps
    to leave chance than fit a unit test."""
    g = torch.Generator().manual_seed(0)
    patterns = smooth_patterns(12, g)
    torch.manual_seed(0)
    learner = SNAIL(Conv4(1, 16), ways=5, shots=1, architecture=SMALL)
    test = pattern_episodes(patterns, 40, torch.Generator().manual_seed(1))
    rename = torch.tensor([3, 0, 4, 1, 2])
    renamed = TaskBatch(test.support_x, rename[test.support_y], test.query_x, rename[test.query_y])

    def accuracy(batch):
        return learner.evaluate(batch)[0]["accuracy"].mean().item()

    before = accuracy(test)
    opt = torch.optim.Adam(learner.parameters(), lr=2e-3, fused=True)
    for _ in range(260):
        opt.zero_grad()
        learner.meta_backward(pattern_episodes(patterns, 4, g))
        opt.step()
    after, after_renamed = accuracy(test), accuracy(renamed)
    assert before < 0.3 and after > 0.6 and after_renamed > 0.6, (before, after, after_renamed)


# --------------------------------------------------------------------------- configuration


def test_the_preset_builds_the_papers_omniglot_learner():
    cfg = load_config("snail-omniglot-5w1s")
    assert cfg.algorithm.name == "snail" and cfg.algorithm.inner_steps == 0 and cfg.eval.steps == [0]
    assert (cfg.task.name, cfg.task.ways, cfg.task.shots, cfg.eval.shots) == ("omniglot", 5, 1, [1])
    assert cfg.train.meta_batch_size == 32 and cfg.train.optimizer == "adam"
    learner = build_learner(cfg)
    assert isinstance(learner, SNAIL) and (learner.ways, learner.shots) == (5, 1)
    assert learner.model.embedding_dim == 64 and learner.model.head.in_features == 1253
    assert not any(isinstance(m, nn.Linear) for m in learner.model.embedding.modules())
    load_config("snail-omniglot-5w1s", ["algorithm.eval_steps=0", "eval.ways=5"])  # zero steps, same ways: fine


@pytest.mark.parametrize(
    "preset, overrides, words",
    [
        (
            "snail-omniglot-5w1s",
            ["algorithm.inner_steps=1"],
            ["one forward pass", "set algorithm.inner_steps=0", "(the snail-omniglot-5w1s preset does)"],
        ),
        ("snail-omniglot-5w1s", ["eval.steps=[0,1]"], ["one forward pass", "set eval.steps=[0]"]),
        (
            "maml-omniglot-5w1s",
            ["algorithm.name=snail"],
            ["algorithm.inner_steps=1, algorithm.eval_steps=3, eval.steps=[0, 1, 3]", "set algorithm.inner_steps=0"],
        ),
        ("snail-omniglot-5w1s", ["algorithm.update_rule=lslr"], ["does not apply to algorithm.name='snail'"]),
        (
            "snail-omniglot-5w1s",
            ["task.name=sinusoid", "model.name=mlp"],
            ["few-shot image classifier", "task.name=omniglot model.name=conv4", "or cnp for regression"],
        ),
        ("snail-omniglot-5w1s", ["eval.ways=20"], ["output layer of task.ways=5 classes", "eval.ways=20"]),
        (
            "snail-omniglot-5w1s",
            ["eval.shots=[1,5]"],
            ["task.ways * task.shots + 1 = 6", "set eval.shots=[1]", "eval.shots=[1, 5]"],
        ),
        ("snail-omniglot-5w1s", ["task.shots=5"], ["set eval.shots=[5]"]),
    ],
)
def test_bad_configs_are_refused_with_the_fix(preset, overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(preset, overrides)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


# --------------------------------------------------------------------------- command line


@needs_omniglot
def test_train_the_preset_from_the_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "snail"
    code, out, err = cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        "snail-omniglot-5w1s",
        "--out",
        run,
        "train.iterations=2",
        "train.meta_batch_size=2",
        "train.val_every=2",
        "train.val_tasks=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.progress=false",
        "eval.tasks=4",
        "eval.queries=2",
        "eval.batch_size=4",
    )
    assert code == 0, err
    assert "trained snail for 2 iterations" in out and "1-shot, 0 steps" in out and "validation: loss=" in out
    assert "batch norm from each task's support set" in out and "transductive" not in out
    assert load_checkpoint(run).iteration == 2
    result = json.loads((run / "eval.json").read_text())["results"]["1"]["0"]
    assert result["accuracy"]["n"] == 4 and 0 <= result["accuracy"]["mean"] <= 1
    assert (run / "episode.png").exists()
    # Other shots than trained are one clear line, not a run on sequences the network never saw.
    code, _, err = cli(monkeypatch, capsys, "eval", run, "--shots", 5)
    assert code == 2 and "set eval.shots=[1]" in err and "Traceback" not in err
