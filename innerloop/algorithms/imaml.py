"""iMAML: MAML with implicit gradients.

Rajeswaran, Finn, Kakade & Levine (2019), "Meta-Learning with Implicit Gradients", NeurIPS.
https://arxiv.org/abs/1909.04630

Each task's adapted parameters solve a proximally regularized problem (eq. 3)::

    phi*_i(theta) = argmin_phi  G_i(phi) = L_support_i(phi) + (lambda / 2) ||phi - theta||^2

and the meta-gradient of ``L_query_i(phi*_i)`` follows from the stationarity of ``G_i`` at ``phi*_i``
(Lemma 1), without differentiating through the inner solver::

    d L_query_i / d theta = (I + H_i / lambda)^-1 grad_phi L_query_i(phi*_i),   H_i = hess_phi L_support_i(phi*_i)

solved with ``cg_steps`` conjugate-gradient steps from 0 on Hessian-vector products (Algorithm 2, a fixed
number of steps so that it runs under ``vmap``; ``cg_damping`` adds ``cg_damping * I`` to the system).
The inner problem is solved with no autograd graph (memory does not grow with ``inner_steps``) by
``inner_steps`` steps of gradient descent on ``G_i`` (iMAML-GD), or with ``inner_solver="hf"`` by Hessian-free
Newton steps (iMAML-HF): ``d ~ -(H_i + lambda I)^-1 grad G_i`` by ``hf_cg_steps`` CG steps (truncated at negative
curvature), then ``phi <- phi + t d`` with ``t`` the best of 1, 1/2, ..., 1/32 and 0 by ``G_i`` (the paper's line
search as a fixed grid, so that it runs under ``vmap``). ``proximal="final"`` solves the problem the way the
authors' released code (aravindr93/imaml_dev, ``examples/omniglot_implicit_maml.py``) does: ``inner_steps`` steps of
gradient descent on ``L_support`` alone, then one step on the proximal term,
``phi <- phi - inner_lr * lambda * (phi - theta)``; its CG matrix is
``(1 + cg_damping) I + H / (lambda + cg_lam_damping)`` with ``cg_lam_damping = 10`` there (docs/learners.md says
where this departs from eq. 3 and why the Omniglot presets use it). Departs from the paper: parameters outside
``adapt=`` (shared, not in the proximal term) get the exact total derivative
``dL_q/dtheta_s - (d grad_phi L_s / d theta_s)^T (H_i + lambda I)^-1 grad_phi L_q`` (the paper adapts all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import grad, vjp

from ..core.engine import adapt_params
from ..core.linalg import conjugate_gradient
from ..core.params import AdaptSpec, Params, flatten, select_adapted, split, unflatten
from ..core.rules import SGD
from ..tasks.batch import TaskBatch
from ..validate import positive_int
from .base import MetaLearner


def _positive(name: str, value: object, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``), else a ValueError naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


SOLVERS = ("gd", "hf")  # the inner solvers: gradient descent, Hessian-free Newton-CG
PROXIMAL = ("every", "final")  # the proximal term in every gradient step (eq. 3), or one pull-back step at the end
LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0)  # the step sizes t of a Newton step; 0 keeps phi


class IMAML(MetaLearner):
    """Implicit MAML: a proximal inner problem solved by gradient descent or Newton-CG, an implicit meta-gradient by CG.

    :meth:`episode_metrics` computes each task's implicit meta-gradient ``g_i`` eagerly (no inner graph) into a
    surrogate whose value is the query loss at ``phi*_i`` and whose gradient is ``g_i``, so ``meta_loss(batch)``
    (mean, sum or per task) and its ``.backward()`` (the trainer's ``meta_step``) give the iMAML meta-gradient.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization theta.
        inner_lr: the step size of gradient descent on ``G_i`` (the support loss plus the proximal term).
        inner_steps: gradient-descent steps on ``G_i`` at meta-training time (>= 1).
        lam: lambda, the strength of the proximal term (larger: phi* stays closer to theta).
        cg_steps: conjugate-gradient steps (Hessian-vector products) per task for the implicit meta-gradient.
        cg_damping: added to the CG system, ``((1 + cg_damping) I + H / lambda) g = grad L_query``.
        adapt: the adapted parameters (in the proximal problem): ``"all"``, ``"head"``, a regular expression, a
            list of names or a predicate; the others are shared and get their exact total derivative.
        eval_steps: default inner-solver steps of :meth:`adapt` and evaluation (default: inner_steps).
        loss_fn: ``(output, target)`` or ``(output, target, params) -> scalar`` task loss (support and query);
            default cross-entropy for integer labels, else MSE.
        strategy: ``"vmap"``, ``"loop"`` or ``"auto"``: how the tasks of a batch are mapped (same numbers).
        inner_solver: ``"gd"`` (gradient descent of rate ``inner_lr``) or ``"hf"`` (Hessian-free Newton-CG steps
            with a line search; ``inner_lr`` unused), the solver of the proximal inner problem.
        hf_cg_steps: CG steps (Hessian-vector products) per Newton step of ``inner_solver="hf"`` (5 in the paper).
        proximal: ``"every"`` (gradient descent on ``G_i``, eq. 3) or ``"final"`` (gradient descent on ``L_support``,
            then one pull-back step towards theta of rate ``inner_lr * lam``: the authors' released code; gd only).
        cg_lam_damping: added to lambda in the CG system's Hessian term, ``H / (lambda + cg_lam_damping)`` (the
            authors' code: 10; 0 is Lemma 1's system).
    """

    #: What a diverging run proposes: CG needs ``I + H / lambda`` positive definite, which a larger lambda restores.
    divergence_fix = "Lower train.meta_lr or algorithm.inner_lr, raise algorithm.lam or algorithm.cg_damping, or set train.grad_clip."

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 10,
        lam: float = 1.0,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        adapt: AdaptSpec = "all",
        eval_steps: int | None = None,
        loss_fn=None,
        strategy: str = "auto",
        inner_solver: str = "gd",
        hf_cg_steps: int = 5,
        proximal: str = "every",
        cg_lam_damping: float = 0.0,
    ) -> None:
        super().__init__(model, loss_fn, strategy)
        if inner_solver not in SOLVERS:
            raise ValueError(f"inner_solver must be one of {', '.join(SOLVERS)}, got {inner_solver!r}")
        if proximal not in PROXIMAL:
            raise ValueError(f"proximal must be one of {', '.join(PROXIMAL)}, got {proximal!r}")
        if proximal == "final" and inner_solver != "gd":
            raise ValueError("proximal='final' (a pull-back step after gradient descent) needs inner_solver='gd'")
        self.inner_solver, self.proximal = inner_solver, proximal
        self.cg_lam_damping = _positive("cg_lam_damping", cg_lam_damping, allow_zero=True)
        self.hf_cg_steps = positive_int("hf_cg_steps", hf_cg_steps)
        self.inner_lr = _positive("inner_lr", inner_lr)
        self.inner_steps = positive_int("inner_steps", inner_steps)  # 0 steps: phi* = theta is no stationary point
        self.eval_steps = positive_int("eval_steps", inner_steps if eval_steps is None else eval_steps, allow_zero=True)
        self.lam = _positive("lam", lam)
        if proximal == "final" and self.inner_lr * self.lam > 1:
            raise ValueError(
                f"proximal='final' needs inner_lr * lam <= 1 (a pull-back past theta), got {self.inner_lr * self.lam:g}"
            )
        self.cg_steps = positive_int("cg_steps", cg_steps)
        self.cg_damping = _positive("cg_damping", cg_damping, allow_zero=True)
        self.adapted_names = select_adapted(model, adapt)
        self.rule = SGD(self.inner_lr)  # the inner solver (no meta-parameters)

    # -- the inner problem ----------------------------------------------------------
    def support_loss(self, fast: Params, shared: Params, x, y) -> torch.Tensor:
        """``L_support(phi)``: the task loss of the model at ``fast`` (adapted) and ``shared`` parameters."""
        params = {**shared, **fast}
        return self.task_loss(self.functional(params, x), y, params)

    def solve(self, theta: Params, x, y, steps: int, trajectory: bool = False) -> Any:
        """``phi*``: ``steps`` steps of the inner solver on ``G(phi) = L_support(phi) + lambda/2 ||phi - theta||^2``
        from ``phi = theta`` (gradient descent: the engine's ``adapt_params`` with ``SGD(inner_lr)``; or Newton-CG),
        detached, no graph kept; with ``trajectory``, the list of parameters after 0, 1, ..., ``steps`` steps."""
        anchor, shared = split({n: p.detach() for n, p in theta.items()}, self.adapted_names)

        def support(params: Params, data) -> torch.Tensor:
            return self.support_loss({n: params[n] for n in anchor}, shared, *data)

        def objective(params: Params, data) -> torch.Tensor:
            proximal = sum(((params[n] - a) ** 2).sum() for n, a in anchor.items())
            return support(params, data) + self.lam / 2 * proximal

        if self.inner_solver == "hf":
            return self._newton_cg(lambda fast: objective(fast, (x, y)), anchor, shared, steps, trajectory)
        descended = objective if self.proximal == "every" else support
        path = adapt_params(
            descended, self.rule, anchor, shared, (x, y), steps, first_order=True, trajectory=trajectory
        )
        if self.proximal == "every":
            return path
        rate = self.inner_lr * self.lam  # then one gradient step on lambda/2 ||phi - theta||^2

        def pull_back(params: Params) -> Params:
            return {n: p - rate * (p - anchor[n]) if n in anchor else p for n, p in params.items()}

        return [pull_back(p) for p in path] if isinstance(path, list) else pull_back(path)

    def _newton_cg(self, objective, anchor: Params, shared: Params, steps: int, trajectory: bool) -> Any:
        """iMAML-HF: ``phi <- phi + t d``, ``d`` from ``hf_cg_steps`` CG steps on ``(H + lambda I) d = -grad G``
        (Hessian-vector products of ``G``; stopped at negative curvature), ``t`` the step of :data:`LINE_SEARCH`
        with the lowest ``G``."""
        phi, path = dict(anchor), [{**shared, **anchor}]
        sizes = torch.tensor(LINE_SEARCH, dtype=next(iter(anchor.values())).dtype)
        for _ in range(steps):
            linearized = vjp(grad(objective), phi)  # v -> (H + lambda I) v (symmetric: vjp is the product)
            g, hvp = linearized[0], linearized[1]

            def matvec(v: torch.Tensor, hvp=hvp, phi=phi) -> torch.Tensor:
                return flatten(hvp(unflatten(v, phi))[0])

            direction = conjugate_gradient(matvec, -flatten(g), self.hf_cg_steps, tol=None, negative_curvature=True)
            d = unflatten(direction, phi)
            values = torch.stack([objective({n: p + t * d[n] for n, p in phi.items()}) for t in LINE_SEARCH])
            t = sizes.to(values.device)[values.argmin()]
            phi = {n: p + t * d[n] for n, p in phi.items()}
            if trajectory:  # else only the current phi is kept: memory does not grow with the steps
                path.append({**shared, **phi})
        return path if trajectory else {**shared, **phi}

    def implicit_grad(self, theta: Params, sx, sy, qx, qy) -> tuple[Params, dict[str, torch.Tensor]]:
        """One task's meta-gradient ``name -> tensor`` (for every parameter of ``theta``) and its query metrics."""
        phi, shared = split(self.solve(theta, sx, sy, self.inner_steps), self.adapted_names)

        def query(fast: Params, shared: Params):
            params = {**shared, **fast}
            metrics = self.task_metrics(self.functional(params, qx), qy, params)
            return metrics["loss"], metrics

        (g_phi, g_shared), metrics = grad(query, argnums=(0, 1), has_aux=True)(phi, shared)
        # One linearization of grad_phi L_support at phi*, reused by every CG step: v -> (H v, M^T v).
        linearized = vjp(lambda f, s: grad(self.support_loss)(f, s, sx, sy), phi, shared)
        support_grad, vjp_fn = linearized[0], linearized[1]

        def matvec(v: torch.Tensor) -> torch.Tensor:  # (I + H / (lambda + cg_lam_damping)) v
            return v + flatten(vjp_fn(unflatten(v, phi))[0]) / (self.lam + self.cg_lam_damping)

        solution = conjugate_gradient(matvec, flatten(g_phi), self.cg_steps, tol=None, damping=self.cg_damping)
        grads = unflatten(solution, phi)  # d phi*/d theta = (I + H / lambda)^-1 (H symmetric)
        if shared:  # d phi*/d theta_s = -(H + lambda I)^-1 M: the correction -M^T (H + lambda I)^-1 g_phi
            correction = vjp_fn(unflatten(solution / self.lam, phi))[1]
            grads.update({n: g_shared[n] - correction[n] for n in shared})
        residual = flatten({n: support_grad[n] + self.lam * (phi[n] - theta[n].detach()) for n in phi})
        metrics = {**{n: m.detach() for n, m in metrics.items()}, "inner_residual": residual.norm()}
        return grads, metrics

    # -- the interface ----------------------------------------------------------------
    def episode_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task metrics ``(T,)``: ``loss`` is the query loss at ``phi*_i`` as a surrogate whose gradient wrt theta
        is the implicit ``g_i`` (``meta_loss`` reduces it); ``inner_residual`` is ``||grad G_i(phi*_i)||``, where
        Lemma 1 is exact at 0."""
        self.check_batch(batch)
        theta = self.model_params()
        with torch.no_grad():  # nothing of the inner solve or of CG is recorded for autograd
            grads, metrics = self.map_tasks(lambda *task: self.implicit_grad(theta, *task), batch)
        # value: L_query(phi*_i); gradient wrt theta: g_i (theta - sg(theta) is 0 with derivative I).
        linear = sum(((theta[n] - theta[n].detach()).unsqueeze(0) * g).flatten(1).sum(1) for n, g in grads.items())
        return {**metrics, "loss": metrics["loss"] + linear}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """``phi*`` ``name -> tensor`` for one task from its support set ``(S, ...)`` (no task dimension), after
        ``steps`` gradient-descent steps on the proximal problem (default ``eval_steps``)."""
        steps = self.eval_steps if steps is None else positive_int("steps", steps, allow_zero=True)
        self.check_task(support_x, support_y)
        with torch.no_grad():
            return self.solve(self.model_params(), support_x, support_y, steps)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` with (adapted) parameters ``params``."""
        return self.forward(x, params)

    @torch.no_grad()
    def evaluate(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
        """``{s: {"loss": (T,), ...}}``: per-task query metrics after ``s`` steps on the proximal problem."""
        steps = sorted({positive_int("steps", s, allow_zero=True) for s in steps})
        self.check_batch(batch, "evaluate")
        theta = self.model_params()

        def task_eval(sx, sy, qx, qy):
            path = self.solve(theta, sx, sy, steps[-1], trajectory=True)
            return {s: self.task_metrics(self.functional(path[s], qx), qy, path[s]) for s in steps}

        return self.map_tasks(task_eval, batch)
