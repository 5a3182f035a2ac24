"""Rapid learning or feature reuse? (Raghu et al. 2020) measured with `innerloop analyze` on trained runs.

Trains each preset with `innerloop train` (skipped where RUN already holds a finished run: `--resume`), then
runs `innerloop analyze RUN` and prints per layer the similarity (SVCCA, CKA) of the query activations before
and after adaptation, and the relative parameter change after the last step, as one Markdown table.

    python benchmarks/feature_reuse.py --presets maml-sine anil-sine metasgd-sine --iterations 70000
    python benchmarks/feature_reuse.py --presets maml-omniglot-5w1s --iterations 60000 --tasks 100 train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["maml-sine", "anil-sine", "metasgd-sine"])
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--tasks", type=int, default=100, help="held-out test tasks of the analysis")
    parser.add_argument("--steps", type=int, default=None, help="inner steps analysed (default: eval_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/feature-reuse"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.device=cuda")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "innerloop"]
    rows = []
    for preset in args.presets:
        run, start = args.out / preset, time.time()
        train = [*cli, "train", "--config", preset, "--out", str(run), "--resume"]
        train += [f"train.iterations={args.iterations}", f"train.seed={args.seed}", "train.progress=false"]
        subprocess.run([*train, *args.overrides], check=True, stdout=subprocess.DEVNULL)
        trained = time.time() - start
        analyze = [*cli, "analyze", str(run), "--tasks", str(args.tasks), "--similarity-tasks", str(args.tasks)]
        subprocess.run(analyze + (["--steps", str(args.steps)] if args.steps else []), check=True)
        report = json.loads((run / "analysis" / "report.json").read_text())
        sim, change = report["similarity"], report["parameter_change"]
        for layer in sim["layers"]:
            after = change["layers"][layer]
            rows.append(
                f"| `{preset}` | {layer} | {sim['adapted'][layer]['svcca']:.3f} | {sim['adapted'][layer]['cka']:.3f} "
                f"| {sim['finetune'][layer]['cka']:.3f} | {after['mean'][-1]:.3g} ± {after['std'][-1]:.2g} "
                f"| {args.iterations} | {trained / 60:.1f} + {(time.time() - start - trained) / 60:.1f} min |"
            )
    print(
        f"| preset | layer | SVCCA before/after | CKA before/after | CKA before/fine-tune | change after "
        f"{sim['steps']} steps | iterations | wall (train + analyze) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
