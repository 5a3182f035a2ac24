"""The ``innerloop`` command line (Typer): demo, train, eval, presets."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InnerloopError, TrainingInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Meta-learning on PyTorch: train, evaluate and demo.")


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
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides, e.g. train.iterations=500"),
    out: Optional[str] = typer.Option(None, help="Run directory (default runs/<preset>)."),
    resume: bool = typer.Option(False, help="Continue from the run directory's latest checkpoint if there is one."),
    evaluate: bool = typer.Option(True, help="Evaluate on test tasks at the end (the config's eval section)."),
) -> None:
    """Meta-train from a preset or config file (under torchrun: data-parallel over the ranks)."""
    from ..plots import episode_figure
    from ..training.builders import build_tasks
    from ..training.config import is_rl, load_config
    from ..training.evaluate import evaluate_config, format_table

    cfg = load_config(config, overrides or [], out_dir=out)
    if is_rl(cfg):
        from ..rl.evaluate import evaluate_rl

        # on rank 0 only: the evaluation tasks are few, and each task is its own random stream
        trainer, results = _fit(cfg, resume, evaluate and (lambda t: evaluate_rl(t.learner, cfg, keep=True) if t.is_main else None))
        if trainer.is_main and results is not None:
            _report_rl(cfg, *results, Path(cfg.out_dir))
        return
    trainer, results = _fit(cfg, resume, evaluate and (lambda t: evaluate_config(t.learner, cfg, build_tasks, group=t.group)))
    if not trainer.is_main:
        return
    if cfg.task.name != "sinusoid":
        picture = episode_figure(trainer.learner, build_tasks(cfg, "test").sample(0, [0]), Path(cfg.out_dir) / "episode.png")
        typer.echo(f"an evaluation episode: {picture}")
    if results is not None:
        _report(trainer.learner, cfg, results, Path(cfg.out_dir) / "eval.json", format_table)


def _fit(cfg, resume: bool, evaluate):
    """Meta-train (under torchrun on every rank), run ``evaluate(trainer)`` if given, tear the group down.

    Rank 0 reports what was trained and draws the training curves. Returns ``(trainer, results)``.
    """
    from ..plots import training_curves
    from ..training.distributed import make_trainer

    trainer = make_trainer(cfg, resume=resume)
    group = trainer.group
    if trainer.start_iteration and trainer.is_main:
        typer.echo(f"resuming from iteration {trainer.start_iteration} ({trainer.last_checkpoint})")
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
        typer.echo(f"trained {cfg.algorithm.name} for {cfg.train.iterations} iterations{ranks}; last checkpoint {trainer.last_checkpoint}")
        if "val" in summary:
            typer.echo("validation: " + ", ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}"
                                                  for k, v in summary["val"].items() if k != "iteration"))
        training_curves(cfg.out_dir)
    return trainer, results


def _report_rl(cfg, results, draws, out_dir: Path, output: Path | None = None) -> None:
    """Print the returns table of the MAML protocol, write eval.json and the figures."""
    from ..plots import navigation_figure, return_curve
    from ..rl.evaluate import PAPER, format_returns

    e, r = cfg.eval, cfg.rl
    typer.echo(f"{cfg.algorithm.name} on {cfg.task.name}: return after adaptation steps, {e.tasks} test tasks, "
               f"{r.eval_episodes} episodes per step, step sizes {list(r.eval_lrs)}; mean ± standard error over tasks")
    typer.echo(format_returns(results, cfg.task.name))
    output = output or out_dir / "eval.json"
    payload = {"algorithm": cfg.algorithm.name, "task": cfg.task.name, "tasks": e.tasks, "seed": e.seed,
               "episodes": r.eval_episodes, "lrs": list(r.eval_lrs), "results": {str(k): v for k, v in results.items()}}
    output.write_text(json.dumps(payload, indent=2))
    figures = [return_curve(results, out_dir / "returns.png", PAPER.get(cfg.task.name))]
    if cfg.task.name == "nav2d":
        figures.append(navigation_figure(draws[0], out_dir / "trajectories.png", steps=[s for s in e.steps if s <= 3]))
    typer.echo(f"results written to {output}; figures: {', '.join(map(str, figures))}")


def _report(learner, cfg, results, output: Path, format_table) -> None:
    metric = "accuracy" if any("accuracy" in m for r in results.values() for m in r.values()) else "loss"
    title = "accuracy %" if metric == "accuracy" else "query MSE"
    kinds = {type(m).__name__ for m in learner.modules()}
    bn = (" batch norm transductive (batch statistics)," if "TransductiveBatchNorm" in kinds
          else " batch norm from each task's support set," if "SupportBatchNorm" in kinds else "")
    typer.echo(f"{cfg.algorithm.name} on {cfg.task.name}, {cfg.eval.tasks} test tasks,{bn} mean ± 95% CI (1.96 std/sqrt(n)):")
    typer.echo(format_table({cfg.algorithm.name: results}, metric=metric, title=title))
    payload = {
        "algorithm": cfg.algorithm.name, "task": cfg.task.name, "tasks": cfg.eval.tasks, "seed": cfg.eval.seed,
        "transductive_batch_norm": "TransductiveBatchNorm" in kinds, "support_batch_norm": "SupportBatchNorm" in kinds,
        "results": {str(k): {str(s): v for s, v in r.items()} for k, r in results.items()},
    }
    output.write_text(json.dumps(payload, indent=2))
    typer.echo(f"results written to {output}")


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    tasks: Optional[int] = typer.Option(None, min=1, help="Number of test tasks (default: the run's eval.tasks)."),
    steps: Optional[List[int]] = typer.Option(None, "--steps", help="Adaptation steps to report (repeatable)."),
    shots: Optional[List[int]] = typer.Option(None, "--shots", help="Support shots to evaluate (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the test tasks (default: the run's eval.seed)."),
    episodes: Optional[int] = typer.Option(None, min=1, help="Meta-RL: episodes per task and adaptation step (default: rl.eval_episodes)."),
    lrs: Optional[List[float]] = typer.Option(None, "--lrs", help="Meta-RL: step size of each adaptation step, the last repeating "
                                              "(repeatable; default: rl.eval_lrs)."),
    output: Optional[Path] = typer.Option(None, help="JSON file for the results (default: eval.json beside the checkpoint)."),
) -> None:
    """Evaluate a checkpoint on fresh seeded test tasks; print the table and write JSON."""
    from ..training.builders import build_tasks, learner_from_checkpoint
    from ..training.checkpoint import load_checkpoint
    from ..training.config import validate
    from ..training.evaluate import evaluate_config, format_table

    from ..errors import ConfigError
    from ..training.config import is_rl

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    if tasks is not None:
        cfg.eval.tasks = tasks
    if seed is not None:
        cfg.eval.seed = seed
    if steps:
        cfg.eval.steps = list(steps)
    if shots:
        if is_rl(cfg):
            raise ConfigError("--shots does not apply to meta-RL: give --episodes, the episodes per task and adaptation step")
        cfg.eval.shots = list(shots)
    if episodes is not None or lrs:
        if not is_rl(cfg):
            raise ConfigError("--episodes and --lrs set the meta-RL adaptation protocol; this checkpoint is not meta-RL "
                              "(use --shots and --steps)")
        if episodes is not None:
            cfg.rl.eval_episodes = episodes
        if lrs:
            cfg.rl.eval_lrs = list(lrs)
    validate(cfg)
    learner = learner_from_checkpoint(ckpt)  # cfg is ckpt.config: only its evaluation protocol changed above
    if is_rl(cfg):
        from ..rl.evaluate import evaluate_rl

        out_dir = ckpt.path.parent.parent
        return _report_rl(cfg, *evaluate_rl(learner, cfg, keep=True), out_dir, output)
    learner.chooser.choices.update(ckpt.state.get("strategy_choices", {}))
    results = evaluate_config(learner, cfg, build_tasks)
    _report(learner, cfg, results, output or ckpt.path.parent.parent / "eval.json", format_table)


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
        raise ConfigError("usage: innerloop launch [torchrun options] -- train --config PRESET [overrides]; the `--` is required")
    cut = args.index("--")
    torchrun(args[:cut], args[cut + 1 :])


@app.command()
def presets() -> None:
    """List the built-in presets."""
    from ..training.config import preset_names

    for name in preset_names():
        typer.echo(name)


def main() -> None:
    """Entry point: user errors become one clear line on stderr and exit status 2."""
    try:
        app()
    except TrainingInterrupted as stopped:  # asked for (Ctrl-C, SIGTERM), not an error: the run is saved
        typer.echo(str(stopped), err=True)
        sys.exit(130)
    except InnerloopError as err:
        from ..training.distributed import launched_by_torchrun

        rank = f" (rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']})" if launched_by_torchrun() else ""
        typer.echo(f"error{rank}: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; the last checkpoint written is intact", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
