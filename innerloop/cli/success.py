"""``innerloop eval`` on a Meta-World run: the package's success protocol, its table, JSON and per-class bar figure."""

from __future__ import annotations

from pathlib import Path

import typer


def is_metaworld(learner) -> bool:
    """Whether ``learner`` plays a Meta-World family (evaluated by success rate)."""
    from ..rl.envs.metaworld import MetaWorldFamily

    return isinstance(getattr(learner, "family", None), MetaWorldFamily)


def evaluate_success(learner, cfg, split: str = "test") -> dict:
    """``innerloop.rl.success.metaworld_evaluation`` as configured: eval.tasks goals of ``split``, max(eval.steps)
    adaptation steps of rl.eval_episodes episodes (gradient steps at rates rl.eval_lrs, or the learner's own way), rl.success_episodes scored episodes."""
    from ..rl.success import metaworld_evaluation

    e, r = cfg.eval, cfg.rl
    return metaworld_evaluation(
        learner,
        e.tasks,
        adaptation_steps=max(e.steps),
        adaptation_episodes=r.eval_episodes,
        evaluation_episodes=r.success_episodes,
        seed=e.seed,
        lrs=list(r.eval_lrs),
        batch_size=e.batch_size,
        split=split,
    )


def success_figure(results: dict, path: Path, title: str) -> Path:
    """Bars: success rate (%) per class and overall, with 95% intervals over goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*results["classes"].items(), ("overall", results["overall"])]
    means = [100 * r["success"]["mean"] for _, r in rows]
    errors = [100 * r["success"]["ci95"] for _, r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.4))
    ax.bar(range(len(rows)), means, yerr=errors, capsize=3, color=["C0"] * (len(rows) - 1) + ["C1"])
    ax.set_xticks(range(len(rows)), [name for name, _ in rows], rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate %")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_success(learner, cfg, output: Path, source: dict, results: dict | None = None, split: str = "test") -> None:
    """Run the protocol on ``split``'s goals (unless its ``results`` are given), print its table, write ``output``
    (JSON) and the bar figure beside it."""
    from ..rl.success import format_success
    from .report import write_result

    results = evaluate_success(learner, cfg, split) if results is None else results
    p = results["protocol"]
    goals = "training-class goals" if p.get("split") == "train" else "test goals"
    header = (
        f"{cfg.algorithm.name} on {cfg.task.name}: Meta-World protocol, {p['tasks']} {goals}, "
        f"{p['adaptation_steps']} adaptation step(s) of {p['adaptation_episodes']} episodes ({p['adaptation']}), "
        f"then {p['evaluation_episodes']} scored episodes each (ending at success); mean ± 95% CI over goals"
    )
    typer.echo(header)
    typer.echo(format_success(results))
    write_result(output, {"algorithm": cfg.algorithm.name, "task": cfg.task.name, **source, **results})
    prefix = "" if output.name == "eval.json" else f"{output.stem}-"
    title = f"{cfg.algorithm.name} on {cfg.task.name}" + (", training classes" if p.get("split") == "train" else "")
    figure = success_figure(results, output.parent / f"{prefix}success.png", title)
    typer.echo(f"results written to {output}; figure: {figure}")
