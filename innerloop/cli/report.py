"""The result files of ``train`` and ``eval``: where they go, what they record, the tables printed with them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer


def source_of(checkpoint: Path | None) -> dict:
    """What an evaluation file records about where its numbers come from."""
    from .._version import __version__
    from ..training.checkpoint import step_of

    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "step": step_of(checkpoint.with_name(checkpoint.name.removeprefix("best-"))) if checkpoint else None,
        "innerloop_version": __version__,
    }


def unique_path(stem: Path) -> Path:
    """``stem.json``, or ``stem-2.json``, ``stem-3.json``... whichever does not exist yet."""
    path, n = stem.with_name(stem.name + ".json"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}.json")
    return path


def end_of_training_output(cfg) -> Path:
    """RUN/eval.json; one already there (a run resumed past its end) moves to RUN/evals/, never overwritten."""
    output = Path(cfg.out_dir) / "eval.json"
    if output.exists():
        try:
            step = json.loads(output.read_text()).get("step")
        except (ValueError, AttributeError):
            step = None
        kept = unique_path(
            output.parent / "evals" / (f"eval-step-{step:08d}" if isinstance(step, int) else "eval-earlier")
        )
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.rename(output, kept)
        typer.echo(f"the earlier {output} was moved to {kept}")
    return output


def write_result(output: Path, payload: dict) -> None:
    """Write ``payload`` as JSON to ``output``, which must not exist (not overwritten even if it appeared meanwhile)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "x") as f:
        f.write(json.dumps(payload, indent=2))


def report_rl(cfg, results, draws, output: Path, source: dict) -> None:
    """Print the returns table of the MAML protocol, write ``output`` (JSON) and the figures beside it."""
    from ..plots import navigation_figure, return_curve
    from ..registry import algorithm, task_family
    from ..rl.evaluate import PAPER, format_returns

    e, r = cfg.eval, cfg.rl
    protocol = (  # RL² and PEARL adapt through the episodes they act in: "step" k is episode k
        f"return of each episode (steps = episodes), {e.tasks} test tasks, {r.eval_episodes} trials per task"
        if algorithm(cfg.algorithm.name).episodic
        else f"return after adaptation steps, {e.tasks} test tasks, "
        f"{r.eval_episodes} episodes per step, step sizes {list(r.eval_lrs)}"
    )
    typer.echo(f"{cfg.algorithm.name} on {cfg.task.name}: {protocol}; mean ± standard error over tasks")
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
    write_result(output, payload)
    prefix = "" if output.name == "eval.json" else f"{output.stem}-"  # `innerloop eval`: its own figures too
    figures = [return_curve(results, output.parent / f"{prefix}returns.png", PAPER.get(cfg.task.name))]
    if task_family(cfg.task.name).trajectories:
        figures.append(
            navigation_figure(
                draws[0], output.parent / f"{prefix}trajectories.png", steps=[s for s in e.steps if s <= 3]
            )
        )
    typer.echo(f"results written to {output}; figures: {', '.join(map(str, figures))}")


def batch_norm_modes(learner) -> tuple[bool, bool]:
    """Whether ``learner`` holds transductive batch norm (batch statistics) and support-set batch norm layers."""
    from ..core.batchnorm import SupportBatchNorm, TransductiveBatchNorm

    modules = list(learner.modules())
    support = any(isinstance(m, SupportBatchNorm) for m in modules)
    transductive = any(isinstance(m, TransductiveBatchNorm) and not isinstance(m, SupportBatchNorm) for m in modules)
    return transductive, support


def report(learner, cfg, results, output: Path, source: dict) -> None:
    """Print the accuracy or MSE table of a supervised evaluation and write ``output`` (JSON)."""
    from ..training.evaluate import format_table

    metric = "accuracy" if any("accuracy" in m for r in results.values() for m in r.values()) else "loss"
    title = "accuracy %" if metric == "accuracy" else "query MSE"
    transductive, support = batch_norm_modes(learner)
    bn = (
        " batch norm transductive (batch statistics),"
        if transductive
        else " batch norm from each task's support set,"
        if support
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
        "transductive_batch_norm": transductive,
        "support_batch_norm": support,
        "results": {str(k): {str(s): v for s, v in r.items()} for k, r in results.items()},
    }
    write_result(output, payload)
    typer.echo(f"results written to {output}")
