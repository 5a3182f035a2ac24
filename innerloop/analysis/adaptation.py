"""What the inner loop changes: per-layer parameter change and representation similarity before / after adaptation.

Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature Reuse?" (ICLR) measure, per layer, the CCA
similarity of a layer's activations on the query inputs before (theta) and after (theta'_i) the inner loop: near 1
in the body means feature reuse, low means rapid learning. Here the same for any gradient-based learner, with linear
CKA beside SVCCA / PWCCA, and for comparison a plain fine-tune (SGD on every parameter) from the same theta.
Activations come from forward hooks while the model runs under ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad

from ..core.params import Params
from ..errors import InputError
from ..tasks.batch import TaskBatch
from ..tasks.fixed import FixedTasks
from ..validate import positive_int
from .similarity import MEASURES, linear_cka, similarity


def default_layers(model: nn.Module) -> list[str]:
    """The modules holding parameters of their own (linear and conv layers), normalization layers left out."""
    return [
        name
        for name, m in model.named_modules()
        if name and any(True for _ in m.parameters(recurse=False)) and "norm" not in type(m).__name__.lower()
    ]


def activations(model: nn.Module, params: Params, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict:
    """``layer -> output`` of the named submodules while ``model`` runs on ``x`` with ``params`` (forward hooks)."""
    modules = dict(model.named_modules())
    layers = list(layers) if layers is not None else default_layers(model)
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise InputError(f"layers {unknown} are no modules of {type(model).__name__}; choose from {list(modules)[1:]}")
    out: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            out[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in layers]
    try:
        functional_call(model, params, (x,), strict=False)
    finally:
        for h in handles:
            h.remove()
    return {n: out[n] for n in layers if n in out}


def held_out_tasks(learner: nn.Module, source, num_tasks: int, batch_size: int = 25) -> Iterator[tuple]:
    """``(support_x, support_y, query_x, query_y)`` of each of the fixed evaluation tasks ``0 .. num_tasks - 1`` of
    ``source`` (any ``sample(draw, ids, dtype)`` source, e.g. ``build_tasks(config, "test")``), on the learner's
    device and dtype. A :class:`TaskBatch` is taken as it is."""
    like = next(learner.parameters())
    batches = [source] if isinstance(source, TaskBatch) else FixedTasks(source, num_tasks, batch_size, dtype=like.dtype)
    for batch in batches:
        batch = batch.to(device=like.device, dtype=like.dtype)
        for i in range(batch.num_tasks):
            yield batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]


def _gradient_learner(learner, what: str):
    if not hasattr(learner, "task_adapt") or not hasattr(learner, "adapted_names"):
        raise InputError(
            f"{what} measures an inner loop; {type(learner).__name__} adapts in a forward pass (no inner loop): "
            "use snail_attention or cnp_probe for black-box learners"
        )


def adaptation_path(learner, sx, sy, steps: int) -> list[Params]:
    """theta, theta'_1, .., theta'_steps of one task: every parameter (shared ones unchanged), no graph."""
    theta = {n: p.detach() for n, p in learner.model_params().items()}
    with torch.no_grad():  # torch.func's inner gradients are still taken
        path = learner.task_adapt(theta, learner.embed(theta, sx), sy, steps, trajectory=True)
    return [{n: t.detach() for n, t in p.items()} for p in path]


def layer_of(name: str) -> str:
    """The module a parameter belongs to: ``"0.0.weight" -> "0.0"``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_change(learner, source, steps: int | None = None, num_tasks: int = 100, batch_size: int = 25) -> dict:
    """Per layer, ``||theta'_s - theta|| / ||theta||`` after s = 1 .. steps inner steps, mean and std over tasks.

    ``source``: a supervised task source (or a :class:`TaskBatch`), or for a meta-RL learner its ``RLTasks``
    (the policy adapts on episodes it samples, ``policy_paths``). Returns ``{"steps": [1..k], "tasks": n,
    "layers": {layer: {"mean": [k], "std": [k], "adapted": bool}}}``; a layer the learner does not adapt
    (ANIL's body) reports exactly 0.
    """
    if hasattr(learner, "family") and hasattr(learner, "sample"):  # meta-RL: MAML-TRPO, ProMP
        steps = positive_int("steps", steps if steps is not None else max(learner.inner_steps, 1))
        theta, adapted = learner.params(), set(learner.params())
        paths = policy_paths(learner, source, steps, num_tasks)
    else:
        _gradient_learner(learner, "parameter_change")
        steps = positive_int("steps", steps if steps is not None else max(learner.eval_steps, 1))
        theta, adapted = learner.model_params(), set(learner.adapted_names)
        with _evaluating(learner):
            paths = [
                adaptation_path(learner, sx, sy, steps)
                for sx, sy, _, _ in held_out_tasks(learner, source, num_tasks, batch_size)
            ]
    groups: dict[str, list[str]] = {}
    for n in theta:
        groups.setdefault(layer_of(n), []).append(n)
    norms = {g: math.sqrt(sum(float(theta[n].detach().double().pow(2).sum()) for n in ns)) for g, ns in groups.items()}

    def change(p: Params, start: Params, names: list[str]) -> float:
        return math.sqrt(sum(float((p[n] - start[n]).double().pow(2).sum()) for n in names))

    values = torch.tensor(
        [
            [[change(p, path[0], ns) / (norms[g] or 1.0) for g, ns in groups.items()] for p in path[1:]]
            for path in paths
        ],
        dtype=torch.float64,
    )  # (tasks, steps, layers)
    finite = torch.isfinite(values).all(-1)  # (tasks, steps): a diverged task is left out of that step's summary
    kept = finite.sum(0).clamp_min(1).double()[:, None]
    clean = torch.where(finite[..., None], values, torch.zeros_like(values))
    mean = clean.sum(0) / kept
    spread = torch.where(finite[..., None], values - mean, torch.zeros_like(values)).pow(2).sum(0)
    std = (spread / (kept - 1).clamp_min(1)).sqrt()
    return {
        "steps": list(range(1, steps + 1)),
        "tasks": len(paths),
        "nonfinite": (~finite).sum(0).tolist(),
        "layers": {
            g: {"mean": mean[:, j].tolist(), "std": std[:, j].tolist(), "adapted": bool(adapted & set(ns))}
            for j, (g, ns) in enumerate(groups.items())
        },
    }


def policy_paths(learner, source, steps: int, num_tasks: int, seed: int = 0) -> list[list[Params]]:
    """Per held-out task of ``source`` (``RLTasks``), the policy parameters before and after each of ``steps``
    policy-gradient steps of the learner's rule, on the episodes it samples (seeded by ``seed``)."""
    tasks = source.fixed(positive_int("num_tasks", num_tasks))
    with torch.no_grad():
        draw = learner.sample(tasks, seed, steps=steps)
        theta = {n: p.detach() for n, p in learner.params().items()}
        path = learner.adapt(theta, draw.inner, first_order=True, trajectory=True)
    return [[{n: t[i].detach() for n, t in p.items()} for p in path] for i in range(len(tasks))]


def finetune(learner, sx, sy, steps: int, lr: float) -> Params:
    """A plain fine-tune of one task from theta: ``steps`` of SGD with rate ``lr`` on the support loss, every
    parameter (the baseline the meta-learned inner loop is compared with)."""
    params = {n: p.detach() for n, p in learner.model_params().items()}

    def loss(p):
        return learner.task_loss(learner.functional(p, sx), sy, p)

    step = grad(loss)
    for _ in range(steps):
        g = step(params)
        params = {n: p - lr * g[n] for n, p in params.items()}
    return params


def _rule_rate(learner) -> float:
    rule = learner.update_rule
    return float(getattr(rule, "lr", getattr(rule, "init_lr", 0.01)))


def representation_similarity(
    learner,
    source,
    steps: int | None = None,
    num_tasks: int = 50,
    measures: Sequence[str] = ("cka", "svcca"),
    layers: Sequence[str] | None = None,
    finetune_lr: float | None = None,
    batch_size: int = 25,
) -> dict:
    """Per layer, the similarity of the activations on each task's query inputs at theta and after adaptation
    (``"adapted"``: the learner's own inner loop, ``steps`` steps) and after a plain fine-tune (``"finetune"``: SGD on
    every parameter, ``steps`` steps of ``finetune_lr``, default the rule's rate). The queries of all tasks are
    pooled (n = tasks x queries rows, the same inputs on both sides); ``"cka_per_task"`` adds the mean and std of
    each task's own CKA. Raghu et al. (2020) report SVCCA near 1 in the body and much lower in the head."""
    _gradient_learner(learner, "representation_similarity")
    for m in measures:
        if m not in MEASURES:
            raise InputError(f"similarity measure {m!r} is not known; choose one of {', '.join(MEASURES)}")
    steps = positive_int("steps", steps if steps is not None else max(learner.eval_steps, 1))
    lr = _rule_rate(learner) if finetune_lr is None else float(finetune_lr)
    layers = list(layers) if layers is not None else default_layers(learner.model)
    pooled: dict[str, dict[str, list[torch.Tensor]]] = {"theta": {}, "adapted": {}, "finetune": {}}
    per_task: dict[str, list[float]] = {n: [] for n in layers}
    result_nonfinite = 0
    with _evaluating(learner):
        for sx, sy, qx, _ in held_out_tasks(learner, source, num_tasks, batch_size):
            with torch.no_grad():
                adapted = adaptation_path(learner, sx, sy, steps)[-1]
            tuned = finetune(learner, sx, sy, steps, lr)
            with torch.no_grad():
                acts = {
                    k: activations(learner.model, p, qx, layers)
                    for k, p in (("theta", learner.model_params()), ("adapted", adapted), ("finetune", tuned))
                }
            if not all(bool(torch.isfinite(v).all()) for a in acts.values() for v in a.values()):
                result_nonfinite += 1  # a diverged adaptation or fine-tune: left out, counted
                continue
            for k, a in acts.items():
                for n, v in a.items():
                    pooled[k].setdefault(n, []).append(v)
            for n in layers:
                per_task[n].append(linear_cka(acts["theta"][n], acts["adapted"][n]))
    if layers and not per_task[layers[0]]:
        raise InputError(
            f"every one of the {result_nonfinite} tasks gave non-finite activations after {steps} steps "
            "(a diverged adaptation): analyse fewer steps (--steps)"
        )
    stacked = {k: {n: torch.cat(v) for n, v in a.items()} for k, a in pooled.items()}
    result: dict = {
        "steps": steps,
        "tasks": len(per_task[layers[0]]) if layers else 0,
        "finetune_lr": lr,
        "nonfinite": result_nonfinite,
    }
    result["layers"] = layers
    for k in ("adapted", "finetune"):
        result[k] = {n: {m: similarity(stacked["theta"][n], stacked[k][n], m) for m in measures} for n in layers}
    result["cka_per_task"] = {
        n: {"mean": float(torch.tensor(v).mean()), "std": float(torch.tensor(v).std()) if len(v) > 1 else 0.0}
        for n, v in per_task.items()
    }
    return result


class _evaluating:
    """``with _evaluating(learner):`` the learner in eval mode, its mode restored afterwards."""

    def __init__(self, learner: nn.Module) -> None:
        self.learner = learner

    def __enter__(self) -> None:
        self.was = self.learner.training
        self.learner.eval()

    def __exit__(self, *exc) -> None:
        self.learner.train(self.was)
