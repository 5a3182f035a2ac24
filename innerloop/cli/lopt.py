"""``innerloop eval RUN`` (and the end of ``innerloop train``) for a learned optimizer: the comparison with tuned
Adam and SGD-momentum (:mod:`innerloop.analysis.lopt`), written beside earlier reports, never over them."""

from __future__ import annotations

from pathlib import Path

import typer

from .report import source_of, unique_path, write_result


def optimizer_output(cfg, iteration: int, run_dir: Path, output: Path | None) -> Path:
    """--output (which must not exist yet), else a new ``RUN/evals/lopt-step-N-tasksT-seedS-stepsN.json``."""
    from ..errors import ConfigError

    if output is not None:
        if output.exists():
            raise ConfigError(
                f"--output {output} already exists; innerloop eval never overwrites results: choose another"
            )
        return output
    e = cfg.eval
    return unique_path(run_dir / "evals" / f"lopt-step-{iteration:08d}-tasks{e.tasks}-seed{e.seed}-steps{max(e.steps)}")


def report_optimizer(learner, cfg, destination: Path, source: dict) -> dict:
    """Compare, print the table, write ``destination`` (JSON), its ``.md`` table, ``.png`` curves and
    ``-response.png`` (the learned update against gradient and momentum)."""
    from ..analysis.lopt import compare_run, curves_figure, format_markdown, response_figure

    markdown, curves = destination.with_suffix(".md"), destination.with_suffix(".png")
    response = destination.with_name(destination.stem + "-response.png")
    for path in (markdown, curves, response):  # the JSON name is new; its companions must be too (checked first)
        if path.exists():
            from ..errors import ConfigError

            raise ConfigError(f"{path} already exists; innerloop eval never overwrites results: give another --output")
    payload = {**source, **compare_run(learner, cfg, echo=lambda m: typer.echo(m, err=True))}
    table = format_markdown(payload)
    typer.echo(table)
    write_result(destination, payload)
    with open(markdown, "x") as f:
        f.write(table)
    curves_figure(payload, curves)
    response_figure(learner, response)
    typer.echo(f"results written to {destination} (table {markdown.name}); figures: {curves.name}, {response.name}")
    return payload


def eval_optimizer(
    ckpt, run_dir: Path, tasks: int | None, steps: list[int] | None, seed: int | None, output, other: bool
) -> None:
    """``innerloop eval RUN`` of a learned optimizer: ``--tasks``, ``--steps`` (N = the largest), ``--seed``, ``--output``."""
    from ..errors import ConfigError
    from ..training.builders import learner_from_checkpoint
    from ..training.config import validate

    if other:
        raise ConfigError(
            "a learned optimizer's evaluation takes --tasks, --steps (N: the largest), --seed and --output; "
            "--shots, --episodes, --lrs and --shift apply to few-shot and meta-RL runs"
        )
    cfg = ckpt.config
    cfg.eval.tasks = tasks or cfg.eval.tasks
    cfg.eval.seed = cfg.eval.seed if seed is None else seed
    cfg.eval.steps = list(steps) if steps else cfg.eval.steps
    validate(cfg)
    destination = optimizer_output(cfg, ckpt.iteration, run_dir, output)
    learner = learner_from_checkpoint(ckpt)
    report_optimizer(learner, cfg, destination, source_of(ckpt.path))
