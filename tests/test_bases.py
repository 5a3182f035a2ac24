"""The shared bases of the learners without an inner loop (issue 19 item 5): a head of the test's own plugs into the
embedding + head base and trains, a forward-pass learner of the test's own gets the episode pattern, every learner's
``adapt``/``predict`` mean what docs/learners.md says, one batch-norm logic with a support-statistics mode, and the
checkpoint keys of protonets, cnp and snail are those recorded before the bases existed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innerloop.algorithms as algorithms
from innerloop.algorithms import (
    CNP,
    MAML,
    SNAIL,
    EmbeddingHeadLearner,
    ForwardPassLearner,
    Head,
    MetaLearner,
    ProtoNets,
    PrototypeHead,
)
from innerloop.algorithms.protonets import prototypes_of
from innerloop.core.batchnorm import (
    SupportBatchNorm,
    TransductiveBatchNorm,
    support_statistics,
    use_support_batch_norm_,
    use_transductive_batch_norm_,
)
from innerloop.models import MLP, Conv4
from innerloop.tasks import SinusoidTasks, TaskBatch

ROOT = Path(__file__).resolve().parents[1]


def clusters(tasks=4, ways=3, shots=2, queries=3, features=6, seed=0, spread=2.0) -> TaskBatch:
    """Per task, ``ways`` random class centres; examples = centre + noise; labels in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(tasks, ways, features, generator=g, dtype=torch.float64)

    def draw(n):
        y = torch.stack([torch.randperm(ways * n, generator=g) % ways for _ in range(tasks)])
        x = centres.gather(1, y.unsqueeze(-1).expand(-1, -1, features))
        return x + torch.randn(x.shape, generator=g, dtype=torch.float64), y

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    return TaskBatch(sx, sy, qx, qy)


class CosineHead(Head):
    """Cosine similarity to the class means with a learned scale (a head innerloop does not ship)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def fit(self, support_z, support_onehot):
        return F.normalize(prototypes_of(support_z, support_onehot)[0], dim=-1)

    def logits(self, state, query_z):
        return self.scale * F.normalize(query_z, dim=-1) @ state.transpose(-1, -2)


def cosine_learner(**kwargs) -> EmbeddingHeadLearner:
    torch.manual_seed(0)
    return EmbeddingHeadLearner(MLP(6, [16], 8), CosineHead(), **kwargs).double()


# --------------------------------------------------------------------------- embedding + head


def test_a_head_of_ones_own_gets_the_same_batching_paths_and_meta_gradients():
    b = clusters()
    out = {}
    for name, kwargs in {
        "flat": {},
        "vmap": {"flatten_tasks": False, "strategy": "vmap"},
        "loop": {"flatten_tasks": False, "strategy": "loop"},
    }.items():
        learner = cosine_learner(**kwargs)
        assert learner.uses_flat_path(b) == (name == "flat")
        loss, _ = learner.meta_loss(b)
        out[name] = (loss, torch.autograd.grad(loss, list(learner.parameters())))
    names = [n for n, _ in cosine_learner().named_parameters()]
    assert names[-1] == "head.scale" and out["loop"][1][-1].abs() > 1e-6  # the head's parameter is meta-learned
    for other in ("flat", "vmap"):
        torch.testing.assert_close(out[other][0], out["loop"][0], rtol=0, atol=1e-12)
        for g, g_loop in zip(out[other][1], out["loop"][1]):
            torch.testing.assert_close(g, g_loop, rtol=0, atol=1e-12)
    # the episode by hand: one embedding pass, cosine logits, cross-entropy
    learner = cosine_learner()
    z = learner.embed(None, torch.cat([b.support_x[1], b.query_x[1]]))
    protos = torch.stack([F.normalize(z[:6][b.support_y[1] == k].mean(0), dim=0) for k in range(3)])
    logits = F.normalize(z[6:], dim=-1) @ protos.T
    torch.testing.assert_close(learner.meta_loss(b, reduction="none")[0][1], F.cross_entropy(logits, b.query_y[1]))
    state = learner.adapt(b.support_x[1], b.support_y[1])
    torch.testing.assert_close(learner.predict(state, b.query_x[1]), logits, rtol=1e-12, atol=1e-12)


def test_a_head_of_ones_own_trains():
    learner = cosine_learner()
    held_out = clusters(tasks=20, seed=99)
    before = learner.evaluate(held_out)[0]["loss"].mean()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for it in range(40):
        opt.zero_grad()
        learner.meta_backward(clusters(tasks=8, seed=it))
        opt.step()
    after = learner.evaluate(held_out)[0]
    assert after["loss"].mean() < 0.7 * before, (float(before), float(after["loss"].mean()))
    assert learner.head.scale > 1.2  # the learned scale (from 1) sharpened the softmax


def test_protonets_is_the_base_with_the_prototype_head():
    torch.manual_seed(0)
    proto = ProtoNets(MLP(6, [16], 8).double())
    torch.manual_seed(0)
    base = EmbeddingHeadLearner(MLP(6, [16], 8).double(), PrototypeHead())
    assert isinstance(proto.head, PrototypeHead) and list(proto.state_dict()) == list(base.state_dict())
    b = clusters()
    torch.testing.assert_close(proto.meta_loss(b)[0], base.meta_loss(b)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"head must be an innerloop\.algorithms\.metric\.Head"):
        EmbeddingHeadLearner(MLP(6, [16], 8), head=nn.Linear(8, 3))


# --------------------------------------------------------------------------- forward pass


class KernelRegression(ForwardPassLearner):
    """Nadaraya-Watson: each query's prediction is the kernel-weighted mean of the support targets; the
    bandwidth is meta-learned. A forward-pass learner of the test's own (the support set is the state)."""

    def __init__(self, strategy="auto") -> None:
        super().__init__(nn.Linear(1, 1, bias=False), strategy=strategy)  # the weight is the log bandwidth
        with torch.no_grad():
            self.model.weight.fill_(1.5)

    def adapt(self, support_x, support_y, steps=None):
        self.check_task(support_x, support_y)
        return support_x, support_y

    def predict(self, state, query_x):
        support_x, support_y = state
        log_bandwidth = self.model.weight.squeeze()
        weights = (-(query_x - support_x.transpose(-1, -2)).pow(2) / log_bandwidth.exp()).softmax(-1)
        return weights @ support_y

    def episode(self, batch):
        def task(support_x, support_y, query_x, query_y):
            return {"loss": F.mse_loss(self.predict((support_x, support_y), query_x), query_y)}

        return task, batch


def test_a_forward_pass_learner_of_ones_own_gets_the_episode_pattern():
    b = SinusoidTasks(20, 10, seed=0).sample(0, range(6), dtype=torch.float64)
    out = {}
    for strategy in ("vmap", "loop"):
        learner = KernelRegression(strategy).double()
        losses, metrics = learner.meta_loss(b, reduction="none")
        assert losses.shape == (6,) and metrics["loss"].shape == (6,)
        loss, _ = learner.meta_loss(b)
        torch.testing.assert_close(loss, losses.mean())
        torch.testing.assert_close(learner.meta_loss(b, reduction="sum")[0], losses.sum())
        learner.meta_backward(b)
        out[strategy] = (losses, learner.model.weight.grad.clone(), learner.backward_per_task(b))
        results = learner.evaluate(b, [3, 0])
        assert set(results) == {0, 3} and torch.equal(results[0]["loss"], results[3]["loss"])
        for t in range(6):  # predict(adapt(...)) is what the episode scores
            prediction = learner(b.support_x[t], b.support_y[t], b.query_x[t])
            torch.testing.assert_close(results[0]["loss"][t], F.mse_loss(prediction, b.query_y[t]))
    assert out["loop"][2] and not out["vmap"][2]  # the loop backpropagates task by task
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["vmap"][1], out["loop"][1], rtol=1e-10, atol=1e-14)
    learner = KernelRegression().double()
    opt = torch.optim.Adam(learner.parameters(), lr=0.1)
    before = learner.meta_loss(b)[0].item()
    for it in range(30):
        opt.zero_grad()
        learner.meta_backward(SinusoidTasks(20, 10, seed=0).sample(it + 1, range(8), dtype=torch.float64))
        opt.step()
    assert learner.meta_loss(b)[0].item() < 0.8 * before


# --------------------------------------------------------------------------- one contract


def images(tasks=2, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    x = lambda n: torch.randn(tasks, ways * n, 1, size, size, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(shots), y, x(queries), yq)


class NoBatchNorm(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(64, 6))


def learners_and_tasks():
    torch.manual_seed(0)
    sine = SinusoidTasks(5, 7, seed=0).sample(0, range(2), dtype=torch.float64)
    return {
        "maml": (MAML(MLP(1, [8], 1).double(), inner_lr=0.1), sine, F.mse_loss, 1),
        "protonets": (ProtoNets(NoBatchNorm().double()), images(), F.cross_entropy, 0),
        "cnp": (CNP(hidden=8, layers=2).double(), sine, lambda out, y: F.mse_loss(out[0], y), 0),
        "snail": (
            SNAIL(Conv4(1, 4, image_size=16), ways=3, shots=2, architecture=[("tc", 4), ("attention", 3, 2)]).double(),
            images(),
            F.cross_entropy,
            0,
        ),
    }


@pytest.mark.parametrize("name", ["maml", "protonets", "cnp", "snail"])
def test_predict_of_adapt_is_what_evaluate_scores_in_every_learner(name):
    learner, batch, loss_fn, steps = learners_and_tasks()[name]
    results = learner.evaluate(batch, [steps])[steps]
    for t in range(batch.num_tasks):
        state = learner.adapt(batch.support_x[t], batch.support_y[t], steps=steps)
        output = learner.predict(state, batch.query_x[t])
        torch.testing.assert_close(results["loss"][t], loss_fn(output, batch.query_y[t]), rtol=1e-9, atol=1e-12)
    losses, _ = learner.meta_loss(batch, reduction="none")
    assert losses.shape == (batch.num_tasks,)


def test_embed_takes_params_first_in_every_learner():
    torch.manual_seed(0)
    maml, proto = MAML(MLP(6, [8], 3).double()), ProtoNets(MLP(6, [8], 5).double())
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(maml.embed(maml.model_params(), x), x)
    params = {n: torch.zeros_like(p) for n, p in proto.model_params().items()}
    assert torch.equal(proto.embed(params, x), torch.zeros(4, 5, dtype=torch.float64))  # these params, not its own
    torch.testing.assert_close(proto.embed(None, x), proto.model(x))


def test_the_learner_table_lists_every_learner():
    table = (ROOT / "docs" / "learners.md").read_text()
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    rows = {name for cell in first_cells for name in re.findall(r"`(\w+)", cell)}
    exported = {
        name
        for name in algorithms.__all__
        if isinstance(getattr(algorithms, name), type)
        and issubclass(getattr(algorithms, name), MetaLearner)
        and name not in ("MetaLearner", "GradientLearner", "ForwardPassLearner")
    }
    assert exported <= rows, exported - rows
    assert "MAML" in exported and "EmbeddingHeadLearner" in exported


# --------------------------------------------------------------------------- batch norm: one logic, two modes


def test_support_statistics_are_a_mode_of_the_transductive_batch_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-1.0, 1.0)
    bn = use_transductive_batch_norm_(net)[1]
    assert type(bn) is TransductiveBatchNorm and bn.groups is None
    x = torch.randn(2 * 5, 3, 6, 6, dtype=torch.float64)  # 2 tasks of 5 rows: 3 support rows, then 2 queries
    net.double()
    torch.testing.assert_close(bn(x), F.batch_norm(x, None, None, bn.weight, bn.bias, training=True))
    with support_statistics([bn], rows=5, support=3):
        y = bn(x)
    assert bn.groups is None  # restored on exit
    for task in range(2):
        rows = x[task * 5 : task * 5 + 5]
        mean = rows[:3].mean((0, 2, 3), keepdim=True)
        var = rows[:3].var((0, 2, 3), unbiased=False, keepdim=True)
        expected = (rows - mean) / (var + bn.eps).sqrt() * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(y[task * 5 : task * 5 + 5], expected, rtol=1e-12, atol=1e-12)
    moved = x.clone()
    moved[4] += 3.0  # a query of task 0 changes its own output only
    with support_statistics([bn], rows=5, support=3):
        changed = (bn(moved) - y).abs().flatten(1).amax(1) > 0
    assert changed.tolist() == [False] * 4 + [True] + [False] * 5


def test_snail_s_support_batch_norm_shares_the_parameters_and_the_logic():
    conv = Conv4(1, 4, image_size=16)
    weights = [m.weight for m in conv.modules() if isinstance(m, nn.BatchNorm2d)]
    norms = use_support_batch_norm_(conv)
    assert len(norms) == 4 and all(type(n) is SupportBatchNorm for n in norms)
    assert issubclass(SupportBatchNorm, TransductiveBatchNorm)  # a mode of the one layer, not a copy
    assert all(n.weight is w for n, w in zip(norms, weights))  # the very Parameters (optimizer references hold)
    assert use_support_batch_norm_(conv) == norms  # idempotent


# --------------------------------------------------------------------------- checkpoints


def test_state_dict_keys_are_those_recorded_before_the_bases():
    """tests/golden/learner_state_dict_keys.json was written by the learners before this refactor: a checkpoint
    of protonets, cnp or snail written then loads now (same keys, same shapes)."""
    recorded = json.loads((ROOT / "tests" / "golden" / "learner_state_dict_keys.json").read_text())
    torch.manual_seed(0)
    now = {"protonets": ProtoNets(Conv4(1, 64)), "cnp": CNP(), "snail": SNAIL()}
    for name, learner in now.items():
        assert {k: list(v.shape) for k, v in learner.state_dict().items()} == recorded[name], name
        old = {k: torch.randn(shape) for k, shape in recorded[name].items()}
        learner.load_state_dict(old)  # strict
        assert all(torch.equal(learner.state_dict()[k], v) for k, v in old.items())
