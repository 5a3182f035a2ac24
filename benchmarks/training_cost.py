"""Meta-training cost of presets, one after another: median wall time per iteration and peak memory.

    python benchmarks/training_cost.py --presets maml-omniglot-5w1s maml-meta-lstm-omniglot-5w1s \
        snail-omniglot-5w1s protonet-omniglot-5w1s --iterations 30 --threads 1

Cost is the stated challenge of the model-based family (issue 4), so its figures sit beside
MAML's measured the same way: each preset runs `innerloop train` for ``--iterations``
iterations in its own process (no validation, no checkpoint inside the timed part),
logging every ``--log-every``; the first logged interval is left out as warm-up and the
median of the others gives ms / iteration. Peak memory is the child's own peak RSS.
The runs go one at a time so they do not share the cores; prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _train import ms_per_iteration, train_subprocess
from omegaconf import OmegaConf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.iterations < 2 * args.log_every:
        raise SystemExit(
            f"--iterations {args.iterations}: need at least two logged intervals of --log-every {args.log_every}"
        )
    print(
        f"CPU: {platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {args.iterations} iterations each, seed 0"
    )
    print("| preset | meta-batch | ms / iteration (median) | tasks / s | peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            run_dir = Path(tmp) / preset
            command = [
                sys.executable,
                "-m",
                "innerloop",
                "train",
                "--config",
                preset,
                "--out",
                str(run_dir),
                "--no-evaluate",
                f"train.iterations={args.iterations}",
                f"train.log_every={args.log_every}",
                "train.progress=false",
                f"train.val_every={10 * args.iterations}",
                f"train.checkpoint_every={10 * args.iterations}",
            ]
            peak = train_subprocess(command, Path(tmp) / f"{preset}.log", args.threads)
            ms = ms_per_iteration(run_dir, skip=1)
            meta_batch = OmegaConf.load(run_dir / "config.yaml").train.meta_batch_size
            print(f"| `{preset}` | {meta_batch} | {ms:.0f} | {1e3 * meta_batch / ms:.1f} | {peak} MB |", flush=True)


if __name__ == "__main__":
    main()
