"""The speed suite: one meta-training step of innerloop against ``higher`` and a plain per-task loop,
gradients checked first (``check``), timed with ``torch.utils.benchmark`` (``measure``); see README.md."""

from .check import GradientMismatch, check_gradients, meta_gradient
from .cli import main, parse_args, run
from .impls import AUTO, HIGHER_MISSING, REFERENCE, Impl, InnerloopImpl, PlainMAML, higher
from .measure import MemoryProbe, measure_peaks, run_workload, time_round_robin
from .report import machine_info, markdown, text_table
from .workloads import (
    QUICK,
    WORKLOADS,
    Workload,
    build_anil,
    build_maml,
    build_protonets,
    build_reptile,
    omniglot_batch,
    select,
    sine_batch,
)

__all__ = [
    "AUTO",
    "HIGHER_MISSING",
    "QUICK",
    "REFERENCE",
    "WORKLOADS",
    "GradientMismatch",
    "Impl",
    "InnerloopImpl",
    "MemoryProbe",
    "PlainMAML",
    "Workload",
    "build_anil",
    "build_maml",
    "build_protonets",
    "build_reptile",
    "check_gradients",
    "higher",
    "machine_info",
    "main",
    "markdown",
    "measure_peaks",
    "meta_gradient",
    "omniglot_batch",
    "parse_args",
    "run",
    "run_workload",
    "select",
    "sine_batch",
    "text_table",
    "time_round_robin",
]
