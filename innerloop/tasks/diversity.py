"""The diversity coefficient of a task distribution (Miranda et al. 2022, "The curse of low task diversity",
arXiv:2208.01545): the expected distance between the Task2Vec embeddings (Achille et al. 2019) of two tasks,

    div = E_{t != t'} d(f_t, f_t'),   f_t = diag F_t,   d(a, b) = 1 - cos(a / (a + b), b / (a + b)),

where ``F_t`` is the Fisher information of a probe network's parameters (all but its final layer) on task ``t``'s
examples, after the final layer was fitted to the task. Departures: the empirical Fisher (the task's own labels,
not labels sampled from the probe), and any probe network (the paper: a pretrained or random ResNet-18).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..stats import summarize
from .fixed import EVAL_DRAW


def _loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels, the unit-variance Gaussian negative log-likelihood for float targets."""
    if y.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(output, y)
    return 0.5 * ((output - y.reshape(output.shape)) ** 2).sum(-1).mean()


def task2vec(
    probe: nn.Module, x: torch.Tensor, y: torch.Tensor, head_steps: int = 50, lr: float = 0.05
) -> torch.Tensor:
    """The Task2Vec embedding of one task (examples ``x``, labels or targets ``y``): the diagonal of the empirical
    Fisher of the probe's parameters but its final layer, flattened, after fitting that layer (from zero, Adam)."""
    params = {n: p.detach() for n, p in probe.named_parameters()}
    last = next(reversed(params)).rpartition(".")[0]
    head = {n: torch.zeros_like(p, requires_grad=True) for n, p in params.items() if n.rpartition(".")[0] == last}
    body = {n: p for n, p in params.items() if n not in head}
    optimizer = torch.optim.Adam(head.values(), lr=lr)
    for _ in range(head_steps):
        optimizer.zero_grad()
        _loss(functional_call(probe, {**body, **head}, (x,)), y).backward()
        optimizer.step()
    fitted = {n: p.detach() for n, p in head.items()}

    def example_loss(b: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return _loss(functional_call(probe, {**b, **fitted}, (xi[None],)), yi[None])

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(body, x, y)
    return torch.cat([(g**2).mean(0).flatten() for g in grads.values()])


def task2vec_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Task2Vec's normalized cosine distance ``1 - cos(a / (a + b), b / (a + b))`` (0: the same task's Fisher)."""
    total = a + b + torch.finfo(a.dtype).tiny
    return 1 - nn.functional.cosine_similarity(a / total, b / total, dim=0)


def diversity_coefficient(probe: nn.Module, source, num_tasks: int = 20, draw: int = EVAL_DRAW, **task2vec_options):
    """The diversity coefficient of ``source``'s tasks ``0 .. num_tasks - 1`` of meta-batch ``draw`` (support and
    query examples together): the summary (``stats.summarize``: mean, 95% CI, ...) of the distance over the
    ``num_tasks * (num_tasks - 1) / 2`` pairs. The pairs share tasks, so the CI is an optimistic one."""
    if num_tasks < 2:
        raise ValueError(f"the diversity coefficient compares pairs of tasks: num_tasks must be >= 2, got {num_tasks}")
    dtype = next(probe.parameters()).dtype
    batch = source.sample(draw, range(num_tasks), dtype).to(device=next(probe.parameters()).device)
    embeddings = [
        task2vec(
            probe,
            torch.cat([batch.support_x[t], batch.query_x[t]]),
            torch.cat([batch.support_y[t], batch.query_y[t]]),
            **task2vec_options,
        )
        for t in range(num_tasks)
    ]
    pairs = [task2vec_distance(embeddings[i], embeddings[j]) for i in range(num_tasks) for j in range(i + 1, num_tasks)]
    return summarize(torch.stack(pairs).detach())
