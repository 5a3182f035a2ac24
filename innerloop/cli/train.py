"""The commands that meta-train: ``demo``, ``train`` and ``launch`` (any command under torchrun)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from .report import end_of_training_output, report, report_rl, source_of


def check_run_dir(path: Path) -> None:
    """Refuse, before any work, a run directory that cannot be created or written (one line naming it).

    Folders created for the probe are removed again (the check leaves nothing behind), except under torchrun,
    where another rank may be probing the same folder.
    """
    import tempfile

    from ..training.distributed import launched_by_torchrun

    created = [] if launched_by_torchrun() else [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test"):
            pass
    except OSError as err:
        from ..errors import ConfigError

        what = err.strerror or type(err).__name__
        where = err.filename or path
        raise ConfigError(
            f"cannot write the run directory {path} ({what}: {where}); choose a writable --out "
            "or fix the folder's permissions"
        ) from None
    finally:
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where runs, the figure and results.json go."),
    iterations: int = typer.Option(6000, min=1, help="Meta-training iterations for each model."),
    tasks: int = typer.Option(1000, min=1, help="Evaluation tasks per column."),
    seed: int = typer.Option(0),
) -> None:
    """Meta-train MAML and a pretrained baseline on sinusoids, print the table, draw the figure."""
    from ..demo import run_demo

    run_demo(out, iterations=iterations, tasks=tasks, seed=seed, echo=typer.echo)


def train(
    config: str = typer.Option(..., "--config", "-c", help="A preset name (see `innerloop presets`) or a YAML file."),
    overrides: list[str] | None = typer.Argument(None, help="section.key=value overrides, e.g. train.iterations=500"),
    out: str | None = typer.Option(None, help="Run directory (default runs/<preset>)."),
    resume: bool = typer.Option(False, help="Continue from the newest intact checkpoint in --out (if there is one)."),
    overwrite: bool = typer.Option(
        False,
        help="Start afresh where --out already holds a run: its contents are moved "
        "to OUT/replaced-<UTC time>/ (nothing is deleted).",
    ),
    evaluate: bool = typer.Option(True, help="Evaluate on test tasks at the end (the config's eval section)."),
) -> None:
    """Meta-train from a preset or config file (under torchrun: data-parallel over the ranks)."""
    from ..plots import episode_figure
    from ..training.builders import build_tasks
    from ..training.config import load_config, task_kind
    from ..training.evaluate import evaluate_config

    if resume and overwrite:
        from ..errors import ConfigError

        raise ConfigError(
            "--resume continues the run in --out and --overwrite sets it aside to start afresh: give one of them"
        )
    cfg = load_config(config, overrides or [], out_dir=out)
    check_run_dir(Path(cfg.out_dir))
    kind = task_kind(cfg)  # regression | classification | rl | optimizer, as the task family's registry entry says
    if kind == "optimizer":  # a learned optimizer: at the end, the comparison of `innerloop eval` (cli/lopt.py)
        from .lopt import optimizer_output, report_optimizer

        trainer, _ = fit(cfg, resume, None, overwrite)
        if evaluate and trainer.is_main:
            where = optimizer_output(cfg, cfg.train.iterations, Path(cfg.out_dir), None)
            report_optimizer(trainer.learner, cfg, where, source_of(trainer.last_checkpoint))
        return
    if kind == "rl":
        from ..training.evaluate import evaluate_rl
        from .success import evaluate_success, is_metaworld, report_success

        def final(t):  # on rank 0 only: the evaluation tasks are few, and each task is its own random stream
            if not t.is_main:
                return None
            return (
                evaluate_success(t.learner, cfg) if is_metaworld(t.learner) else evaluate_rl(t.learner, cfg, keep=True)
            )

        trainer, results = fit(cfg, resume, evaluate and final, overwrite)
        if trainer.is_main and results is not None and is_metaworld(trainer.learner):
            report_success(
                trainer.learner, cfg, end_of_training_output(cfg), source_of(trainer.last_checkpoint), results
            )
        elif trainer.is_main and results is not None:
            returns, draws = results
            report_rl(cfg, returns, draws, end_of_training_output(cfg), source_of(trainer.last_checkpoint))
        return
    from ..training.builders import split_note

    no_test = split_note(cfg, "test")  # an image folder without a test split: no final evaluation, no episode.png
    if no_test:
        typer.echo(f"note: {no_test}: no end-of-training evaluation and no episode.png", err=True)
        evaluate = False
    if evaluate and kind == "classification":  # eval.shots or eval.ways too large: say so now, not after training
        for shots in cfg.eval.shots:
            build_tasks(cfg, "test", shots=shots)
    trainer, results = fit(
        cfg, resume, evaluate and (lambda t: evaluate_config(t.learner, cfg, build_tasks, group=t.group)), overwrite
    )
    if not trainer.is_main:
        return
    if kind == "classification" and not no_test:
        picture = episode_figure(
            trainer.learner, build_tasks(cfg, "test").sample(0, [0]), Path(cfg.out_dir) / "episode.png"
        )
        typer.echo(f"an evaluation episode: {picture}")
    if results is not None:
        report(trainer.learner, cfg, results, end_of_training_output(cfg), source_of(trainer.last_checkpoint))


def fit(cfg, resume: bool, evaluate, overwrite: bool = False):
    """Meta-train (under torchrun on every rank), run ``evaluate(trainer)`` if given, tear the group down.

    Rank 0 reports what was trained and draws the training curves. Returns ``(trainer, results)``.
    """
    from ..plots import training_curves
    from ..training.launch import make_trainer

    trainer = make_trainer(cfg, resume=resume, overwrite=overwrite)
    group = trainer.group
    if trainer.start_note and trainer.is_main:
        typer.echo(trainer.start_note)
    try:
        summary = trainer.fit()
        results = evaluate(trainer) if evaluate else None
        if group is not None:
            group.barrier()  # tear the group down together, not while a peer still talks to it
    finally:
        if group is not None:
            group.close()
    if trainer.is_main:
        ranks = f" on {group.world_size} processes" if group.world_size > 1 else ""
        typer.echo(
            f"trained {cfg.algorithm.name} for {cfg.train.iterations} iterations{ranks}; last checkpoint {trainer.last_checkpoint}"
        )
        if "val" in summary:
            typer.echo(
                "validation: "
                + ", ".join(
                    f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}"
                    for k, v in summary["val"].items()
                    if k != "iteration"
                )
            )
        training_curves(cfg.out_dir)
    return trainer, results


def launch(ctx: typer.Context) -> None:
    """Run an innerloop command under torchrun: `innerloop launch [torchrun options] -- train --config ...`.

    The same as `torchrun [options] -m innerloop train ...`, but a rendezvous that cannot be
    reached or a failed worker ends in one clear line instead of torchrun's tracebacks.
    """
    from ..errors import ConfigError
    from ..training.distributed import torchrun

    args = sys.argv[sys.argv.index("launch") + 1 :]  # click drops the "--" that separates the two parts
    if "--" not in args or args.index("--") == len(args) - 1:
        raise ConfigError(
            "usage: innerloop launch [torchrun options] -- train --config PRESET [overrides]; the `--` is required"
        )
    cut = args.index("--")
    torchrun(args[:cut], args[cut + 1 :])
