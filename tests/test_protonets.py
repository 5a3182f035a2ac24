"""Prototypical Networks: prototypes (eq. 1), logits and loss (eq. 2), batching paths, and learning."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerloop.algorithms import ProtoNets
from innerloop.algorithms.losses import classification_metrics
from innerloop.algorithms.protonets import class_prototypes, squared_distances
from innerloop.models import Conv4
from innerloop.tasks import TaskBatch


def episode_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=0, shuffle=True, dtype=torch.float64):
    """Random images; labels in a shuffled order per task (so class = position would be wrong)."""
    g = torch.Generator().manual_seed(seed)

    def labels(n):
        y = torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
        if shuffle:
            y = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in y])
        return y

    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype),
        labels(shots),
        torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype),
        labels(queries),
    )


def conv_learner(seed=0, hidden=8, **kwargs):
    torch.manual_seed(seed)
    return ProtoNets(Conv4(1, hidden, image_size=16).double(), **kwargs)


class NoBatchNorm(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(64, 6))


def reference_episode(embed, sx, sy, qx, qy, ways):
    """Eq. 1 and 2 written out with loops over classes and queries, on one joint embedding pass."""
    z = embed(torch.cat([sx, qx]))
    zs, zq = z[: len(sx)], z[len(sx) :]
    protos = torch.stack([zs[sy == k].mean(0) for k in range(ways)])
    dist = torch.stack([torch.stack([((q - c) ** 2).sum() for c in protos]) for q in zq])
    log_p = F.log_softmax(-dist, dim=1)
    loss = -torch.stack([log_p[i, qy[i]] for i in range(len(qy))]).mean()
    accuracy = (dist.argmin(1) == qy).double().mean()
    return loss, accuracy


# --------------------------------------------------------------------------- the pieces


def test_prototypes_are_the_class_mean_embeddings():
    learner = conv_learner()
    b = episode_batch(tasks=1, ways=4, shots=3)
    sx, sy = b.support_x[0], b.support_y[0]
    prototypes = learner.adapt(sx, sy)
    z = learner.embed(None, sx)  # one pass over the support set, as adapt does
    assert prototypes.shape == (4, 8)
    for k in range(4):
        torch.testing.assert_close(prototypes[k], z[sy == k].mean(0), rtol=0, atol=1e-12)


def test_class_prototypes_batched_and_counts():
    z = torch.randn(2, 5, 3, dtype=torch.float64)
    y = torch.tensor([[0, 1, 1, 2, 0], [2, 2, 2, 0, 1]])
    protos, counts = class_prototypes(z, y, 4)
    assert counts.tolist() == [[2, 2, 1, 0], [1, 1, 3, 0]]
    for t in range(2):
        for k in range(3):
            torch.testing.assert_close(protos[t, k], z[t][y[t] == k].mean(0))
        assert torch.equal(protos[t, 3], torch.zeros(3, dtype=torch.float64))  # absent class


def test_prototypes_do_not_depend_on_the_order_of_the_support_set():
    learner = conv_learner()
    b = episode_batch(tasks=1, ways=3, shots=4, shuffle=False)
    sx, sy = b.support_x[0], b.support_y[0]
    base = learner.adapt(sx, sy)
    g = torch.Generator().manual_seed(5)
    # permute within each class only (positions of the classes unchanged) ...
    within = torch.cat([k * 4 + torch.randperm(4, generator=g) for k in range(3)])
    assert not torch.equal(within, torch.arange(12))
    torch.testing.assert_close(learner.adapt(sx[within], sy[within]), base, rtol=0, atol=1e-12)
    # ... and any permutation of the whole support set
    anyperm = torch.randperm(12, generator=g)
    torch.testing.assert_close(learner.adapt(sx[anyperm], sy[anyperm]), base, rtol=0, atol=1e-12)


def test_logits_are_negative_squared_distances():
    learner = conv_learner()
    b = episode_batch(tasks=1, ways=3, shots=2, queries=3)
    prototypes = learner.adapt(b.support_x[0], b.support_y[0])
    logits = learner.predict(prototypes, b.query_x[0])
    zq = learner.embed(None, b.query_x[0])
    torch.testing.assert_close(learner(b.support_x[0], b.support_y[0], b.query_x[0]), logits, rtol=0, atol=0)
    expected = -((zq[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    assert logits.shape == (9, 3)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(-squared_distances(zq, prototypes), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_meta_loss_matches_a_hand_computation(strategy):
    learner = conv_learner(strategy=strategy)
    b = episode_batch(tasks=2, ways=3, shots=2, queries=3)
    loss, metrics = learner.meta_loss(b)
    ref = [
        reference_episode(
            lambda x: learner.embed(None, x), *(t[i] for t in (b.support_x, b.support_y, b.query_x, b.query_y)), 3
        )
        for i in range(2)
    ]
    torch.testing.assert_close(loss, torch.stack([r[0] for r in ref]).mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(metrics["accuracy"], torch.stack([r[1] for r in ref]).mean())
    assert not metrics["loss"].requires_grad


def test_vmap_and_loop_agree_on_loss_and_gradients():
    b = episode_batch(tasks=3, ways=4, shots=2, queries=2)
    out = {}
    for strategy in ("vmap", "loop"):
        learner = conv_learner(strategy=strategy)
        assert not learner.uses_flat_path(b)  # batch norm + several tasks: per-task mapping
        loss, _ = learner.meta_loss(b)
        out[strategy] = (loss, torch.autograd.grad(loss, list(learner.parameters())))
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=0, atol=1e-10)
    assert any(g.abs().max() > 1e-4 for g in out["loop"][1])
    for gv, gl in zip(out["vmap"][1], out["loop"][1]):
        torch.testing.assert_close(gv, gl, rtol=0, atol=1e-10)


def test_loop_meta_backward_goes_episode_by_episode_with_the_batch_gradient():
    """Batch norm + the loop strategy: meta_backward frees each episode's graph; same gradient and metrics."""
    b = episode_batch(tasks=3, ways=4, shots=2, queries=2)
    out = {}
    for strategy in ("vmap", "loop"):
        learner = conv_learner(strategy=strategy)
        calls, original = [], learner.meta_loss
        learner.meta_loss = lambda batch, calls=calls, original=original: (
            calls.append(batch.num_tasks) or original(batch)
        )
        metrics = learner.meta_backward(b, weight=0.5)
        out[strategy] = ([p.grad for p in learner.parameters()], {k: float(v) for k, v in metrics.items()}, calls)
    assert out["vmap"][2] == [3] and out["loop"][2] == [1, 1, 1]
    for gv, gl in zip(out["vmap"][0], out["loop"][0]):
        torch.testing.assert_close(gl, gv, rtol=1e-10, atol=1e-12)
    assert out["loop"][1] == pytest.approx(out["vmap"][1], rel=1e-10)
    flat = ProtoNets(NoBatchNorm().double(), strategy="loop")  # no batch norm: one pass for the whole batch
    calls, original = [], flat.meta_loss
    flat.meta_loss = lambda batch: calls.append(batch.num_tasks) or original(batch)
    flat.meta_backward(b)
    assert calls == [3]


def test_flattened_meta_batch_equals_per_task_mapping_when_exact():
    # no batch norm: the flat path is the default and equals the per-task paths
    b = episode_batch(tasks=3, ways=3, shots=2, queries=2)
    results = []
    for kwargs in ({}, {"flatten_tasks": False, "strategy": "vmap"}, {"flatten_tasks": False, "strategy": "loop"}):
        torch.manual_seed(0)
        learner = ProtoNets(NoBatchNorm().double(), **kwargs)
        assert learner.uses_flat_path(b) == ("flatten_tasks" not in kwargs)
        loss, _ = learner.meta_loss(b)
        results.append((loss, torch.autograd.grad(loss, list(learner.parameters()))))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=0, atol=1e-10)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=0, atol=1e-10)
    # batch norm and a single task (the paper's setting): flat by default, same numbers
    one = b.task(0)
    flat, mapped = conv_learner(), conv_learner(flatten_tasks=False, strategy="loop")
    assert flat.uses_flat_path(one) and not flat.uses_flat_path(b)
    torch.testing.assert_close(flat.meta_loss(one)[0], mapped.meta_loss(one)[0], rtol=0, atol=1e-10)
    # forced flattening with batch norm shares statistics across tasks: different numbers
    forced = conv_learner(flatten_tasks=True)
    assert not torch.allclose(forced.meta_loss(b)[0], mapped.meta_loss(b)[0])


def test_evaluate_reports_step_zero_per_task():
    learner = conv_learner(strategy="loop")
    b = episode_batch(tasks=3, ways=3, shots=2, queries=2)
    result = learner.evaluate(b, steps=[0, 5])
    assert list(result) == [0] and set(result[0]) == {"loss", "accuracy"}
    assert result[0]["loss"].shape == result[0]["accuracy"].shape == (3,)
    assert not result[0]["loss"].requires_grad
    loss, metrics = learner.meta_loss(b)
    torch.testing.assert_close(result[0]["loss"].mean(), loss.detach())
    torch.testing.assert_close(result[0]["accuracy"].mean(), metrics["accuracy"])


def test_any_number_of_ways_and_training_ways_differ_from_testing_ways():
    learner = conv_learner(hidden=4)
    for ways in (2, 20, 60):
        b = episode_batch(tasks=1, ways=ways, shots=1, queries=1, size=16)
        loss, metrics = learner.meta_loss(b)
        assert torch.isfinite(loss) and 0 <= metrics["accuracy"] <= 1
        assert learner.adapt(b.support_x[0], b.support_y[0]).shape == (ways, 4)


def test_bad_labels_are_rejected():
    learner = conv_learner()
    b = episode_batch(tasks=1, ways=3, shots=1, queries=1)
    with pytest.raises(ValueError, match="labels must lie in"):
        learner.meta_loss(TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y + 5))
    with pytest.raises(TypeError, match="integer class labels"):
        learner.meta_loss(TaskBatch(b.support_x, b.support_y.double(), b.query_x, b.query_y))
    with pytest.raises(ValueError, match="no support example"):
        learner.adapt(b.support_x[0], torch.tensor([0, 2, 2]))


def test_a_class_without_support_example_gets_no_probability():
    z = torch.randn(4, 3, dtype=torch.float64)
    logits = conv_learner().logits(z[:3], torch.tensor([0, 0, 2]), z[3:], ways=3)
    assert logits[0, 1] == float("-inf") and torch.isfinite(logits[0, [0, 2]]).all()
    assert torch.isfinite(classification_metrics(logits, torch.tensor([2]))["loss"])


# --------------------------------------------------------------------------- learning


def synthetic_episode(templates, ways, shots, queries, g, noise=2.0, shift=3):
    """Class = a smooth random 28x28 template; examples = the template, randomly shifted, plus noise."""
    classes = torch.randperm(len(templates), generator=g)[:ways]
    n = shots + queries
    x = templates[classes].repeat_interleave(n, 0)
    offsets = torch.randint(-shift, shift + 1, (len(x), 2), generator=g).tolist()
    x = torch.stack([img.roll((dy, dx), (-2, -1)) for img, (dy, dx) in zip(x, offsets)])
    x = (x + noise * torch.randn(x.shape, generator=g)).view(ways, n, 1, 28, 28)
    y = torch.arange(ways)[:, None].expand(ways, n)
    return TaskBatch(
        x[:, :shots].reshape(1, -1, 1, 28, 28),
        y[:, :shots].reshape(1, -1),
        x[:, shots:].reshape(1, -1, 1, 28, 28),
        y[:, shots:].reshape(1, -1),
    )


def smooth_templates(n, g):
    return F.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=28, mode="bilinear", align_corners=False)


@pytest.fixture
def one_thread():
    """A tiny network: one thread is as fast, and far faster when the cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.slow
def test_protonets_learns_a_synthetic_few_shot_problem(one_thread):
    """5-way 5-shot on held-out classes, 300 episodes (about 15 s on one core): far above chance
    (20%) and far above the untrained network (about 32%)."""
    g = torch.Generator().manual_seed(0)
    train_classes, test_classes = smooth_templates(200, g), smooth_templates(50, g)
    torch.manual_seed(0)
    learner = ProtoNets(Conv4(1, 16))
    eval_g = torch.Generator().manual_seed(1)
    test_batch = TaskBatch.cat([synthetic_episode(test_classes, 5, 5, 5, eval_g) for _ in range(40)])

    def accuracy():
        return learner.evaluate(test_batch)[0]["accuracy"].mean().item()

    before = accuracy()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        learner.meta_backward(synthetic_episode(train_classes, 5, 5, 5, g))
        opt.step()
    after = accuracy()
    assert after > 0.7, (before, after)
    assert after > before + 0.3, (before, after)
