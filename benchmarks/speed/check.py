"""The gradient agreement checked before anything is timed: every implementation against the reference, float64."""

from __future__ import annotations

import copy

import torch
from torch import nn

from innerloop.tasks import TaskBatch

from .workloads import Factory, Workload


class GradientMismatch(RuntimeError):
    """Implementations of one workload disagree on the meta-gradient."""


def meta_gradient(factory: Factory, model: nn.Module, batch: TaskBatch) -> dict[str, torch.Tensor]:
    impl = factory(copy.deepcopy(model))
    impl.step(batch)
    return {
        n: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
        for n, p in impl.meta_parameters().items()
    }


def check_gradients(
    workload: Workload,
    tasks: int = 4,
    rtol: float = 1e-6,
    device="cpu",
    impls: list[str] | None = None,
    channels_last: bool = False,
) -> dict[str, dict[str, float]]:
    """Every impl's meta-gradient against the reference's, float64, on the first ``tasks`` tasks.

    Returns ``{impl: {"rel_err": global, "max_tensor_rel_err": worst tensor}}``; raises
    :class:`GradientMismatch` (naming every failing impl) if any error exceeds ``rtol``.
    """
    small = Workload(
        workload.name,
        workload.description,
        workload.model,
        workload.batch[: min(tasks, workload.batch.num_tasks)],
        workload.peak_kind,
        workload.impls,
    ).to(device, torch.float64, channels_last)
    ref = meta_gradient(workload.impls[workload.reference], small.model, small.batch)
    ref_norm = torch.sqrt(sum(g.pow(2).sum() for g in ref.values())).item()
    if not ref_norm > 0:
        raise GradientMismatch(f"{workload.name}: the reference meta-gradient is zero or not finite ({ref_norm})")
    report, failures = {}, []
    for name in impls or list(workload.impls):
        if name == workload.reference:
            continue
        grads = meta_gradient(workload.impls[name], small.model, small.batch)
        if set(grads) != set(ref):
            failures.append(f"{name}: parameters {sorted(set(grads) ^ set(ref))} differ from the reference's")
            continue
        diff = torch.sqrt(sum((grads[n] - ref[n]).pow(2).sum() for n in ref)).item()
        per_tensor = max(((grads[n] - ref[n]).norm() / max(ref[n].norm().item(), 1e-3 * ref_norm)).item() for n in ref)
        rel = diff / ref_norm
        report[name] = {"rel_err": rel, "max_tensor_rel_err": per_tensor}
        if not (rel <= rtol and per_tensor <= rtol):  # also catches NaN
            failures.append(f"{name}: relative error {rel:.3e} (worst tensor {per_tensor:.3e}) > {rtol:g}")
    if failures:
        raise GradientMismatch(
            f"{workload.name}: meta-gradients disagree with '{workload.reference}' "
            f"(float64, {small.batch.num_tasks} tasks):\n  " + "\n  ".join(failures)
        )
    return report
