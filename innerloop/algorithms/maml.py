"""MAML and first-order MAML.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML. https://arxiv.org/abs/1703.03400

For each task T_i of a meta-batch, adapt on its support set (eq. 1, repeated
``inner_steps`` times)::

    theta'_i = theta - alpha * grad_theta L_support_i(f_theta)

and meta-train the initialization on the query sets at the adapted parameters (eq. 2)::

    min_theta  sum_i L_query_i(f_theta'_i)

The outer gradient differentiates through the inner loop (second order). First-order
MAML (section 5.2 of the paper) drops the second derivatives: the inner gradients are
constants, so the meta-gradient is grad L_query_i evaluated at theta'_i.
"""

from __future__ import annotations

from .gradient import DEFAULT_INNER_LR, GradientLearner


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization.
        inner_lr: alpha, the inner-loop step size of the plain SGD rule (default 0.01). Not
            together with ``update_rule=``, whose rule carries its own rate (refused: ConfigError).
        inner_steps: inner gradient steps at meta-training time.
        first_order: drop second derivatives (FOMAML).
        adapt: which parameters adapt in the inner loop: ``"all"``, ``"head"``, a
            regular expression over names, a list of names or a predicate. The others
            are shared across tasks and only receive the outer gradient.
        update_rule: replaces plain SGD (e.g. ``MetaSGDRates()``, ``PerLayerPerStepRates()``).
        eval_steps: default number of steps for :meth:`adapt` (defaults to inner_steps).
        loss_fn: task loss; default cross-entropy for integer labels, else MSE.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"`` (measure both, keep the faster; the loop,
            with one warning, where vmap cannot run the model or loss).
        checkpoint_steps: second order only: store no inner-step graph, recompute each step
            in the backward pass (less memory, one more forward; loop strategy, ``.backward()``).
        compile: ``torch.compile`` the meta-loss (a fixed strategy; the first step compiles).
    """

    def episode_metrics(self, batch):
        """Per-task query metrics ``(T,)`` after adaptation; ``meta_loss(batch, reduction)`` (the base's) reduces them.

        ``batch`` is a ``TaskBatch`` or a list of tasks of different sizes (a ``TaskList``, or a list
        of ``TaskBatch`` es and ``(support_x, support_y, query_x, query_y)`` tuples), run task by task.
        ``reduction="none"`` returns the per-task losses ``(T,)`` (and per-task metrics) to weight
        yourself; ``"sum"`` their sum.
        """
        self.check_batch(batch)  # innerloop.tasks.checks (a compiled meta-loss checks before the graph)
        theta = self.model_params()

        def query_loss(support_x, support_y, query_x, query_y):
            theta_i = self.task_adapt(theta, self.embed(theta, support_x), support_y, self.inner_steps)
            prediction = self.head_forward(theta_i, self.embed(theta, query_x))
            return self.task_metrics(prediction, query_y)  # L_query_i(f_theta'_i), plus accuracy

        return self.map_tasks(query_loss, batch)


class FOMAML(MAML):
    """First-order MAML: MAML with ``first_order=True`` (Finn et al. 2017, section 5.2).

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization.
        inner_lr: alpha, the inner SGD step size (default 0.01; not with ``update_rule=``).
        **kwargs: as :class:`MAML`; ``first_order`` defaults to True.
    """

    def __init__(self, model, inner_lr=DEFAULT_INNER_LR, **kwargs):
        kwargs.setdefault("first_order", True)
        super().__init__(model, inner_lr=inner_lr, **kwargs)
