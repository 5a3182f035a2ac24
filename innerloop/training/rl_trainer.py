"""Meta-training for meta-RL: the supervised :class:`~innerloop.training.trainer.Trainer` loop
(logging, validation, atomic checkpoints, exact resume) around ``learner.meta_step``.

Each iteration draws the meta-batch of tasks from ``(seed, iteration, task)`` (``rl.tasks.RLTasks``) and
rolls out with a seed derived from ``(seed, iteration)`` and each task's index, so a resumed run samples
exactly what an uninterrupted one would, and the ranks of a distributed run (``training.distributed``),
each rolling out its shard of the tasks, sample together exactly what one process would.
"""

from __future__ import annotations

import math

import torch

from ..errors import TrainingDiverged
from ..rl.evaluate import evaluate_adaptation
from ..rl.learner import Shard
from ..tasks.seeding import derive_seed
from .distributed import DistributedTrainer
from .trainer import Trainer


class RLTrainer(Trainer):
    """The :class:`Trainer` loop for a meta-RL learner: a step is ``learner.meta_step`` on this rank's
    shard of the meta-batch, validation the return before and after ``algorithm.inner_steps`` steps."""

    def step(self, iteration: int) -> dict[str, float]:
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(iteration)
        ids = self.task_slice()
        shard = Shard(task_ids=ids, weight=len(ids) / self.config.train.meta_batch_size, reduce=self.sum_over_ranks)
        tasks = self.tasks.sample(iteration, ids)
        metrics = self.learner.meta_step(
            tasks, derive_seed(self.config.train.seed, "rollouts", iteration), self.optimizer, shard
        )
        bad = [n for n, p in self.learner.named_parameters() if not torch.isfinite(p).all()]
        if bad or not all(math.isfinite(v) for v in metrics.values()):
            raise TrainingDiverged.at(
                iteration + 1,
                f"non-finite {bad[:3] or 'metrics'}",
                self.last_checkpoint,
                "Lower algorithm.inner_lr, train.meta_lr or rl.max_kl.",
            )
        return metrics

    def progress_fields(self, record: dict) -> dict[str, str]:
        return {
            "return": f"{record['return_before']:.1f}->{record['return_after']:.1f}",
            "env_steps_s": f"{record['env_steps_per_s']:.0f}",
        }

    def validate(self) -> dict[str, float]:
        c, a = self.config, self.config.algorithm
        steps = [0, a.inner_steps]
        results = evaluate_adaptation(
            self.learner,
            self.val_tasks.fixed(c.train.val_tasks),
            steps,
            c.rl.eval_episodes,
            self.learner.rule.rates,
            derive_seed(self.val_tasks.seed, "rollouts"),
            c.eval.batch_size,
        )
        return {f"return_{s}": results[s]["return"]["mean"] for s in steps}


class DistributedRLTrainer(DistributedTrainer, RLTrainer):
    """Meta-RL on the ranks of a process group: each rank rolls out its shard of the tasks, and
    the sums inside TRPO (gradient, Fisher-vector products, line search) or ProMP (gradients,
    inner KL) are all-reduced, so every rank takes the same meta-step as one process would."""
