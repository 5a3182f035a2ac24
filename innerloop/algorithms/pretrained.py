"""The pretrained baseline of the MAML paper.

Finn et al. (2017), section 5.1: "pretraining on all of the tasks, which entails
training a network to regress to random sinusoid functions and then, at test-time,
fine-tuning with gradient descent on the K provided points".

Meta-training here is ordinary joint training on every example of every task::

    min_theta  sum_i L_{T_i}(f_theta)      (support and query points together)

and adaptation is plain fine-tuning with SGD at ``inner_lr``.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from .gradient import DEFAULT_INNER_LR, GradientLearner


class Pretrained(GradientLearner):
    """Joint training over tasks, fine-tuned at test time (a baseline, not a meta-learner).

    Args:
        model: any ``nn.Module``, trained on every example of every task.
        inner_lr: the SGD rate of test-time fine-tuning (default 0.01; not with ``update_rule=``).
        eval_steps: fine-tuning steps of :meth:`adapt` and the default evaluation.
        **kwargs: as :class:`~innerloop.algorithms.gradient.GradientLearner` (``loss_fn``, ``strategy``, ...).
    """

    def __init__(self, model, inner_lr: float = DEFAULT_INNER_LR, eval_steps: int = 1, **kwargs):
        if kwargs.pop("inner_steps", 0):
            raise ValueError("Pretrained has no inner loop at training time; set eval_steps for test-time fine-tuning")
        super().__init__(model, inner_lr=inner_lr, inner_steps=0, eval_steps=eval_steps, first_order=True, **kwargs)

    def meta_loss(self, batch):
        """``(loss, metrics)`` of the model on all support and query examples of ``batch`` pooled."""
        self.check_batch(batch)
        x, y = tree_map(
            lambda s, q: torch.cat([s, q], 1).flatten(0, 1),
            (batch.support_x, batch.support_y),
            (batch.query_x, batch.query_y),
        )
        metrics = self.task_metrics(self(x), y, self.model_params())
        return metrics["loss"], {name: value.detach() for name, value in metrics.items()}
