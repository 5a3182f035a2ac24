"""``innerloop demo``: the MAML paper's sinusoid experiment in about a minute.

Meta-trains MAML and the pretrained baseline on sinusoid regression (K=10, one inner
step of 0.01), evaluates both on fresh 5-shot and 10-shot tasks after 0, 1 and 10
adaptation steps, prints the table and draws the paper's Figure 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .plots import sinusoid_figure
from .tasks import SinusoidTasks
from .training.builders import build_tasks
from .training.config import load_config
from .training.evaluate import evaluate_config, format_table
from .training.trainer import Trainer


def run_demo(
    out_dir: str | Path = "runs/demo",
    iterations: int = 6000,
    tasks: int = 1000,
    seed: int = 0,
    progress: bool = True,
    echo=print,
) -> dict:
    # A 40-40 MLP gains nothing from intra-op threads; one thread avoids their overhead.
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    common = [
        f"train.seed={seed}",
        "train.val_every=1000",
        "train.checkpoint_every=1000",
        "train.log_every=500",  # where stderr is not a terminal: a progress line every 500 iterations, not 600 per model
        "eval.steps=[0,1,10]",
        f"eval.tasks={tasks}",
    ]
    runs = {
        "MAML": load_config("maml-sine", [f"train.iterations={iterations}", *common], out_dir=str(out_dir / "maml")),
        "pretrained": load_config(
            "pretrained-sine", [f"train.iterations={iterations}", *common], out_dir=str(out_dir / "pretrained")
        ),
    }
    learners, results = {}, {}
    for name, config in runs.items():
        trainer = Trainer(config, resume=True, progress=progress)  # a finished run is reused
        if trainer.start_iteration >= config.train.iterations:
            echo(f"{name}: reusing the trained run in {config.out_dir}")
        else:
            echo(f"training {name} on sinusoids for {config.train.iterations} iterations ({config.out_dir})")
        trainer.fit()
        learners[name] = trainer.learner
        results[name] = evaluate_config(trainer.learner, config, build_tasks)
    echo("")
    echo(f"Sinusoid regression, query MSE on {tasks} fresh tasks (mean ± 95% CI), adapted with SGD alpha=0.01:")
    echo(format_table(results))
    figure = sinusoid_figure(learners, SinusoidTasks(shots=5, seed=seed + 1), out_dir / "sinusoid.png")
    serializable = {n: {str(k): {str(s): v for s, v in t.items()} for k, t in r.items()} for n, r in results.items()}
    (out_dir / "results.json").write_text(json.dumps(serializable, indent=2))
    echo(f"\nfigure: {figure}\nresults: {out_dir / 'results.json'}")
    return results
