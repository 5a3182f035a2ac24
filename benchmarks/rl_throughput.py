"""Environment throughput of every meta-RL task family, with random actions.

    python benchmarks/rl_throughput.py [--tasks 20] [--episodes 20] [--workers 2] [--families a,b]

For each family of ``innerloop.rl.envs.FAMILIES`` (default options, so the paper's
horizons), plays ``tasks x episodes`` episodes for one full horizon with uniformly random
actions, as the sampler would but without a policy: ``make`` + ``reset`` + ``horizon``
steps + ``close``. MuJoCo families run in this process and again with ``--workers``
worker processes. A first, untimed rollout of the same size builds and caches the
simulators (and starts the workers); its wall time is reported as "first rollout".

Prints a markdown table: steps/s counts environment steps (one step of one episode), so
an Ant episode that terminates early stops counting (and stops costing).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from innerloop.errors import ConfigError
from innerloop.rl.envs import FAMILIES, make_family


def random_actions(family, num_tasks: int, episodes: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform over the action space: arm indices, or a box [low, high] per coordinate."""
    if family.discrete:
        return torch.randint(family.action_dim, (num_tasks, episodes), generator=generator)
    low, high = family.action_bounds() or (-1.0, 1.0)
    return low + (high - low) * torch.rand(num_tasks, episodes, family.action_dim, generator=generator)


def rollout(family, num_tasks: int, episodes: int, seed: int) -> tuple[int, float]:
    """(environment steps taken, wall seconds) of one full-horizon random rollout."""
    generator = torch.Generator().manual_seed(seed)
    tasks = family.sample_tasks(num_tasks, generator)
    start = time.perf_counter()
    env = family.make(tasks, episodes, seed)
    try:
        env.reset()
        alive = torch.ones(num_tasks, episodes, dtype=torch.bool)
        steps = 0
        for _ in range(family.horizon):
            steps += int(alive.sum())
            _, _, terminated = env.step(random_actions(family, num_tasks, episodes, generator))
            alive &= ~terminated
    finally:
        env.close()
    return steps, time.perf_counter() - start


def versions() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for module in ("gymnasium", "mujoco"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            parts.append(f"{module} not installed")
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="worker processes for the MuJoCo families' second run")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated names (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the sampler's setting)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{versions()}; {torch.get_num_threads()} torch thread(s); {platform.machine()}, "
        f"{__import__('os').cpu_count()} CPUs\n"
    )
    print("| family | T x E | horizon | workers | steps/s | wall (s) | first rollout (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.families.split(","):
        mujoco = FAMILIES[name][0] == ".mujoco"
        for workers in [1, args.workers] if mujoco and args.workers > 1 else [1]:
            try:
                family = make_family(name, workers=workers) if mujoco else make_family(name)
            except ConfigError as error:
                print(f"| {name} | skipped: {error} |||||")
                break
            try:
                _, first = rollout(family, args.tasks, args.episodes, seed=0)  # builds the simulators
                steps, wall = rollout(family, args.tasks, args.episodes, seed=1)
            finally:
                if hasattr(family, "close"):
                    family.close()
            shown = workers if mujoco else "-"
            print(
                f"| {name} | {args.tasks} x {args.episodes} | {family.horizon} | {shown} | "
                f"{steps / wall:,.0f} | {wall:.2f} | {first:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
