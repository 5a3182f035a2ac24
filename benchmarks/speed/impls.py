"""The implementations timed against each other: innerloop's learners, ``higher`` and a plain per-task loop.

Each wraps its own copy of the model and does one meta-training step (meta-loss forward and
backward into ``.grad``; Reptile: the pseudo-gradient ``theta - mean_i theta_i``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from innerloop.tasks import TaskBatch

try:
    import higher
except ImportError:  # the higher column is skipped with a note
    higher = None
    HIGHER_MISSING = "higher is not installed (pip install higher; it is in innerloop's dev extra)"
else:
    HIGHER_MISSING = None


def _learn2learn_maml():
    """learn2learn's ``MAML`` class: from the installed package, or from the source tree in ``$LEARN2LEARN_SRC``.

    learn2learn 0.2.0 does not build on Python >= 3.11 (its shipped Cython output includes ``longintrepr.h``) and
    ``import learn2learn`` needs torchvision and gym; its MAML is pure Python (``algorithms/maml.py``, which imports
    only ``algorithms/base_learner.py`` and ``utils``), so it is loaded from an unpacked sdist without the package's
    ``__init__``.
    """
    try:
        import learn2learn

        return learn2learn.algorithms.MAML
    except ImportError:
        root = os.environ.get("LEARN2LEARN_SRC")
        if not root:
            raise
    import importlib.util
    import types

    package = Path(root) / "learn2learn"
    for name, folder in (("learn2learn", package), ("learn2learn.algorithms", package / "algorithms")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules.setdefault(name, stub)
    for name in ("learn2learn.utils", "learn2learn.algorithms.base_learner", "learn2learn.algorithms.maml"):
        path = package / (name.split(".", 1)[1].replace(".", "/") + ".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["learn2learn.algorithms.maml"].MAML


try:
    L2L_MAML = _learn2learn_maml()
except ImportError:  # the learn2learn column is skipped with a note
    L2L_MAML = None
    L2L_MISSING = "learn2learn is not installed (pip install learn2learn, or LEARN2LEARN_SRC=an unpacked sdist)"
else:
    L2L_MISSING = None

REFERENCE = "plain loop"
AUTO = "innerloop auto"


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task loss of every workload: cross-entropy for labels, MSE for regression targets."""
    return F.mse_loss(output, target) if target.is_floating_point() else F.cross_entropy(output, target)


class Impl:
    """One implementation of a workload's meta-training step on its own model copy."""

    family = "peer"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def zero_grad(self) -> None:
        for p in self.meta_parameters().values():
            p.grad = None

    def step(self, batch: TaskBatch) -> None:
        """Forward and backward of the meta-loss: accumulates its gradient into ``.grad``."""
        raise NotImplementedError

    def info(self) -> dict:
        return {}


def _accumulate(param: torch.Tensor, grad: torch.Tensor | None) -> None:
    if grad is not None:
        param.grad = grad.detach().clone() if param.grad is None else param.grad + grad


def _tasks(batch: TaskBatch):
    for i in range(batch.num_tasks):
        yield batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]


class InnerloopImpl(Impl):
    """innerloop's learner; ``meta_backward`` is the one call a trainer makes."""

    family = "innerloop"

    def __init__(self, learner) -> None:
        super().__init__(learner.model)
        self.learner = learner

    def meta_parameters(self):
        return dict(self.learner.model.named_parameters())

    def step(self, batch):
        self.learner.meta_backward(batch)

    def info(self):
        return {"chosen": dict(self.learner.chooser.choices)} if self.learner.chooser.strategy == "auto" else {}


class PlainMAML(Impl):
    """Per-task loop, ``functional_call`` + ``autograd.grad(create_graph=not first_order)``."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        super().__init__(model)
        self.lr, self.steps, self.first_order = lr, steps, first_order

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for sx, sy, qx, qy in _tasks(batch):
            fast = theta
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, fast, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.model, fast, (qx,)), qy) / batch.num_tasks).backward()


class HigherMAML(Impl):
    """higher's pattern: ``innerloop_ctx(model, SGD, copy_initial_weights=False)`` per task."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        super().__init__(model)
        self.steps, self.first_order = steps, first_order
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, batch):
        params = list(self.model.parameters())
        for sx, sy, qx, qy in _tasks(batch):
            with higher.innerloop_ctx(
                self.model, self.inner_opt, copy_initial_weights=False, track_higher_grads=not self.first_order
            ) as (fmodel, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fmodel(sx), sy))
                query_loss = default_loss(fmodel(qx), qy) / batch.num_tasks
                if not self.first_order or self.steps == 0:
                    query_loss.backward()
                else:  # the adapted weights are detached leaves: their gradient is FOMAML's
                    fast = list(fmodel.parameters())
                    for p, g in zip(params, torch.autograd.grad(query_loss, fast, allow_unused=True)):
                        _accumulate(p, g)


class Learn2LearnMAML(Impl):
    """learn2learn's pattern: ``l2l.algorithms.MAML(model, lr, first_order)``, one ``clone()`` per task,
    ``adapt(loss)`` per inner step, query loss backward per task (its Omniglot example)."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        super().__init__(model)
        self.steps = steps
        self.maml = L2L_MAML(model, lr=lr, first_order=first_order)

    def step(self, batch):
        for sx, sy, qx, qy in _tasks(batch):
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(default_loss(learner(sx), sy))
            (default_loss(learner(qx), qy) / batch.num_tasks).backward()


class _Split:
    """Body (all but the last module) and head (the last) of a Sequential model."""

    def __init__(self, model: nn.Sequential) -> None:
        self.body = nn.Sequential(*list(model)[:-1])
        self.head = model[-1]
        self.head_prefix = f"{len(model) - 1}."


class _ANILPeer(Impl, _Split):
    """A hand-written ANIL: the model split into body and head, inner SGD on the head."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        Impl.__init__(self, model)
        _Split.__init__(self, model)
        self.lr, self.steps, self.first_order = lr, steps, first_order


class PlainANIL(_ANILPeer):
    """ANIL in the plain loop: the body runs once per set, the head adapts with autograd.grad."""

    def step(self, batch):
        for sx, sy, qx, qy in _tasks(batch):
            zs, zq = self.body(sx), self.body(qx)
            fast = dict(self.head.named_parameters())
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.head, fast, (zs,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.head, fast, (zq,)), qy) / batch.num_tasks).backward()


class NaiveANIL(_ANILPeer):
    """ANIL written as MAML restricted to the head: the frozen body reruns at every inner step."""

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for sx, sy, qx, qy in _tasks(batch):
            fast = {n: p for n, p in theta.items() if n.startswith(self.head_prefix)}
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, {**theta, **fast}, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                fast = {n: p - self.lr * g for (n, p), g in zip(fast.items(), grads)}
            (default_loss(functional_call(self.model, {**theta, **fast}, (qx,)), qy) / batch.num_tasks).backward()


class HigherANIL(Impl, _Split):
    """higher on the head only; the body's features are computed once per set."""

    def __init__(self, model, lr: float, steps: int, first_order: bool) -> None:
        Impl.__init__(self, model)
        _Split.__init__(self, model)
        self.steps, self.first_order = steps, first_order
        self.inner_opt = torch.optim.SGD(self.head.parameters(), lr=lr)

    def step(self, batch):
        head_params = list(self.head.parameters())
        for sx, sy, qx, qy in _tasks(batch):
            zs, zq = self.body(sx), self.body(qx)
            with higher.innerloop_ctx(
                self.head, self.inner_opt, copy_initial_weights=False, track_higher_grads=not self.first_order
            ) as (fhead, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fhead(zs), sy))
                query_loss = default_loss(fhead(zq), qy) / batch.num_tasks
                if not self.first_order:
                    query_loss.backward()
                else:
                    fast = list(fhead.parameters())
                    grads = torch.autograd.grad(query_loss, fast + list(self.body.parameters()), allow_unused=True)
                    for p, g in zip(head_params + list(self.body.parameters()), grads):
                        _accumulate(p, g)


def _reptile_data(sx, sy, qx, qy):
    return torch.cat([sx, qx]), torch.cat([sy, qy])


class PlainReptile(Impl):
    """Per-task SGD with autograd.grad (no graph); ``.grad += (theta - theta_i) / T``."""

    def __init__(self, model, lr: float, steps: int) -> None:
        super().__init__(model)
        self.lr, self.steps = lr, steps

    def step(self, batch):
        theta = dict(self.model.named_parameters())
        for task in _tasks(batch):
            x, y = _reptile_data(*task)
            fast = {n: p.detach().requires_grad_() for n, p in theta.items()}
            for _ in range(self.steps):
                loss = default_loss(functional_call(self.model, fast, (x,)), y)
                grads = torch.autograd.grad(loss, list(fast.values()))
                fast = {n: (p - self.lr * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
            with torch.no_grad():
                for n, p in theta.items():
                    _accumulate(p, (p - fast[n]) / batch.num_tasks)


class HigherReptile(Impl):
    """higher with ``track_higher_grads=False`` (Reptile is first order); theta_i read from the fmodel."""

    def __init__(self, model, lr: float, steps: int) -> None:
        super().__init__(model)
        self.steps = steps
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, batch):
        params = list(self.model.parameters())
        for task in _tasks(batch):
            x, y = _reptile_data(*task)
            with higher.innerloop_ctx(
                self.model, self.inner_opt, copy_initial_weights=False, track_higher_grads=False
            ) as (fmodel, diffopt):
                for _ in range(self.steps):
                    diffopt.step(default_loss(fmodel(x), y))
                with torch.no_grad():
                    for p, q in zip(params, fmodel.parameters()):
                        _accumulate(p, (p - q) / batch.num_tasks)


class PlainProtoNets(Impl):
    """The reference implementation's arithmetic (Snell et al.'s code): support and query
    embedded in one pass, prototypes as class means of label-sorted supports, squared
    Euclidean distances through an (n, m, d) difference tensor."""

    def __init__(self, model, ways: int, shots: int) -> None:
        super().__init__(model)
        self.ways, self.shots = ways, shots

    def step(self, batch):
        for sx, _sy, qx, qy in _tasks(batch):
            z = self.model(torch.cat([sx, qx])).flatten(1)
            zs, zq = z[: sx.shape[0]], z[sx.shape[0] :]
            prototypes = zs.view(self.ways, self.shots, -1).mean(1)  # supports sorted by class
            n, m = zq.shape[0], prototypes.shape[0]
            dists = (zq.unsqueeze(1).expand(n, m, -1) - prototypes.unsqueeze(0).expand(n, m, -1)).pow(2).sum(2)
            (F.cross_entropy(-dists, qy) / batch.num_tasks).backward()
