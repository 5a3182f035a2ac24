"""``innerloop analyze RUN``: what adaptation does and what was meta-learned, as a report in RUN/analysis/<name>/."""

from __future__ import annotations

from pathlib import Path

import typer


def analyze_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    tasks: int = typer.Option(100, min=1, help="Held-out test tasks the analyses average over."),
    steps: int | None = typer.Option(
        None, min=1, help="Inner steps to analyse (default: the run's algorithm.eval_steps, at least 1)."
    ),
    similarity_tasks: int = typer.Option(
        20, min=1, help="Tasks whose query activations the similarity pools (held in memory at once)."
    ),
    finetune_lr: float | None = typer.Option(
        None,
        help="Rate of the plain fine-tune the similarity compares with (default: the inner rule's rate; "
        "embedding learners such as ProtoNets: 0.01, with --steps default 10).",
    ),
    output: Path | None = typer.Option(
        None,
        help="New folder for the report (default: RUN/analysis/step-N-tasksT[-K]/, a new one each time; "
        "an existing non-empty folder is refused, never overwritten).",
    ),
) -> None:
    """Analyse a checkpoint on its test tasks: parameter change, representation similarity (CKA, SVCCA), learned
    rules, SNAIL attention, CNP probes; writes report.md, report.json and PNG figures."""
    from ..analysis import analyze
    from ..errors import ConfigError
    from ..training.builders import build_tasks, learner_from_checkpoint
    from ..training.checkpoint import load_checkpoint
    from .evaluate import run_dir_of

    ckpt = load_checkpoint(checkpoint)
    learner = learner_from_checkpoint(ckpt)
    if output is not None and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} already exists and is not an empty folder; name a new folder")
    out = (
        output
        if output is not None
        else new_folder(run_dir_of(ckpt) / "analysis" / f"step-{ckpt.iteration}-tasks{tasks}")
    )
    report = analyze(
        learner,
        build_tasks(ckpt.config, "test"),
        out,
        steps=steps,
        num_tasks=tasks,
        similarity_tasks=similarity_tasks,
        finetune_lr=finetune_lr,
    )
    typer.echo(
        f"analysis of {report['learner']} (checkpoint step {ckpt.iteration}, {tasks} test tasks): {out / 'report.md'}"
    )


def new_folder(stem: Path) -> Path:
    """``stem``, or ``stem-2``, ``stem-3``... whichever does not exist yet (an earlier report is never replaced)."""
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path
