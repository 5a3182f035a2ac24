"""The ``innerloop`` command line (Typer): demo, train, eval, launch, presets, config.

Every failure ends in one line on stderr (``error: ...``) naming the problem and the fix, with
exit status 2 for a user's mistake and 1 for a runtime failure (``InnerloopError.exit_code``);
``innerloop --debug ...`` (or ``INNERLOOP_DEBUG=1``) shows the traceback instead. Progress and
library messages go through :mod:`logging` (logger ``innerloop``), which the command configures.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path

import typer

from ..errors import InnerloopError, TrainingInterrupted

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Meta-learning on PyTorch: train, evaluate and demo."
)
_DEBUG = {"on": False}  # set by --debug (the callback below) or INNERLOOP_DEBUG=1; read by main()


def _version_text() -> str:
    import platform

    import torch

    from .._version import __version__

    return f"innerloop {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback instead of one line."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the innerloop and torch versions and exit.",
    ),
) -> None:
    """Meta-learning on PyTorch: train, evaluate and demo. `innerloop config` lists every config key."""
    _DEBUG["on"] = _DEBUG["on"] or debug


def _check_run_dir(path: Path) -> None:
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


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Where runs, the figure and results.json go."),
    iterations: int = typer.Option(6000, min=1, help="Meta-training iterations for each model."),
    tasks: int = typer.Option(1000, min=1, help="Evaluation tasks per column."),
    seed: int = typer.Option(0),
) -> None:
    """Meta-train MAML and a pretrained baseline on sinusoids, print the table, draw the figure."""
    from ..demo import run_demo

    run_demo(out, iterations=iterations, tasks=tasks, seed=seed, echo=typer.echo)


@app.command(context_settings={"allow_extra_args": False})
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
    from ..training.config import is_rl, load_config
    from ..training.evaluate import evaluate_config, format_table

    if resume and overwrite:
        from ..errors import ConfigError

        raise ConfigError(
            "--resume continues the run in --out and --overwrite sets it aside to start afresh: give one of them"
        )
    cfg = load_config(config, overrides or [], out_dir=out)
    _check_run_dir(Path(cfg.out_dir))
    if is_rl(cfg):
        from ..training.evaluate import evaluate_rl

        # on rank 0 only: the evaluation tasks are few, and each task is its own random stream
        trainer, results = _fit(
            cfg,
            resume,
            evaluate and (lambda t: evaluate_rl(t.learner, cfg, keep=True) if t.is_main else None),
            overwrite,
        )
        if trainer.is_main and results is not None:
            returns, draws = results
            _report_rl(cfg, returns, draws, _end_of_training_output(cfg), _source(trainer.last_checkpoint))
        return
    from ..training.builders import split_note

    no_test = split_note(cfg, "test")  # an image folder without a test split: no final evaluation, no episode.png
    if no_test:
        typer.echo(f"note: {no_test}: no end-of-training evaluation and no episode.png", err=True)
        evaluate = False
    if evaluate and cfg.task.name != "sinusoid":  # eval.shots or eval.ways too large: say so now, not after training
        for shots in cfg.eval.shots:
            build_tasks(cfg, "test", shots=shots)
    trainer, results = _fit(
        cfg, resume, evaluate and (lambda t: evaluate_config(t.learner, cfg, build_tasks, group=t.group)), overwrite
    )
    if not trainer.is_main:
        return
    if cfg.task.name != "sinusoid" and not no_test:
        picture = episode_figure(
            trainer.learner, build_tasks(cfg, "test").sample(0, [0]), Path(cfg.out_dir) / "episode.png"
        )
        typer.echo(f"an evaluation episode: {picture}")
    if results is not None:
        _report(
            trainer.learner, cfg, results, _end_of_training_output(cfg), format_table, _source(trainer.last_checkpoint)
        )


def _source(checkpoint: Path | None) -> dict:
    """What an evaluation file records about where its numbers come from."""
    from .._version import __version__
    from ..training.checkpoint import step_of

    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "step": step_of(checkpoint) if checkpoint else None,
        "innerloop_version": __version__,
    }


def _end_of_training_output(cfg) -> Path:
    """RUN/eval.json; one already there (a run resumed past its end) moves to RUN/evals/, never overwritten."""
    output = Path(cfg.out_dir) / "eval.json"
    if output.exists():
        try:
            step = json.loads(output.read_text()).get("step")
        except (ValueError, AttributeError):
            step = None
        kept = _unique(output.parent / "evals" / (f"eval-step-{step:08d}" if isinstance(step, int) else "eval-earlier"))
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.rename(output, kept)
        typer.echo(f"the earlier {output} was moved to {kept}")
    return output


def _unique(stem: Path) -> Path:
    """``stem.json``, or ``stem-2.json``, ``stem-3.json``... whichever does not exist yet."""
    path, n = stem.with_name(stem.name + ".json"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}.json")
    return path


def _eval_output(cfg, checkpoint, output: Path | None, rl: bool) -> Path:
    """Where `innerloop eval` writes: --output (which must not exist yet), else a new file in RUN/evals/ named
    by the checkpoint's step and the protocol, e.g. ``step-00001000-tasks1000-seed2024-steps0,1,10-shots5,10.json``."""
    from ..errors import ConfigError

    if output is not None:
        if output.exists():
            raise ConfigError(
                f"--output {output} already exists; innerloop eval never overwrites results: "
                "choose another file, or leave --output out (a new file in RUN/evals/)"
            )
        return output
    e = cfg.eval

    def join(values) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    protocol = f"episodes{cfg.rl.eval_episodes}-lrs{join(cfg.rl.eval_lrs)}" if rl else f"shots{join(e.shots)}"
    run_dir = checkpoint.path.parent.parent if checkpoint.path.parent.name == "checkpoints" else checkpoint.path.parent
    name = f"step-{checkpoint.iteration:08d}-tasks{e.tasks}-seed{e.seed}-steps{join(e.steps)}-{protocol}"
    return _unique(run_dir / "evals" / name)


def _write_result(output: Path, payload: dict) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "x") as f:  # a file that appeared meanwhile is not overwritten either
        f.write(json.dumps(payload, indent=2))


def _fit(cfg, resume: bool, evaluate, overwrite: bool = False):
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
        ranks = f" on {group.world_size} processes" if group else ""
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


def _report_rl(cfg, results, draws, output: Path, source: dict) -> None:
    """Print the returns table of the MAML protocol, write ``output`` (JSON) and the figures beside it."""
    from ..plots import navigation_figure, return_curve
    from ..rl.evaluate import PAPER, format_returns

    e, r = cfg.eval, cfg.rl
    typer.echo(
        f"{cfg.algorithm.name} on {cfg.task.name}: return after adaptation steps, {e.tasks} test tasks, "
        f"{r.eval_episodes} episodes per step, step sizes {list(r.eval_lrs)}; mean ± standard error over tasks"
    )
    typer.echo(format_returns(results, cfg.task.name))
    payload = {
        "algorithm": cfg.algorithm.name,
        "task": cfg.task.name,
        **source,
        "tasks": e.tasks,
        "seed": e.seed,
        "steps": list(e.steps),
        "episodes": r.eval_episodes,
        "lrs": list(r.eval_lrs),
        "results": {str(k): v for k, v in results.items()},
    }
    _write_result(output, payload)
    prefix = "" if output.name == "eval.json" else f"{output.stem}-"  # `innerloop eval`: its own figures too
    figures = [return_curve(results, output.parent / f"{prefix}returns.png", PAPER.get(cfg.task.name))]
    if cfg.task.name == "nav2d":
        figures.append(
            navigation_figure(
                draws[0], output.parent / f"{prefix}trajectories.png", steps=[s for s in e.steps if s <= 3]
            )
        )
    typer.echo(f"results written to {output}; figures: {', '.join(map(str, figures))}")


def _report(learner, cfg, results, output: Path, format_table, source: dict) -> None:
    metric = "accuracy" if any("accuracy" in m for r in results.values() for m in r.values()) else "loss"
    title = "accuracy %" if metric == "accuracy" else "query MSE"
    kinds = {type(m).__name__ for m in learner.modules()}
    bn = (
        " batch norm transductive (batch statistics),"
        if "TransductiveBatchNorm" in kinds
        else " batch norm from each task's support set,"
        if "SupportBatchNorm" in kinds
        else ""
    )
    typer.echo(
        f"{cfg.algorithm.name} on {cfg.task.name}, {cfg.eval.tasks} test tasks,{bn} mean ± 95% CI (1.96 std/sqrt(n)):"
    )
    typer.echo(format_table({cfg.algorithm.name: results}, metric=metric, title=title))
    e = cfg.eval
    payload = {
        "algorithm": cfg.algorithm.name,
        "task": cfg.task.name,
        **source,
        "tasks": e.tasks,
        "seed": e.seed,
        "steps": list(e.steps),
        "shots": list(e.shots),
        "queries": e.queries,
        "transductive_batch_norm": "TransductiveBatchNorm" in kinds,
        "support_batch_norm": "SupportBatchNorm" in kinds,
        "results": {str(k): {str(s): v for s, v in r.items()} for k, r in results.items()},
    }
    _write_result(output, payload)
    typer.echo(f"results written to {output}")


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    tasks: int | None = typer.Option(None, min=1, help="Number of test tasks (default: the run's eval.tasks)."),
    steps: list[int] | None = typer.Option(None, "--steps", help="Adaptation steps to report (repeatable)."),
    shots: list[int] | None = typer.Option(None, "--shots", help="Support shots to evaluate (repeatable)."),
    seed: int | None = typer.Option(None, help="Seed of the test tasks (default: the run's eval.seed)."),
    episodes: str | None = typer.Option(
        None,
        metavar="N|FILE",
        help="Image tasks: a JSON FILE of fixed test episodes to "
        "evaluate instead of seeded ones (README, Data). Meta-RL: N episodes per task and "
        "adaptation step (default: rl.eval_episodes).",
    ),
    lrs: list[float] | None = typer.Option(
        None,
        "--lrs",
        help="Meta-RL: step size of each adaptation step, the last repeating (repeatable; default: rl.eval_lrs).",
    ),
    output: Path | None = typer.Option(
        None,
        help="JSON file for the results, which must not exist yet (default: a new "
        "file in RUN/evals/ named by the checkpoint's step and the protocol).",
    ),
) -> None:
    """Evaluate a checkpoint on fresh seeded test tasks; print the table and write JSON."""
    from ..errors import ConfigError
    from ..training.builders import build_tasks, learner_from_checkpoint
    from ..training.checkpoint import load_checkpoint
    from ..training.config import is_rl, validate
    from ..training.evaluate import evaluate_config, format_table

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    episode_file = None  # --episodes FILE: a fixed list of test episodes; --episodes N: meta-RL episodes per step
    if episodes is not None and episodes.isdigit() and Path(episodes).is_file():
        raise ConfigError(f"--episodes {episodes} is both a number and a file here; give the file as ./{episodes}")
    if episodes is not None and not episodes.isdigit():
        episode_file, episodes = Path(episodes), None
    elif episodes is not None and int(episodes) < 1:
        raise ConfigError(
            f"--episodes must be a positive number of episodes or a JSON file of episodes, got {episodes}"
        )
    per_step = None if episodes is None else int(episodes)  # meta-RL episodes per task and step
    if episode_file is not None and (is_rl(cfg) or tasks is not None or seed is not None or shots):
        raise ConfigError(
            f"--episodes {episode_file} evaluates a fixed list of image classification episodes"
            + (
                "; a meta-RL run takes --episodes N, the episodes per task and adaptation step"
                if is_rl(cfg)
                else "; drop --tasks, --seed and --shots, which the list fixes (--steps applies)"
            )
        )
    if tasks is not None:
        cfg.eval.tasks = tasks
    if seed is not None:
        cfg.eval.seed = seed
    if steps:
        cfg.eval.steps = list(steps)
    if shots:
        if is_rl(cfg):
            raise ConfigError(
                "--shots does not apply to meta-RL: give --episodes, the episodes per task and adaptation step"
            )
        cfg.eval.shots = list(shots)
    if per_step is not None or lrs:
        if not is_rl(cfg):
            raise ConfigError(
                "--episodes and --lrs set the meta-RL adaptation protocol; this checkpoint is not meta-RL "
                "(use --shots and --steps)"
            )
        if per_step is not None:
            cfg.rl.eval_episodes = per_step
        if lrs:
            cfg.rl.eval_lrs = list(lrs)
    validate(cfg)
    learner = learner_from_checkpoint(ckpt)  # cfg is ckpt.config: only its evaluation protocol changed above
    if is_rl(cfg):
        from ..training.evaluate import evaluate_rl

        destination = _eval_output(cfg, ckpt, output, rl=True)  # decided (and refused) before the evaluation runs
        returns, draws = evaluate_rl(learner, cfg, keep=True)
        return _report_rl(cfg, returns, draws, destination, _source(ckpt.path))
    learner.chooser.choices.update(ckpt.state.get("strategy_choices", {}))
    if episode_file is not None:
        return _eval_episode_file(learner, cfg, ckpt, episode_file, output)
    destination = _eval_output(cfg, ckpt, output, rl=False)
    results = evaluate_config(learner, cfg, build_tasks)
    _report(learner, cfg, results, destination, format_table, _source(ckpt.path))


def _eval_episode_file(learner, cfg, ckpt, path: Path, output: Path | None) -> None:
    """``innerloop eval RUN --episodes FILE``: exactly the listed test episodes, mean ± 95% CI at each step,
    written to --output or RUN/evals/step-N-episodes-<file>-steps<S>.json."""
    import torch

    from ..training.builders import DTYPES, episode_tasks
    from ..training.evaluate import evaluate, format_table

    source = episode_tasks(cfg, path)
    run_dir = ckpt.path.parent.parent if ckpt.path.parent.name == "checkpoints" else ckpt.path.parent
    steps = ",".join(map(str, cfg.eval.steps))
    destination = (
        _eval_output(cfg, ckpt, output, rl=False)
        if output is not None
        else _unique(run_dir / "evals" / f"step-{ckpt.iteration:08d}-episodes-{path.stem}-steps{steps}")
    )
    batch = cfg.eval.batch_size if source.uniform else 1  # episodes of different sizes run one at a time
    per_step = evaluate(
        learner, source, cfg.eval.steps, len(source), batch, torch.device(cfg.train.device), DTYPES[cfg.train.dtype]
    )
    cfg.eval.tasks, cfg.eval.shots = len(source), [source.shots] if source.shots else []
    typer.echo(f"{len(source)} episodes from {path}")
    _report(
        learner,
        cfg,
        {source.shots or "listed": per_step},
        destination,
        format_table,
        {**_source(ckpt.path), "episode_file": str(path)},
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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


@app.command()
def presets(
    show: str | None = typer.Option(
        None, "--show", metavar="NAME", help="Print this preset's YAML, comments included."
    ),
) -> None:
    """List the built-in presets with a line on each, or print one (--show NAME)."""
    from ..training.config import preset_description, preset_names, preset_text

    if show is not None:
        typer.echo(preset_text(show), nl=False)
        return
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        typer.echo(f"{name:<{width}}  {preset_description(name)}")
    typer.echo("\n`innerloop presets --show NAME` prints a preset; `innerloop config` lists every config key.")


@app.command("config")
def config_command(
    show: str | None = typer.Option(
        None, "--show", metavar="PRESET", help="Print the merged config of a preset or YAML file."
    ),
    overrides: list[str] | None = typer.Argument(None, help="With --show: section.key=value overrides to apply."),
) -> None:
    """Print the reference of every config key (type, default, meaning), or a merged config (--show)."""
    from ..training.config import load_config, to_yaml
    from ..training.reference import config_reference

    if show is None:
        if overrides:
            from ..errors import ConfigError

            raise ConfigError(
                "overrides apply to a config: give --show PRESET (e.g. innerloop config --show maml-sine train.iterations=5)"
            )
        typer.echo(config_reference(), nl=False)
        return
    typer.echo(to_yaml(load_config(show, overrides or [])), nl=False)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines of the ``innerloop`` loggers on stderr, ``HH:MM:SS message``; warnings as one line each.

    The library itself only creates loggers (``innerloop.train``, ``innerloop.data``, ...): a
    program using it keeps control of where its messages go. Idempotent.
    """
    logger = logging.getLogger("innerloop")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        (file or sys.stderr).write(f"warning: {text}\n")

    import warnings

    warnings.showwarning = one_line_warning


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    """Print ``message`` as one line on stderr (with this process's rank under torchrun) and exit with ``code``."""
    from ..training.distributed import launched_by_torchrun

    rank = f" (rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')})" if launched_by_torchrun() else ""
    if message.startswith("error: "):
        message = f"error{rank}: {message[len('error: ') :]}"
    typer.echo(_one_line(message), err=True)
    sys.exit(code)


def _os_error(err: OSError) -> tuple[str, int]:
    """An ``OSError`` that escaped as one line: what, which file, and the exit status (2 when the user can fix it)."""
    if err.strerror is None:  # raised with a message of its own (e.g. by the data loaders), which names the fix
        return f"error: {err}", 2 if isinstance(err, (PermissionError, FileNotFoundError, NotADirectoryError)) else 1
    path, what = err.filename or "", err.strerror
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"error: permission denied: {path} ({what}); write elsewhere (--out, --output) or fix the permissions", 2
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"error: {what}: {path}; check the path", 2
    if err.errno == errno.ENOSPC:
        return (
            f"error: no space left on device{f' writing {path}' if path else ''}; free some space and retry (--resume continues)",
            1,
        )
    return f"error: {what}{f': {path}' if path else ''}", 1


def main() -> None:
    """Entry point: every failure becomes one line on stderr; exit 2 for a user's mistake, 1 for a runtime failure.

    ``innerloop --debug ...`` (or ``INNERLOOP_DEBUG=1``) re-raises instead, with the traceback.
    """
    try:  # the copy of click that Typer >= 0.20 bundles, or click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions  # type: ignore[no-redef]  # the module older Typer uses
    no_args = getattr(click_exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
    _DEBUG["on"] = os.environ.get("INNERLOOP_DEBUG", "") not in ("", "0")
    configure_logging()
    try:
        code = app(standalone_mode=False, prog_name="innerloop")
    except TrainingInterrupted as stopped:  # asked for (Ctrl-C, SIGTERM), not an error: the run is saved
        typer.echo(str(stopped), err=True)
        sys.exit(130)
    except no_args as err:
        typer.echo(err.format_message())
        sys.exit(0)
    except click_exceptions.ClickException as err:  # a usage mistake: an unknown option, a missing argument
        ctx = getattr(err, "ctx", None)  # a UsageError knows the command it came from
        command = ctx.command_path if ctx is not None else "innerloop"
        _fail(f"error: {err.format_message()} (see `{command} --help`)", err.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint written is intact", 130)
    except InnerloopError as err:
        if _DEBUG["on"]:
            raise
        _fail(f"error: {err}", getattr(err, "exit_code", 2))
    except OSError as err:
        if _DEBUG["on"]:
            raise
        _fail(*_os_error(err))
    except Exception as err:  # a bug: still one line, and how to see more
        if _DEBUG["on"]:
            raise
        _fail(
            f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(run with --debug for the traceback; please report it)",
            1,
        )
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
