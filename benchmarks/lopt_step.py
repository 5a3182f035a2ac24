"""Per-step cost of the learned optimizers against ``torch.optim.Adam`` on a model of about one million parameters
(issue 21: at most 3x Adam's optimizer-step time, at most 1.5x the whole training step).

    .venv/bin/python benchmarks/lopt_step.py [--device cpu|cuda] [--threads 1] [--batch 128]

Times (``torch.utils.benchmark``, median of blocked runs) the optimizer step alone (fixed gradients) and the whole
step (zero_grad, forward, backward, step) of an MLP 784-1000-200-10 (987,210 parameters) on random inputs.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from innerloop.core import LearnedOptimizer
from innerloop.core.rules import Adam, AdamCorrection, FactoredMLPOptimizer, LearnedOptimizerLSTM, MLPOptimizer

VARIANTS = {
    "torch.optim.Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "torch.optim.Adam (foreach=False)": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=False),
    "Adam rule": lambda params: LearnedOptimizer(params, rule=Adam(1e-3)),
    "AdamCorrection": lambda params: LearnedOptimizer(params, rule=AdamCorrection(1e-3)),
    "MLPOptimizer": lambda params: LearnedOptimizer(params, rule=MLPOptimizer()),
    "FactoredMLPOptimizer": lambda params: LearnedOptimizer(params, rule=FactoredMLPOptimizer()),
    "LearnedOptimizerLSTM": lambda params: LearnedOptimizer(params, rule=LearnedOptimizerLSTM(1e-3)),
}


def model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(784, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 200), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(200, 10)).to(device)


def measure(name: str, device: torch.device, batch: int, min_run_time: float) -> tuple[float, float]:
    """Median seconds of the optimizer step alone and of the whole training step."""
    net = model(device)
    opt = VARIANTS[name](net.parameters())
    x, y = torch.randn(batch, 784, device=device), torch.randint(0, 10, (batch,), device=device)

    def train_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        train_step()
    whole = benchmark.Timer("f()", globals={"f": train_step}).blocked_autorange(min_run_time=min_run_time).median
    alone = benchmark.Timer("opt.step()", globals={"opt": opt}).blocked_autorange(min_run_time=min_run_time).median
    return alone, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = sum(p.numel() for p in model(device).parameters())
    print(f"model: MLP 784-1000-200-10, {params} parameters, batch {args.batch}, {device}, {args.threads} thread(s)")
    names = ["torch.optim.Adam", *(n for n in args.variants.split(",") if n != "torch.optim.Adam")]
    rows = {name: measure(name, device, args.batch, args.min_run_time) for name in names}
    base_alone, base_whole = rows["torch.optim.Adam"]
    print("| optimizer | step alone (ms) | x Adam | whole step (ms) | x Adam |")
    print("| --- | --- | --- | --- | --- |")
    for name, (alone, whole) in rows.items():
        print(
            f"| {name} | {alone * 1e3:.2f} | {alone / base_alone:.2f} | {whole * 1e3:.2f} | {whole / base_whole:.2f} |"
        )


if __name__ == "__main__":
    main()
