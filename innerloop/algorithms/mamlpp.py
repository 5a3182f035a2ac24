"""MAML++: MAML with the training fixes of Antoniou, Edwards & Storkey (2019), each a switch.

"How to train your MAML", ICLR 2019. https://arxiv.org/abs/1810.09502

With N inner steps, theta'_0 = theta and theta'_{k+1} the k-th update of the rule (LSLR, the learned
per-layer per-step rates, is the ``update_rule``), the meta-objective of a task at epoch e is the
multi-step loss (MSL)::

    L = sum_k w_k(e) L_query(theta'_{k+1}),   w_k(e) = max(1/N - e / (N E), 0.03 / N)  for k < N - 1,
    w_{N-1}(e) = min(1/N + e (N - 1) / (N E), 1 - 0.03 (N - 1) / N)

annealed over E = ``msl_epochs`` epochs (the released code's schedule), then the last step's loss alone.
Per-step batch-norm weights and biases (BNWB): inner step k normalises with its own gamma_k, beta_k (meta-learned,
outside the inner loop; step 0's are the model's own, later steps' are ``step_norms``), and the query after
step k with those of step k. Derivative-order annealing (DA): first order for ``first_order_epochs`` epochs,
then second order. Cosine annealing of the meta learning rate is the trainer's (``train.lr_schedule=cosine``).
An epoch is ``epoch_iterations`` meta-steps; the learner counts its meta-steps in the buffer ``iteration``
(checkpointed: a resumed run continues both schedules exactly).

Departs from the paper: batch norm stays transductive (batch statistics at training and test); per-step running
statistics are not kept, since the released code tracks them but normalises with ``F.batch_norm(training=True)``,
which never reads them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.batchnorm import TransductiveBatchNorm
from ..core.engine import adapt_params
from ..core.params import AdaptSpec, Params, select_adapted, slot, split
from ..errors import ConfigError
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .gradient import DEFAULT_INNER_LR
from .maml import MAML
from .step import Shard

#: The released code's floor on the weight of each non-final step's loss, times N (``0.03 / N``).
MIN_STEP_WEIGHT = 0.03


def multi_step_weights(steps: int, epoch: int, anneal_epochs: int) -> list[float]:
    """The MSL weights ``w_0 .. w_{N-1}`` at ``epoch`` (they sum to 1); past ``anneal_epochs`` the last step alone."""
    if epoch >= anneal_epochs:
        return [0.0] * (steps - 1) + [1.0]
    decay = epoch / (steps * anneal_epochs)
    floor = MIN_STEP_WEIGHT / steps
    early = [max(1.0 / steps - decay, floor) for _ in range(steps - 1)]
    return [*early, min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)]


def norm_param_names(model: nn.Module) -> list[str]:
    """The affine parameters (``weight``, ``bias``) of the model's batch-norm layers, in registration order."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, TransductiveBatchNorm)) and module.weight is not None:
            names += [f"{prefix}.weight", f"{prefix}.bias"] if prefix else ["weight", "bias"]
    return names


class MAMLPlusPlus(MAML):
    """MAML++ (Antoniou et al. 2019): MSL, per-step batch-norm weights and biases, derivative-order annealing.

    The paper's learner is ``MAMLPlusPlus(model, update_rule=PerLayerPerStepRates(0.1), inner_steps=5)`` with
    a cosine-annealed meta learning rate; every piece can be switched off to ablate it.

    Args:
        model: any ``nn.Module`` (batch-norm layers for ``per_step_bn``).
        inner_lr: the plain SGD rate (without ``update_rule=``; LSLR is ``update_rule=PerLayerPerStepRates(lr)``).
        inner_steps: N, inner steps at meta-training (5 in the paper).
        per_step_bn: one set of batch-norm weights and biases per inner step (BNWB), not adapted in the inner loop.
        msl_epochs: E, epochs over which the multi-step loss anneals to the last step (0: the last step's loss only).
        first_order_epochs: epochs trained first order before second order (DA; 0: second order throughout).
        epoch_iterations: meta-steps per epoch of the two schedules (500 in the paper's code).
        adapt: the adapted parameters (batch-norm ones are left out with ``per_step_bn``).
        **kwargs: as :class:`~innerloop.algorithms.MAML` (``update_rule``, ``eval_steps``, ``strategy``, ...).
    """

    objective = "msl_loss"  # minimised; "loss" is the last step's query loss, as validation reports it
    iteration: torch.Tensor  # buffer: meta-steps taken, the clock of the schedules

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float | None = DEFAULT_INNER_LR,
        inner_steps: int = 5,
        per_step_bn: bool = True,
        msl_epochs: int = 10,
        first_order_epochs: int = 0,
        epoch_iterations: int = 500,
        adapt: AdaptSpec = "all",
        **kwargs,
    ) -> None:
        norms = norm_param_names(model)
        if per_step_bn and not norms:
            raise ConfigError(
                f"per_step_bn=True keeps batch-norm weights and biases per inner step, but the {type(model).__name__} "
                "has no batch-norm layer; set per_step_bn=False (config: algorithm.per_step_bn=false)"
            )
        if per_step_bn:  # the per-step weights and biases are meta-learned only (the paper's inner loop skips them)
            chosen = [n for n in select_adapted(model, adapt) if n not in norms]
            if not chosen:
                raise ConfigError(
                    f"adapt={adapt!r} selects only batch-norm parameters, which per_step_bn=True keeps per step outside "
                    "the inner loop; adapt other parameters or set per_step_bn=False"
                )
            adapt = chosen
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, adapt=adapt, **kwargs)
        if self.inner_steps < 1:
            raise ConfigError(f"MAML++ needs inner_steps >= 1 (its losses are per inner step), got {inner_steps}")
        self.per_step_bn = bool(per_step_bn)
        self.msl_epochs = positive_int("msl_epochs", msl_epochs, allow_zero=True)
        self.first_order_epochs = positive_int("first_order_epochs", first_order_epochs, allow_zero=True)
        self.epoch_iterations = positive_int("epoch_iterations", epoch_iterations)
        self.norm_names = norms if self.per_step_bn else []
        params = self.model_params()
        # Steps 1 .. N-1 (step 0 uses the model's own), initialised as the model's: an untrained learner is MAML.
        self.step_norms = nn.ParameterDict(
            {slot(n): nn.Parameter(torch.stack([params[n].detach()] * (self.inner_steps - 1))) for n in self.norm_names}
            if self.inner_steps > 1
            else {}
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))  # meta-steps taken (the schedules' clock)

    # -- the schedules ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The training epoch the schedules read: ``iteration // epoch_iterations``."""
        return int(self.iteration) // self.epoch_iterations

    def step_weights(self) -> list[float]:
        """The multi-step loss weights of the current epoch (``msl_epochs=0``: the last step alone)."""
        return multi_step_weights(self.inner_steps, self.epoch, self.msl_epochs)

    def second_order_now(self) -> bool:
        """Whether the current meta-step differentiates through the inner gradients (DA and ``first_order``)."""
        return not self.first_order and self.epoch >= self.first_order_epochs

    def meta_step(self, batch: TaskBatch, optimizer, shard: Shard = Shard()) -> dict[str, float]:
        """One meta-update (the base's), then the schedules' clock advances by one iteration."""
        metrics = super().meta_step(batch, optimizer, shard)
        self.advance()
        return metrics

    def advance(self, iterations: int = 1) -> None:
        """Advance the schedules' clock (a training loop of your own calls it after each meta-update)."""
        self.iteration.add_(iterations)

    def clone(self, first_order: bool | None = None):
        """A per-task handle for your own loop (``MAML.clone``); without per-step batch norm, which it cannot step."""
        if self.norm_names:
            raise ConfigError(
                "MAMLPlusPlus.clone() steps one set of batch-norm weights, but per_step_bn=True keeps one per inner "
                "step; use meta_loss / meta_step, or build the learner with per_step_bn=False for a handle"
            )
        return super().clone(first_order)

    task = clone

    # -- per-step batch norm -----------------------------------------------------------------
    def norms_at(self, params: Params, step: int) -> Params:
        """The batch-norm weights and biases inner step ``step`` uses (past the trained steps: the last one's)."""
        row = min(step, self.inner_steps - 1)
        if row == 0:
            return {n: params[n] for n in self.norm_names}
        return {n: self.step_norms[slot(n)][row - 1] for n in self.norm_names}

    def task_adapt(self, params, x, y, steps, trajectory=False, first_order=None, meta=None):
        """theta'_i as in MAML, step k's support loss and the parameters after it with step k's batch-norm weights."""
        if not self.norm_names:
            return super().task_adapt(params, x, y, steps, trajectory, first_order, meta)
        # Each step's support data carries its batch-norm parameters (engine's per-step data).
        per_step = [((x, y), self.norms_at(params, k)) for k in range(steps)]
        path = self._adapt_per_step(params, per_step, steps, first_order, meta)
        with_norms = [{**p, **self.norms_at(params, max(k - 1, 0))} for k, p in enumerate(path)]
        return with_norms if trajectory else with_norms[-1]

    def _adapt_per_step(self, params, per_step, steps, first_order, meta) -> list[Params]:
        fast, shared = split(params, self.adapted_names)

        def objective(p: Params, data) -> torch.Tensor:
            support, norms = data
            return self.support_loss({**p, **norms}, support)

        path = adapt_params(
            objective,
            self.update_rule,
            fast,
            shared,
            per_step,
            steps,
            per_step=True,
            first_order=self.first_order if first_order is None else first_order,
            trajectory=True,
            checkpoint=self.checkpoint_steps,
            meta=self.rule_meta() if meta is None else meta,
        )
        assert isinstance(path, list)
        return path

    # -- the meta-objective --------------------------------------------------------------------
    def episode_metrics(self, batch):
        """Per-task ``msl_loss`` (the weighted multi-step query loss, minimised) and the last step's ``loss``
        and ``accuracy``, at the current epoch's weights and derivative order."""
        self.check_batch(batch)
        theta = self.model_params()
        weights, first_order = self.step_weights(), not self.second_order_now()
        steps = self.inner_steps

        def task(support_x, support_y, query_x, query_y):
            path = self.task_adapt(theta, self.embed(theta, support_x), support_y, steps, True, first_order)
            zq = self.embed(theta, query_x)
            last = self.task_metrics(self.head_forward(path[steps], zq), query_y)
            msl = weights[-1] * last["loss"]
            for k, w in enumerate(weights[:-1]):
                if w:  # L_query after step k, weighted
                    msl = msl + w * self.task_loss(self.head_forward(path[k + 1], zq), query_y)
            return {**last, "msl_loss": msl}

        return self.map_tasks(task, batch)
