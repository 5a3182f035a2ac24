"""Reptile.

Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms".
https://arxiv.org/abs/1803.02999

Train on each task with k steps of SGD from the shared initialization, then move the
initialization toward the adapted weights. Batched version (Algorithm 2)::

    theta_i = U^k_{T_i}(theta)        for i = 1..n
    theta  <- theta + beta * (1/n) sum_i (theta_i - theta)

Serial version (Algorithm 1): the same update with one task at a time.

Reptile has no differentiable meta-loss: :meth:`Reptile.meta_backward` stores the
pseudo-gradient ``g = theta - mean_i theta_i`` in ``.grad``, so that the trainer's
optimizer applies it (``SGD(lr=beta)`` gives Algorithm 2 exactly; Adam is the variant
the paper uses for its few-shot experiments). :meth:`Reptile.serial_update` applies
Algorithm 1 over a batch of tasks one after another; Algorithm 1 in the trainer is
Algorithm 2 with a meta-batch of one task.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from ..core.params import Params
from ..tasks.batch import TaskBatch
from .gradient import DEFAULT_INNER_LR, GradientLearner


def _task_data(support_x, support_y, query_x, query_y):
    """Reptile trains on all of a task's examples during meta-training (tensors or pytrees of them)."""
    return tree_map(lambda s, q: torch.cat([s, q]), (support_x, support_y), (query_x, query_y))


class Reptile(GradientLearner):
    """Reptile with an SGD inner loop of ``inner_steps`` steps at rate ``inner_lr``.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization theta.
        inner_lr: the inner SGD rate (default 0.01; not with ``update_rule=``).
        inner_steps: k, the inner steps on each task's support and query examples (>= 1).
        **kwargs: as :class:`~innerloop.algorithms.gradient.GradientLearner` (first order only).
    """

    def __init__(self, model, inner_lr: float = DEFAULT_INNER_LR, inner_steps: int = 5, **kwargs):
        kwargs.setdefault("first_order", True)
        if not kwargs["first_order"]:
            raise ValueError("Reptile is first-order by definition; drop first_order=False")
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, **kwargs)
        if self.inner_steps < 1:
            raise ValueError("Reptile needs inner_steps >= 1: with 0 steps theta_i = theta and nothing is learned")

    def adapted_weights(self, batch: TaskBatch, theta: Params | None = None) -> tuple[Params, dict]:
        """theta_i for every task (stacked over the task dimension) and the post-adaptation metrics."""
        theta = {n: p.detach() for n, p in (theta or self.model_params()).items()}

        def per_task(support_x, support_y, query_x, query_y):
            x, y = _task_data(support_x, support_y, query_x, query_y)
            theta_i = self.task_adapt(theta, x, y, self.inner_steps)
            return theta_i, self.task_metrics(self.forward(query_x, theta_i), query_y, theta_i)

        with torch.no_grad():
            return self.map_tasks(per_task, batch)

    def meta_loss(self, batch):
        """Not defined for Reptile (raises): use :meth:`meta_backward`."""
        raise NotImplementedError(
            "Reptile has no differentiable meta-loss; call meta_backward(batch), which stores the "
            "Reptile pseudo-gradient theta - mean_i(theta_i) in .grad"
        )

    def meta_backward(self, batch: TaskBatch, weight: float = 1.0):
        """Add ``weight * (theta - mean_i theta_i)`` to each parameter's ``.grad``; returns the mean metrics."""
        self.check_batch(batch, "meta_backward")
        theta_i, metrics = self.adapted_weights(batch)
        for name, p in self.model.named_parameters():
            if name not in theta_i:
                continue
            g = weight * (p.detach() - theta_i[name].mean(0))  # -(1/n) sum_i (theta_i - theta)
            p.grad = g if p.grad is None else p.grad + g
        return {name: value.mean() for name, value in metrics.items()}

    @torch.no_grad()
    def serial_update(self, batch: TaskBatch, beta: float) -> Params:
        """Algorithm 1 over the tasks of ``batch`` in order: theta <- theta + beta (theta_i - theta)."""
        self.check_batch(batch, "serial_update")
        theta = {n: p.detach().clone() for n, p in self.model_params().items()}
        for task in batch:
            theta_i, _ = self.adapted_weights(task, theta)
            theta = {n: p + beta * (theta_i[n][0] - p) if n in theta_i else p for n, p in theta.items()}
        return theta
