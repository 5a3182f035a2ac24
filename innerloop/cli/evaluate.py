"""``innerloop eval``: a checkpoint on fresh seeded test tasks or a fixed episode file, and where its results go."""

from __future__ import annotations

from pathlib import Path

import typer

from ..tasks.shift import shift_help
from .report import report, report_rl, source_of, unique_path


def eval_output(cfg, checkpoint, output: Path | None, rl: bool, suffix: str = "") -> Path:
    """Where `innerloop eval` writes: --output (which must not exist yet), else a new file in RUN/evals/ named
    by the checkpoint's step and the protocol, e.g. ``step-00001000-tasks1000-seed2024-steps0,1,10-shots5,10.json``
    (``suffix``: e.g. the shifts, ``-shift-amplitude=5_10``)."""
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
    name = f"step-{checkpoint.iteration:08d}-tasks{e.tasks}-seed{e.seed}-steps{join(e.steps)}-{protocol}{suffix}"
    return unique_path(run_dir_of(checkpoint) / "evals" / name)


def run_dir_of(checkpoint) -> Path:
    """The run directory a loaded checkpoint belongs to (RUN for RUN/checkpoints/step-N, else its own folder)."""
    folder = checkpoint.path.parent
    return folder.parent if folder.name == "checkpoints" else folder


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
    which: str = typer.Option(
        "latest",
        "--checkpoint",
        metavar="latest|best",
        help="Of a run directory: the latest checkpoint, or the one of the best validation (train.best_metric).",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        metavar="test|train",
        help="Meta-World: score the test classes' goals (default; meta-test success) or the training classes' "
        "goals (meta-train success, as ML10 and ML45 report it).",
    ),
    shift: list[str] | None = typer.Option(
        None,
        "--shift",
        metavar="NAME=VALUE",
        help="Also evaluate on test tasks shifted from the training distribution (repeatable; a table of "
        f"in-distribution and shifted performance, the change with its 95% CI, and a figure): {shift_help()}.",
    ),
) -> None:
    """Evaluate a checkpoint on fresh seeded test tasks; print the table and write JSON."""
    from ..errors import ConfigError
    from ..training.builders import build_tasks, learner_from_checkpoint
    from ..training.checkpoint import load_checkpoint
    from ..training.config import task_kind, validate
    from ..training.evaluate import evaluate_config
    from ..training.overfitting import best_checkpoint

    if which not in ("latest", "best"):
        raise ConfigError(f"--checkpoint {which!r}: choose latest or best")
    if split not in (None, "test", "train"):
        raise ConfigError(f"--split {split!r}: choose test or train")
    ckpt = load_checkpoint(best_checkpoint(checkpoint) if which == "best" else checkpoint)
    cfg = ckpt.config
    if task_kind(cfg) == "optimizer":  # a learned optimizer: against tuned Adam and SGD-momentum (cli/lopt.py)
        from .lopt import eval_optimizer

        return eval_optimizer(
            ckpt, run_dir_of(ckpt), tasks, steps, seed, output, bool(shots or episodes or lrs or shift or split)
        )
    rl = task_kind(cfg) == "rl"
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
    if episode_file is not None and (rl or tasks is not None or seed is not None or shots):
        raise ConfigError(
            f"--episodes {episode_file} evaluates a fixed list of image classification episodes"
            + (
                "; a meta-RL run takes --episodes N, the episodes per task and adaptation step"
                if rl
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
        if rl:
            raise ConfigError(
                "--shots does not apply to meta-RL: give --episodes, the episodes per task and adaptation step"
            )
        cfg.eval.shots = list(shots)
    if per_step is not None or lrs:
        if not rl:
            raise ConfigError(
                "--episodes and --lrs set the meta-RL adaptation protocol; this checkpoint is not meta-RL "
                "(use --shots and --steps)"
            )
        if per_step is not None:
            cfg.rl.eval_episodes = per_step
        if lrs:
            from ..registry import algorithm

            if algorithm(cfg.algorithm.name).episodic:
                raise ConfigError(
                    f"--lrs sets the step sizes of adaptation steps; {cfg.algorithm.name} adapts through the episodes "
                    "it acts in, without steps: leave --lrs out"
                )
            cfg.rl.eval_lrs = list(lrs)
    validate(cfg)
    learner = learner_from_checkpoint(ckpt)  # cfg is ckpt.config: only its evaluation protocol changed above
    if split is not None:
        from .success import is_metaworld

        if not is_metaworld(learner):
            raise ConfigError(
                f"--split chooses Meta-World's training or test classes; {cfg.task.name} is not a Meta-World "
                "family: leave --split out"
            )
        if shift:
            raise ConfigError("--shift moves seeded test tasks; it does not combine with --split")
    if shift:
        if episode_file is not None:
            raise ConfigError("--shift moves seeded test tasks; it does not apply to --episodes FILE")
        return eval_shifts(learner, cfg, ckpt, shift, output)
    if rl:
        from ..training.evaluate import evaluate_rl

        # decided (and refused) before the evaluation runs
        destination = eval_output(cfg, ckpt, output, rl=True, suffix="-train" if split == "train" else "")
        from .success import is_metaworld, report_success

        if is_metaworld(learner):  # Meta-World: its own protocol, success rate and return per class
            return report_success(learner, cfg, destination, source_of(ckpt.path), split=split or "test")
        returns, draws = evaluate_rl(learner, cfg, keep=True)
        return report_rl(cfg, returns, draws, destination, source_of(ckpt.path))
    learner.chooser.choices.update(ckpt.state.get("strategy_choices", {}))
    if episode_file is not None:
        return eval_episode_file(learner, cfg, ckpt, episode_file, output)
    destination = eval_output(cfg, ckpt, output, rl=False)
    results = evaluate_config(learner, cfg, build_tasks)
    report(learner, cfg, results, destination, source_of(ckpt.path))


def eval_episode_file(learner, cfg, ckpt, path: Path, output: Path | None) -> None:
    """``innerloop eval RUN --episodes FILE``: exactly the listed test episodes, mean ± 95% CI at each step,
    written to --output or RUN/evals/step-N-episodes-<file>-steps<S>.json."""
    import torch

    from ..training.builders import DTYPES, episode_tasks
    from ..training.evaluate import evaluate

    source = episode_tasks(cfg, path)
    steps = ",".join(map(str, cfg.eval.steps))
    destination = (
        eval_output(cfg, ckpt, output, rl=False)
        if output is not None
        else unique_path(run_dir_of(ckpt) / "evals" / f"step-{ckpt.iteration:08d}-episodes-{path.stem}-steps{steps}")
    )
    batch = cfg.eval.batch_size if source.uniform else 1  # episodes of different sizes run one at a time
    per_step = evaluate(
        learner, source, cfg.eval.steps, len(source), batch, torch.device(cfg.train.device), DTYPES[cfg.train.dtype]
    )
    cfg.eval.tasks, cfg.eval.shots = len(source), [source.shots] if source.shots else []
    typer.echo(f"{len(source)} episodes from {path}")
    report(
        learner,
        cfg,
        {source.shots or "listed": per_step},
        destination,
        {**source_of(ckpt.path), "episode_file": str(path)},
    )


def eval_shifts(learner, cfg, ckpt, specs: list[str], output: Path | None) -> None:
    """``innerloop eval RUN --shift ...``: the in-distribution and shifted results, written to --output or
    RUN/evals/step-N-...-shift-<shifts>.json, and the figure of performance against shift size beside it."""
    import re

    from ..errors import ConfigError
    from ..plots import shift_figure
    from ..tasks.shift import parse_shift
    from ..training.config import is_rl
    from ..training.shift_eval import evaluate_shifts, format_shift_table, primary_metric
    from .report import write_result

    try:
        shifts = [parse_shift(s) for s in specs]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if hasattr(learner, "chooser"):
        learner.chooser.choices.update(ckpt.state.get("strategy_choices", {}))
    suffix = "-shift-" + "-".join(re.sub(r"[^A-Za-z0-9.=_-]", "_", s.label) for s in shifts)
    destination = eval_output(cfg, ckpt, output, rl=is_rl(cfg), suffix=suffix)
    table = evaluate_shifts(learner, cfg, shifts)
    typer.echo(f"{cfg.algorithm.name} on {cfg.task.name}, {cfg.eval.tasks} test tasks per condition:")
    typer.echo(format_shift_table(table))
    payload = {
        "algorithm": cfg.algorithm.name,
        "task": cfg.task.name,
        **source_of(ckpt.path),
        "tasks": cfg.eval.tasks,
        "seed": cfg.eval.seed,
        "steps": list(cfg.eval.steps),
        "conditions": table,
    }
    write_result(destination, payload)
    metric = primary_metric(table["in-distribution"]["results"])
    figure = shift_figure(table, destination.with_suffix(".png"), metric)
    typer.echo(f"results written to {destination}; figure: {figure}")


def diversity(
    config: str = typer.Option(..., "--config", "-c", help="A preset name (see `innerloop presets`) or a YAML file."),
    overrides: list[str] | None = typer.Argument(None, help="section.key=value overrides, e.g. task.ways=20"),
    shift: list[str] | None = typer.Option(
        None, "--shift", metavar="NAME=VALUE", help="Also the diversity of the tasks moved by a shift (repeatable)."
    ),
    tasks: int = typer.Option(20, min=2, help="Meta-training tasks compared pairwise."),
    queries: int | None = typer.Option(
        None, min=1, help="Query examples per task (per class), default task.queries; more give a steadier Fisher."
    ),
) -> None:
    """The task diversity coefficient of a config's meta-training tasks, before any training (Miranda et al. 2022:
    the expected Task2Vec distance between two tasks, with the config's network, randomly initialised, as probe)."""
    from ..errors import ConfigError
    from ..tasks.shift import parse_shift
    from ..training.config import load_config
    from ..training.shift_eval import task_diversity

    cfg = load_config(config, list(overrides or []))
    try:
        shifts = [None, *(parse_shift(s) for s in shift or [])]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for s in shifts:
        d = task_diversity(cfg, s, tasks, queries)
        typer.echo(
            f"task diversity of {config}{f' --shift {s.label}' if s else ''} ({tasks} tasks, Task2Vec, Miranda et al. "
            f"2022): {d['mean']:.4f} ± {d['ci95']:.4f} (95% CI over {d['n']} pairs)"
        )
