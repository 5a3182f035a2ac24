"""Safe in a user's hands (issue 18): strategy="auto" where vmap cannot run, buffers read at call time,
checks at every learner entry point, and a discoverable public API."""

from __future__ import annotations

import importlib
import inspect
import logging
import pathlib
import pkgutil
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innerloop
from innerloop import (
    ANIL,
    CNP,
    FOMAML,
    MAML,
    SNAIL,
    MetaSGD,
    PerLayerPerStepRates,
    Pretrained,
    ProtoNets,
    Reptile,
    SinusoidTasks,
    TaskBatch,
    set_checks,
)
from innerloop.core import StrategyChooser
from innerloop.errors import ConfigError, InputError
from innerloop.models import MLP, Conv4
from innerloop.tasks import checks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sine(tasks=4, shots=5, queries=5, draw=0):
    return SinusoidTasks(shots, queries, seed=1).sample(draw, range(tasks), torch.float64)


def classes(tasks=3, ways=3, shots=2, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    x = lambda: torch.randn(tasks, ways * shots, features, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(), labels, x(), labels.clone())


def mlp(inputs=1, outputs=1, seed=0):
    torch.manual_seed(seed)
    return MLP(inputs, [8], outputs).double()


def replace(batch, **tensors):
    fields = {f: getattr(batch, f) for f in checks.FIELDS}
    return TaskBatch(**{**fields, **tensors})


# --------------------------------------------------------------------------- auto where vmap cannot run


class ItemModel(nn.Module):
    """Calls ``.item()`` in its forward pass (here to rescale), which vmap cannot batch."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x) * (1.0 if x.abs().max().item() < 1e6 else 0.0)


class BranchModel(nn.Module):
    """Data-dependent control flow."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        out = self.net(x)
        return out if x.sum() > -1e9 else -out


def gaussian_nll(output, target):
    mu, log_var = output.chunk(2, -1)
    return F.gaussian_nll_loss(mu, target, log_var.exp())


WORKLOADS = {
    "item": lambda: (ItemModel(), None),
    "control-flow": lambda: (BranchModel(), None),
    "gaussian_nll_loss": lambda: (mlp(outputs=2), gaussian_nll),
}


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_auto_uses_the_loop_where_vmap_fails_and_warns_once(workload, caplog):
    caplog.set_level(logging.WARNING, logger="innerloop")
    model, loss_fn = WORKLOADS[workload]()
    learner = MAML(model, inner_lr=0.05, loss_fn=loss_fn, strategy="auto")
    reference = MAML(WORKLOADS[workload]()[0], inner_lr=0.05, loss_fn=loss_fn, strategy="loop")
    reference.load_state_dict(learner.state_dict())
    opt = torch.optim.SGD(learner.parameters(), lr=1e-3)
    for it in range(3):
        batch = sine(draw=it)
        loss, _ = learner.meta_loss(batch)
        if it == 0:
            torch.testing.assert_close(loss, reference.meta_loss(batch)[0], rtol=1e-12, atol=1e-12)
        opt.zero_grad()
        loss.backward()
        opt.step()
    metrics = learner.evaluate(sine(6, draw=10), [0, 1])  # an evaluation workload: measured again, no new warning
    assert metrics[1]["loss"].shape == (6,) and torch.isfinite(metrics[1]["loss"]).all()
    learner.meta_backward(sine(draw=11))
    test = sine(1, draw=12)
    assert learner.adapt(test.support_x[0], test.support_y[0], steps=2)
    warnings = [r.getMessage() for r in caplog.records if "vmap cannot run" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert 'strategy="auto"' in warnings[0] and 'strategy="loop"' in warnings[0] and "vmap:" in warnings[0]
    assert learner.chooser.fallback and "\n" not in learner.chooser.fallback
    assert set(learner.chooser.choices.values()) == {"loop"}


def test_auto_uses_the_loop_when_vmap_was_chosen_without_timing():
    """A strategy restored from a checkpoint (or measured on tasks vmap happened to run) skips the timing."""
    learner = MAML(ItemModel(), inner_lr=0.05, strategy="auto")
    batch = sine()
    learner.chooser.choices[StrategyChooser.training_key(batch)] = "vmap"
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert learner.chooser.choices[StrategyChooser.training_key(batch)] == "loop"
    assert learner.chooser.fallback


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_explicit_vmap_failure_is_one_line_naming_the_loop(workload):
    model, loss_fn = WORKLOADS[workload]()
    learner = MAML(model, inner_lr=0.05, loss_fn=loss_fn, strategy="vmap")
    for call in (lambda: learner.meta_loss(sine()), lambda: learner.evaluate(sine(), [1])):
        with pytest.raises(ConfigError, match='strategy="loop"') as err:
            call()
        assert "\n" not in str(err.value) and "vmap" in str(err.value)


# --------------------------------------------------------------------------- buffers read at call time


class Projected(nn.Module):
    """A buffer in a matmul: a fixed projection before a linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)
        self.register_buffer("projection", torch.randn(3, 3))

    def forward(self, x):
        return self.linear(x @ self.projection)


def projected_tasks(dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, 3, generator=g, dtype=dtype).to(device)
    y = x.sum(-1, keepdim=True).sin()
    return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_buffers_follow_double(strategy):
    model = Projected()
    learner = MAML(model, inner_lr=0.1, strategy=strategy).double()
    assert model.projection.dtype == torch.float64
    batch = projected_tasks()
    x = batch.query_x[0]
    torch.testing.assert_close(learner(x), model(x), rtol=0, atol=0)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert learner.model.linear.weight.grad.dtype == torch.float64


def test_a_reassigned_buffer_is_used():
    model = Projected()
    learner = MAML(model, inner_lr=0.1, strategy="vmap")
    model.projection = torch.full((3, 3), 5.0)  # after wrapping
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(learner(x), model(x), rtol=0, atol=0)
    batched = torch.func.vmap(lambda xi: learner(xi))(x)  # and under vmap
    torch.testing.assert_close(batched, model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_buffers_follow_cuda():
    model = Projected()
    learner = MAML(model, inner_lr=0.1, strategy="vmap").double().cuda()
    batch = projected_tasks(device="cuda")
    torch.testing.assert_close(learner(batch.query_x[0]), model(batch.query_x[0]))
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert learner.model.linear.weight.grad.is_cuda


# --------------------------------------------------------------------------- checks at the boundary


def test_a_batch_without_task_dimension_is_refused():
    b = sine()
    with pytest.raises(InputError, match=r"support_x has shape \(5, 1\).*task dimension"):
        TaskBatch(b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0])  # was: 5 tasks of one point
    c = classes()
    with pytest.raises(InputError, match=r"support_x has shape \(6, 4\).*task dimension"):
        TaskBatch(c.support_x[0], c.support_y[0], c.query_x[0], c.query_y[0])
    with pytest.raises(InputError, match=r"support_y has shape \(6,\).*task dimension"):
        TaskBatch(c.support_x[:1], c.support_y[0], c.query_x[:1], c.query_y[:1])


def test_empty_support_sets_are_refused():
    b = sine()
    with pytest.raises(InputError, match=r"support_x has shape \(4, 0, 1\): every task needs at least one support"):
        replace(b, support_x=b.support_x[:, :0], support_y=b.support_y[:, :0])
    with pytest.raises(InputError, match="at least one support example"):
        MAML(mlp()).adapt(b.support_x[0, :0], b.support_y[0, :0])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_regression_targets_of_another_shape_than_the_output_are_an_error(strategy):
    b = sine()
    flat = replace(b, support_y=b.support_y.squeeze(-1), query_y=b.query_y.squeeze(-1))  # (T, S) vs outputs (T, S, 1)
    learners = [MAML(mlp(), strategy=strategy), FOMAML(mlp(), strategy=strategy), Pretrained(mlp())]
    for learner in learners:
        message = (
            r"outputs \((5|40), 1\) but the regression target has shape \((5|40),\).*unsqueeze\(-1\).*never broadcasts"
        )
        with pytest.raises(InputError, match=message):
            learner.meta_loss(flat)
        with pytest.raises(InputError, match="never broadcasts"):
            learner.evaluate(flat, [0, 1])
        with pytest.raises(InputError, match="never broadcasts"):
            learner.adapt(b.support_x[0], b.support_y[0].squeeze(-1))
    with pytest.raises(InputError, match="never broadcasts"):
        Reptile(mlp(), strategy=strategy).meta_backward(flat)


def test_cnp_targets_need_their_feature_dimension():
    b = sine()
    flat = replace(b, support_y=b.support_y.squeeze(-1), query_y=b.query_y.squeeze(-1))
    with pytest.raises(InputError, match=r"support_y has shape \(4, 5\).*unsqueeze\(-1\)"):
        CNP(hidden=8, layers=1).meta_loss(flat)
    with pytest.raises(InputError, match="support_y"):
        CNP(hidden=8, layers=1).adapt(b.support_x[0], b.support_y[0, :, 0])


def test_adapt_refuses_a_whole_batch():
    b = sine()
    learner = MAML(mlp())
    learner.meta_loss(b)
    with pytest.raises(InputError, match=r"support_x has shape \(4, 5, 1\), a batch of 4 tasks; adapt takes ONE task"):
        learner.adapt(b.support_x, b.support_y)  # was: the tasks pooled into one
    c = classes()
    for fresh in (MAML(mlp(4, 3)), ProtoNets(mlp(4, 3))):  # no batch seen yet: integer labels tell
        with pytest.raises(InputError, match=r"support_y holds integer labels of shape \(3, 6\).*ONE task"):
            fresh.adapt(c.support_x, c.support_y)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_one_hot_float_labels_are_refused(strategy):
    c = classes()
    one_hot = replace(c, support_y=F.one_hot(c.support_y, 3).double(), query_y=F.one_hot(c.query_y, 3).double())
    with pytest.raises(InputError, match=r"one-hot float rows.*support_y.argmax\(-1\)"):
        MAML(mlp(4, 3), strategy=strategy).meta_loss(one_hot)  # was: fitted by MSE
    soft = lambda out, target: F.cross_entropy(out, target)  # noqa: E731  a loss of the user's own: soft targets
    loss, _ = MAML(mlp(4, 3), strategy=strategy, loss_fn=soft).meta_loss(one_hot)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_labels_outside_the_model_s_classes_are_refused(strategy):
    c = classes(ways=4)  # labels 0..3
    learner = MAML(mlp(4, 3), strategy=strategy)  # 3 outputs
    with pytest.raises(InputError, match=r"class labels reach 3 but the model outputs 3 classes.*0\.\.2"):
        learner.meta_loss(c)
    with pytest.raises(InputError, match="class labels reach 3"):
        learner.evaluate(c, [1])
    with pytest.raises(InputError, match="class labels reach 3"):
        learner.adapt(c.support_x[0], c.support_y[0])
    negative = replace(classes(), query_y=classes().query_y - 1)
    with pytest.raises(InputError, match=r"range over -1\.\.2; labels must lie in 0\.\.ways-1"):
        learner.meta_loss(negative)
    ok = classes()
    loss, metrics = learner.meta_loss(ok)
    assert torch.isfinite(loss) and "accuracy" in metrics


def conv(out=None):
    torch.manual_seed(0)
    return Conv4(1, 4, out_features=out, image_size=16).double()


def images(tasks=3, ways=3, shots=1, queries=2):
    g = torch.Generator().manual_seed(0)
    x = lambda n: torch.randn(tasks, ways * n, 1, 16, 16, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(x(shots), y(shots), x(queries), y(queries))


LEARNERS = {
    "maml": (lambda: MAML(mlp(), strategy="vmap"), sine),
    "maml-loop": (lambda: MAML(mlp(), strategy="loop"), sine),
    "metasgd": (lambda: MetaSGD(mlp()), sine),
    "anil": (lambda: ANIL(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()), sine),
    "reptile": (lambda: Reptile(mlp(), inner_steps=1), sine),
    "pretrained": (lambda: Pretrained(mlp()), sine),
    "protonets": (lambda: ProtoNets(conv()), images),
    "cnp": (lambda: CNP(hidden=8, layers=1).double(), sine),
    "snail": (lambda: SNAIL(conv(), ways=3, shots=1, architecture=[("tc", 4), ("attention", 3, 2)]).double(), images),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_non_finite_inputs_are_refused_at_every_entry_point(name):
    make, data = LEARNERS[name]
    learner, batch = make(), data()
    bad_x = batch.support_x.clone()
    bad_x[1, 0] = float("nan")
    bad = replace(batch, support_x=bad_x)
    entry = learner.meta_backward if name == "reptile" else learner.meta_loss
    with pytest.raises(InputError, match=r"support_x \(3|4, .*NaN or infinite.*first in task 1"):
        entry(bad)
    with pytest.raises(InputError, match="NaN or infinite"):
        learner.meta_backward(bad)
    with pytest.raises(InputError, match="NaN or infinite"):
        learner.evaluate(bad, [0])
    with pytest.raises(InputError, match="NaN or infinite"):
        learner.adapt(bad.support_x[1], bad.support_y[1])
    bad_y = batch.query_y.clone().double() if batch.query_y.is_floating_point() else None
    if bad_y is not None:
        bad_y[0, 0] = float("inf")
        with pytest.raises(InputError, match=r"query_y .*1 NaN or infinite value"):
            entry(replace(batch, query_y=bad_y))
    learner.meta_backward(batch)  # the clean batch runs


def test_checks_can_be_turned_off():
    b = sine()
    bad_x = b.support_x.clone()
    bad_x[0, 0] = float("nan")
    bad = replace(b, support_x=bad_x)
    learner = MAML(mlp())
    with set_checks(False):
        loss, _ = learner.meta_loss(bad)
        assert torch.isnan(loss)
        TaskBatch(b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0])  # one-point tasks, if you insist
    with pytest.raises(InputError):
        learner.meta_loss(bad)
    set_checks(False)
    try:
        assert not checks.checks_enabled()
    finally:
        set_checks(True)
    assert checks.checks_enabled()


def test_meta_backward_task_by_task_checks_the_batch_once(monkeypatch):
    calls = []
    original = checks.check_batch_values
    monkeypatch.setattr(checks, "check_batch_values", lambda *a, **k: calls.append(1) or original(*a, **k))
    learner = MAML(mlp(), strategy="loop")
    learner.meta_backward(sine(6))
    assert learner.backward_per_task(sine(6)) and len(calls) == 1


def test_compiled_meta_loss_checks_outside_the_graph(monkeypatch):
    """compile=True: value checks run before the compiled call, and the checks left in the graph break nothing
    (dynamo traces the meta-loss as one graph; the eager backend skips inductor's slow code generation)."""
    graphs = []

    def count_graphs(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": count_graphs}))
    torch._dynamo.reset()
    learner = MAML(mlp(), inner_lr=0.05, strategy="vmap", compile=True)
    b = sine()
    loss, _ = learner.meta_loss(b)
    loss.backward()
    assert len(graphs) == 1
    torch.testing.assert_close(loss, MAML(mlp(), inner_lr=0.05, strategy="vmap").meta_loss(b)[0])
    bad_x = b.support_x.clone()
    bad_x[2, 1] = float("inf")
    with pytest.raises(InputError, match="first in task 2"):
        learner.meta_loss(replace(b, support_x=bad_x))
    with pytest.raises(InputError, match="never broadcasts"):
        learner.meta_loss(replace(b, support_y=b.support_y.squeeze(-1), query_y=b.query_y.squeeze(-1)))


# --------------------------------------------------------------------------- a discoverable API


def test_every_learner_of_the_readme_is_importable_from_innerloop():
    readme = (ROOT / "README.md").read_text()
    names = set(re.findall(r"^\| `([A-Z][A-Za-z]+)\(", readme, flags=re.M))
    assert {"MAML", "ProtoNets", "CNP", "SNAIL"} <= names
    for name in names:
        assert name in innerloop.__all__ and inspect.isclass(getattr(innerloop, name)), name


def test_inner_lr_with_an_update_rule_is_refused():
    with pytest.raises(
        ConfigError, match=r"give inner_lr=0\.05 or update_rule=PerLayerPerStepRates\(\.\.\.\), not both"
    ):
        MAML(mlp(), inner_lr=0.05, update_rule=PerLayerPerStepRates(0.05))  # was: inner_lr silently ignored
    for make in (MAML, FOMAML, ANIL):
        model = nn.Sequential(nn.Linear(1, 8), nn.Linear(8, 1)) if make is ANIL else mlp()
        with pytest.raises(ConfigError, match="not both"):
            make(model, inner_lr=0.01, update_rule=PerLayerPerStepRates(0.05))  # even an explicit 0.01
        assert make(model, update_rule=PerLayerPerStepRates(0.05)).update_rule.init_lr == 0.05
    assert MAML(mlp(), inner_lr=None, update_rule=PerLayerPerStepRates(0.05))
    assert MAML(mlp()).update_rule.lr == 0.01 and inspect.signature(MAML).parameters["inner_lr"].default == 0.01


def test_config_update_rules_still_build():
    from innerloop.training.builders import build_learner
    from innerloop.training.config import load_config

    learner = build_learner(load_config("maml-lslr-sine", ["algorithm.inner_lr=0.03"]))
    assert isinstance(learner.update_rule, PerLayerPerStepRates) and learner.update_rule.init_lr == 0.03


def test_the_package_ships_py_typed():
    assert (pathlib.Path(innerloop.__file__).parent / "py.typed").is_file()
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["innerloop"]


PACKAGES = ("innerloop.core", "innerloop.algorithms", "innerloop.tasks")


def public_api():
    """Everything in ``innerloop.__all__`` and the public classes and functions of core, algorithms and tasks."""
    found = {id(getattr(innerloop, n)): (f"innerloop.{n}", getattr(innerloop, n)) for n in innerloop.__all__}
    for package in PACKAGES:
        modules = [importlib.import_module(package)]
        modules += [
            importlib.import_module(f"{package}.{m.name}")
            for m in pkgutil.iter_modules(modules[0].__path__)
            if not m.name.startswith("_")
        ]
        for module in modules:
            for name, obj in vars(module).items():
                if (
                    not name.startswith("_")
                    and (inspect.isclass(obj) or inspect.isfunction(obj))
                    and obj.__module__ == module.__name__
                ):
                    found.setdefault(id(obj), (f"{module.__name__}.{name}", obj))
    return [(q, o) for q, o in found.values() if (getattr(o, "__module__", "") or "").startswith("innerloop")]


def own_doc(obj) -> str:
    doc = obj.__doc__ or ""
    return "" if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(") else doc  # a dataclass's generated one


def test_the_public_api_has_its_own_docstrings():
    """help() of every public class, method and __init__ argument shows innerloop's words, not torch's or none."""
    missing = []
    for qualname, obj in public_api():
        if not own_doc(obj):
            missing.append(qualname)
        if not inspect.isclass(obj):
            continue
        for name in dir(obj):
            if name.startswith("_"):
                continue
            owner = next(k for k in obj.__mro__ if name in vars(k))
            raw = vars(owner)[name]
            if not owner.__module__.startswith("innerloop"):
                continue  # torch's own methods, inherited untouched (parameters(), to(), ...)
            fn = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
            if (callable(fn) or isinstance(raw, property)) and not getattr(fn, "__doc__", None):
                missing.append(f"{qualname}.{name}")
        owner = next(k for k in obj.__mro__ if "__init__" in vars(k))
        if owner.__module__.startswith("innerloop"):
            docs = own_doc(obj) + (vars(owner)["__init__"].__doc__ or "") + own_doc(owner)
            for p in list(inspect.signature(vars(owner)["__init__"]).parameters.values())[1:]:
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in docs:
                    missing.append(f"{qualname}(... {p.name}=...)")
    assert not missing, f"undocumented: {missing}"
    assert "meta-objective" in inspect.getdoc(innerloop.MetaLearner.meta_loss)
    assert "query loss" in (MAML.meta_loss.__doc__ or "") and "one new task" in MAML.adapt.__doc__


def test_an_error_of_the_model_itself_is_not_blamed_on_vmap():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)  # the tasks have 1 feature

        def forward(self, x):
            return self.linear(x)

    for strategy in ("vmap", "auto"):
        with pytest.raises(RuntimeError, match="mat1 and mat2") as err:
            MAML(Broken(), strategy=strategy).meta_loss(sine())
        assert not isinstance(err.value, ConfigError)
