"""Sinusoid regression reproduction (Finn et al. 2017, section 5.1): every sinusoid preset, then one table.

    python benchmarks/sinusoid.py --iterations 70000 --out runs/bench-sine

Each preset is meta-trained with `innerloop train` (K=10 support points, meta-batch 25,
Adam 1e-3 unless the preset says otherwise) and evaluated on 1000 fresh 5-shot and
10-shot tasks (100 query points each) after 0, 1, 5 and 10 SGD steps of alpha=0.01.
Writes <out>/summary.json and prints a markdown table for benchmarks/RESULTS.md.

The 40-40 MLP gains nothing from intra-op threads, so each run uses one thread
(OMP_NUM_THREADS=1) and ``--jobs`` runs go side by side (2 on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

PRESETS = ["maml-sine", "fomaml-sine", "reptile-sine", "metasgd-sine", "anil-sine", "pretrained-sine"]
PAPER = {"maml-sine": "0.67 / 0.38 / 0.35", "pretrained-sine": "2.41 / 2.23 / 2.19"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-sine")
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    def run(preset: str) -> None:
        run_dir = out / preset
        command = [
            sys.executable, "-m", "innerloop", "train", "--config", preset, "--out", str(run_dir), "--resume",
            f"train.iterations={args.iterations}", f"train.seed={args.seed}", "train.progress=false",
        ]
        start = time.perf_counter()
        with open(out / f"{preset}.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        results = json.loads((run_dir / "eval.json").read_text())["results"]
        summary[preset] = {"wall_s": round(wall, 1), "iterations": args.iterations, "seed": args.seed, "threads": 1,
                           "command": "OMP_NUM_THREADS=1 " + " ".join(["innerloop", *command[3:]]), "results": results}
        summary_path.write_text(json.dumps(summary, indent=2))

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, args.presets))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.node()}, date {date.today()}")
    print("| preset | 5-shot 1 / 5 / 10 steps | 10-shot 1 / 5 / 10 steps | paper (5-shot?) | iterations | wall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for preset, row in summary.items():
        cells = []
        for k in ("5", "10"):
            r = row["results"][k]
            cells.append(" / ".join(f"{r[s]['loss']['mean']:.3f}±{r[s]['loss']['ci95']:.3f}" for s in ("1", "5", "10")))
        print(f"| {preset} | {cells[0]} | {cells[1]} | {PAPER.get(preset, '-')} | {row['iterations']} | {row['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
