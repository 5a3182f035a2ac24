"""Feature reuse in embedding learners (ProtoNets, Matching Networks, R2D2, ...): how much a plain fine-tune of the
embedding on one task's support set changes its features, per layer (Raghu et al. 2020's question asked of a
learner with no inner loop). The fine-tune: ``steps`` of SGD with rate ``lr`` on every parameter of the embedding,
minimising the cross-entropy of the learner's own head fit on the support embeddings and scored on them
(``L(phi) = CE(head(fit(f_phi(x_S), y_S), f_phi(x_S)), y_S)``); the head's meta-learned parameters stay fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import grad

from ..core.params import Params
from ..errors import InputError
from ..validate import positive_int
from .adaptation import _evaluating, activations, default_layers, held_out_tasks, layer_of
from .similarity import MEASURES, linear_cka, similarity


def _embedding_learner(learner, what: str) -> None:
    if not (hasattr(learner, "head") and hasattr(learner, "embed") and hasattr(learner, "logits")):
        raise InputError(
            f"{what} fine-tunes the embedding of an embedding + head learner (ProtoNets, MatchingNets, R2D2, ...); "
            f"{type(learner).__name__} is not one: use representation_similarity for a learner with an inner loop"
        )


def _task_loss(learner, params: Params, x: torch.Tensor, y: torch.Tensor, ways: int, zx=None, zy=None):
    """Cross-entropy at ``x`` (labels ``y``) of the head fit on ``zx``'s embeddings (default ``x``'s own)."""
    z = learner.embed(params, x)
    support = z if zx is None else learner.embed(params, zx)
    logits = learner.logits(support, y if zy is None else zy, z, ways)
    return F.cross_entropy(logits, y), logits


def embedding_finetune(learner, sx: torch.Tensor, sy: torch.Tensor, steps: int, lr: float) -> Params:
    """The embedding's parameters after ``steps`` of SGD (rate ``lr``) on the support loss of the module docstring."""
    _embedding_learner(learner, "embedding_finetune")
    ways = int(sy.max()) + 1
    params = {n: p.detach() for n, p in learner.model_params().items()}
    step = grad(lambda p: _task_loss(learner, p, sx, sy, ways)[0])
    for _ in range(steps):
        g = step(params)
        params = {n: p - lr * g[n] for n, p in params.items()}
    return params


def embedding_similarity(
    learner,
    source,
    steps: int = 10,
    lr: float = 0.01,
    num_tasks: int = 20,
    measures: Sequence[str] = ("cka", "svcca"),
    layers: Sequence[str] | None = None,
    batch_size: int = 25,
) -> dict:
    """Per layer, the similarity of the activations on the query inputs at phi and after :func:`embedding_finetune`
    (queries of ``num_tasks`` held-out tasks pooled; ``"cka_per_task"``: each task's own CKA), each layer's relative
    parameter change, and the query accuracy and support loss before and after the fine-tune (mean ± std)."""
    _embedding_learner(learner, "embedding_similarity")
    steps = positive_int("steps", steps)
    for m in measures:
        if m not in MEASURES:
            raise InputError(f"similarity measure {m!r} is not known; choose one of {', '.join(MEASURES)}")
    layers = list(layers) if layers is not None else default_layers(learner.model)
    pooled: dict[str, dict[str, list[torch.Tensor]]] = {"theta": {}, "finetune": {}}
    per_task: dict[str, list[float]] = {n: [] for n in layers}
    change: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {k: [] for k in ("accuracy", "finetune_accuracy", "loss", "finetune_loss")}
    nonfinite = 0
    with _evaluating(learner):
        theta = {n: p.detach() for n, p in learner.model_params().items()}
        for sx, sy, qx, qy in held_out_tasks(learner, source, num_tasks, batch_size):
            tuned = embedding_finetune(learner, sx, sy, steps, lr)
            ways = int(sy.max()) + 1
            with torch.no_grad():
                acts = {
                    k: activations(learner.model, p, qx, layers) for k, p in (("theta", theta), ("finetune", tuned))
                }
                if not all(bool(torch.isfinite(v).all()) for a in acts.values() for v in a.values()):
                    nonfinite += 1  # a diverged fine-tune: left out, counted
                    continue
                for k, p in (("", theta), ("finetune_", tuned)):
                    scores[f"{k}loss"].append(float(_task_loss(learner, p, sx, sy, ways)[0]))
                    logits = _task_loss(learner, p, qx, qy, ways, sx, sy)[1]
                    scores[f"{k}accuracy"].append(float((logits.argmax(-1) == qy).float().mean()))
            for k, a in acts.items():
                for n, v in a.items():
                    pooled[k].setdefault(n, []).append(v)
            for n in layers:
                per_task[n].append(linear_cka(acts["theta"][n], acts["finetune"][n]))
            for layer in layers:
                names = [n for n in theta if layer_of(n) == layer]
                num = sum(float((tuned[n] - theta[n]).pow(2).sum()) for n in names) ** 0.5
                den = sum(float(theta[n].pow(2).sum()) for n in names) ** 0.5
                change.setdefault(layer, []).append(num / den if den > 0 else 0.0)
    if layers and not per_task[layers[0]]:
        raise InputError(
            f"every one of the {nonfinite} fine-tunes gave non-finite activations ({steps} steps of rate {lr:g}): "
            "fine-tune with a smaller rate or fewer steps"
        )
    stacked = {k: {n: torch.cat(v) for n, v in a.items()} for k, a in pooled.items()}

    def summary(v: list[float]) -> dict[str, float]:
        t = torch.tensor(v, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) if len(v) > 1 else 0.0}

    return {
        "steps": steps,
        "finetune_lr": lr,
        "tasks": len(per_task[layers[0]]) if layers else 0,
        "nonfinite": nonfinite,
        "layers": layers,
        "finetune": {
            n: {m: similarity(stacked["theta"][n], stacked["finetune"][n], m) for m in measures} for n in layers
        },
        "cka_per_task": {n: summary(v) for n, v in per_task.items()},
        "change": {n: summary(v) for n, v in change.items()},
        "scores": {k: summary(v) for k, v in scores.items()},
    }
