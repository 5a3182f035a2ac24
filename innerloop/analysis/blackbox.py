"""Black-box learners opened up: SNAIL's attention over the support sequence, what CNP's representation encodes.

SNAIL (Mishra et al. 2018): for each query, the softmax weights of every attention block over the support
sequence and the query itself; the share of the support weight on the query's own class (chance: 1/N).
CNP (Garnelo et al. 2018): a linear probe from the task representation r to the true task parameters
(sinusoid amplitude, phase, and A cos(phi), A sin(phi), the coefficients of A sin(x - phi) in sin x, cos x), R^2.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..models.snail_blocks import AttentionBlock
from ..tasks.fixed import EVAL_DRAW
from ..validate import positive_int
from .adaptation import held_out_tasks


def attention_weights(learner, support_x, support_y, query_x) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per attention block, the weights ``(Q, S + 1)`` of each query over the ordered support sequence and itself,
    and the logits ``(Q, N)`` (the same as ``learner(support_x, support_y, query_x)``); support in sequence order."""
    net = learner.model
    context = learner.adapt(support_x, support_y)
    prefix, new = net.inputs(context.support_x, context.support_y, query_x)
    weights = []
    for block in net.blocks:
        if isinstance(block, AttentionBlock):  # the block's own step, its weights written out (AttentionBlock.step)
            q = block.query(new)
            logits = torch.cat(
                [q @ block.key(prefix).transpose(-1, -2), (q * block.key(new)).sum(-1, keepdim=True)], -1
            )
            weights.append((logits * block.scale).softmax(-1))
        prefix, new = block.step(prefix, new)
    return weights, net.head(new)


def snail_attention(learner, source, episodes: int = 3, num_tasks: int = 100, batch_size: int = 25) -> dict:
    """SNAIL's attention: the full weights of the first ``episodes`` tasks (for figures) and, over ``num_tasks``
    tasks, each block's mean share of the support weight on the query's own class (chance 1/N)."""
    if not hasattr(learner.model, "blocks") or not any(isinstance(b, AttentionBlock) for b in learner.model.blocks):
        raise InputError(f"snail_attention reads SNAIL's attention blocks; {type(learner).__name__} has none")
    episodes = positive_int("episodes", episodes, allow_zero=True)
    shown, shares = [], []
    was = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            for i, (sx, sy, qx, qy) in enumerate(held_out_tasks(learner, source, max(num_tasks, episodes), batch_size)):
                weights, _ = attention_weights(learner, sx, sy, qx)
                labels = learner.adapt(sx, sy).support_y  # support labels in sequence order
                same = (labels[None, :] == qy[:, None]).double()  # (Q, S)
                shares.append(
                    [float(((w[:, :-1].double() * same).sum(-1) / w[:, :-1].double().sum(-1)).mean()) for w in weights]
                )
                if i < episodes:
                    shown.append(
                        {
                            "support_labels": labels.tolist(),
                            "query_labels": qy.tolist(),
                            "weights": [w.double().tolist() for w in weights],
                        }
                    )
    finally:
        learner.train(was)
    values = torch.tensor(shares, dtype=torch.float64)
    return {
        "episodes": shown,
        "tasks": len(shares),
        "own_class_share": {"mean": values.mean(0).tolist(), "std": values.std(0).tolist() if len(shares) > 1 else []},
        "chance": 1.0 / learner.ways,
    }


def _r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - residual / total sum of squares (nan for a constant target)."""
    total = (y - y.mean()).pow(2).sum()
    return float(1 - (y - pred).pow(2).sum() / total) if total > 0 else float("nan")


def linear_probe(features: torch.Tensor, targets: dict[str, torch.Tensor], holdout: float = 0.25) -> dict:
    """Least-squares linear maps (with intercept) from ``features (n, d)`` to each target ``(n,)``; R^2 on the
    fitted rows (``r2_fit``, in [0, 1]) and on the last ``holdout`` of the rows (``r2_heldout``, may be < 0)."""
    x = features.reshape(features.shape[0], -1).double().cpu()  # gelsd: CPU
    n = x.shape[0]
    fit = n - round(holdout * n)
    if fit < 2 or not 0 <= holdout < 1:
        raise InputError(
            f"linear_probe needs at least 2 fitted rows and 0 <= holdout < 1, got n={n}, holdout={holdout}"
        )
    design = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    out = {}
    for name, y in targets.items():
        y = y.reshape(-1).double().cpu()
        if y.shape[0] != n:
            raise InputError(f"probe target {name!r} has {y.shape[0]} values for {n} feature rows")
        w = torch.linalg.lstsq(design[:fit], y[:fit, None], driver="gelsd").solution
        pred = (design @ w).squeeze(-1)

        out[name] = {"r2_fit": _r2(y[:fit], pred[:fit]), "r2_heldout": _r2(y[fit:], pred[fit:]) if fit < n else None}
    return out


def cnp_probe(learner, source, num_tasks: int = 500, batch_size: int = 100, holdout: float = 0.25) -> dict:
    """CNP's representation r against the true task parameters of ``source`` (its ``task_parameters(draw, ids)``,
    e.g. :class:`~innerloop.tasks.sinusoid.SinusoidTasks`) on its fixed evaluation tasks: a linear probe's R^2."""
    if not hasattr(source, "task_parameters"):
        raise InputError(
            f"cnp_probe needs the true task parameters: {type(source).__name__} has no task_parameters(draw, ids) "
            "(SinusoidTasks has)"
        )
    num_tasks = positive_int("num_tasks", num_tasks)
    was = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            r = torch.stack(
                [learner.adapt(sx, sy) for sx, sy, _, _ in held_out_tasks(learner, source, num_tasks, batch_size)]
            )
    finally:
        learner.train(was)
    truth = source.task_parameters(EVAL_DRAW, range(num_tasks))
    if {"amplitude", "phase"} <= set(truth):
        a, phi = truth["amplitude"], truth["phase"]
        truth = {**truth, "A cos(phase)": a * torch.cos(phi), "A sin(phase)": a * torch.sin(phi)}
    return {"tasks": num_tasks, "representation_size": r.shape[-1], "probe": linear_probe(r, truth, holdout)}
