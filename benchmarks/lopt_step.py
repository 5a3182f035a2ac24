"""Per-step cost of the learned optimizers against ``torch.optim.Adam`` on a model of about one million parameters
(issue 21: at most 3x Adam's optimizer-step time, at most 1.5x the whole training step).

    .venv/bin/python benchmarks/lopt_step.py [--device cpu|cuda] [--threads 1] [--batch 128] [--rounds 3]

Times (``torch.utils.benchmark``, median of blocked runs) the optimizer step alone (fixed gradients) and the whole
step (zero_grad, forward, backward, step) of an MLP 784-1000-200-10 (987,210 parameters) on random inputs, in
``--rounds`` interleaved rounds; a ratio is the median over rounds of the two medians of one round (load that
changes between rounds cancels). ``--timer cpu`` counts this process's CPU time (``time.process_time``) instead
of wall time: on a machine shared with other jobs it leaves out the time other processes hold the core.
Each learned rule runs in its ``torch.optim`` form (in place, ``step_inplace``), as "(compiled)" with
``compile=True`` (``step_compiled``: compiled in the warm-up steps) and, as "(functional)", through ``rule.run`` (the
functional form the inner loop differentiates: what ``LearnedOptimizer.step`` ran before).
"faults" counts the minor page faults of one step alone: ``torch.optim.Adam`` allocates temporaries of each
parameter's size at every step, and with glibc's default settings these are fresh pages (about 1,500 faults a
step here, most of its time); ``MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=4000000000`` in the
environment keeps freed memory for reuse, which shows Adam's step without them.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from torch.utils import benchmark

from innerloop.core import LearnedOptimizer
from innerloop.core.rules import Adam, AdamCorrection, FactoredMLPOptimizer, LearnedOptimizerLSTM, MLPOptimizer


class FunctionalForm(LearnedOptimizer):
    """The optimizer that always applies ``rule.run`` (no in-place step)."""

    def _in_place(self, tensors, grads) -> bool:
        return False


RULES = {
    "Adam rule": lambda: Adam(1e-3),
    "AdamCorrection": lambda: AdamCorrection(1e-3),
    "MLPOptimizer": lambda: MLPOptimizer(),
    "FactoredMLPOptimizer": lambda: FactoredMLPOptimizer(),
}
VARIANTS = {
    "torch.optim.Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "torch.optim.Adam (foreach=False)": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=False),
    **{name: (lambda params, make=make: LearnedOptimizer(params, rule=make())) for name, make in RULES.items()},
    **{
        f"{name} (functional)": (lambda params, make=make: FunctionalForm(params, rule=make()))
        for name, make in RULES.items()
    },
    **{
        f"{name} (compiled)": (lambda params, make=make: LearnedOptimizer(params, rule=make(), compile=True))
        for name, make in RULES.items()
        if name != "Adam rule"
    },
    "LearnedOptimizerLSTM": lambda params: LearnedOptimizer(params, rule=LearnedOptimizerLSTM(1e-3)),
}
DEFAULT = [name for name in VARIANTS if name != "LearnedOptimizerLSTM"]


def model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(784, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 200), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(200, 10)).to(device)


def prepare(name: str, device: torch.device, batch: int):
    """The optimizer step alone and the whole training step of one variant, warmed up."""
    net = model(device)
    opt = VARIANTS[name](net.parameters())
    x, y = torch.randn(batch, 784, device=device), torch.randint(0, 10, (batch,), device=device)

    def train_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        train_step()
    return opt.step, train_step


def measure(fns: dict, rounds: int, min_run_time: float, timer) -> dict[str, list[float]]:
    """Median seconds of each function in each of ``rounds`` interleaved rounds."""
    medians: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = benchmark.Timer("f()", globals={"f": fn}, timer=timer)
            medians[name].append(t.blocked_autorange(min_run_time=min_run_time).median)
    return medians


def faults(fn, calls: int = 20) -> float:
    """Minor page faults per call of ``fn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--timer", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--variants", default=",".join(DEFAULT), help="comma-separated names of VARIANTS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and args.timer == "cpu":
        raise SystemExit("--timer cpu counts host CPU time only: use --timer wall on a GPU")
    timer = time.process_time if args.timer == "cpu" else time.perf_counter
    params = sum(p.numel() for p in model(device).parameters())
    print(f"model: MLP 784-1000-200-10, {params} parameters, batch {args.batch}, {device}, {args.threads} thread(s), "
          f"{args.timer} time, {args.rounds} rounds of min_run_time {args.min_run_time} s")  # fmt: skip
    names = ["torch.optim.Adam", *(n for n in args.variants.split(",") if n != "torch.optim.Adam")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}: choose from {list(VARIANTS)}")
    steps = {name: prepare(name, device, args.batch) for name in names}
    alone = measure({n: s[0] for n, s in steps.items()}, args.rounds, args.min_run_time, timer)
    whole = measure({n: s[1] for n, s in steps.items()}, args.rounds, args.min_run_time, timer)
    print("| optimizer | step alone (ms) | x Adam | faults | whole step (ms) | x Adam |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        a, w = statistics.median(alone[name]) * 1e3, statistics.median(whole[name]) * 1e3
        ra, rw = ratio(alone, name, "torch.optim.Adam"), ratio(whole, name, "torch.optim.Adam")
        print(f"| {name} | {a:.2f} | {ra:.2f} | {faults(steps[name][0]):.0f} | {w:.2f} | {rw:.2f} |")


if __name__ == "__main__":
    main()
