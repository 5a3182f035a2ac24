"""The meta-training loop.

One iteration: sample this process's share of the meta-batch (tasks are indexed by
``(seed, iteration, task)``, see ``tasks.seeding``), accumulate the meta-gradient with
``learner.meta_backward``, check it is finite, clip, and step the meta-optimizer.
Periodically: log (JSONL, TensorBoard when installed, a progress bar), validate on
held-out tasks, and write an atomic checkpoint from which ``resume=True`` continues
bit for bit.

``Trainer.task_slice`` is the one place that decides which tasks of the global
meta-batch this process computes, ``Trainer.all_reduce`` where a distributed run sums
the gradients and metrics of the shards, ``Trainer.load_existing`` where it shares the
checkpoint. ``training.distributed.DistributedTrainer`` overrides them and sets
``group``, through which evaluation is spread; for a single process they are trivial.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, TrainingDiverged, TrainingInterrupted
from .builders import DTYPES, build_learner, build_optimizer, build_tasks, optional_tasks
from .checkpoint import (
    Checkpoint,
    checkpoint_dirs,
    newest_intact,
    restore_learner,
    run_contents,
    save_checkpoint,
    set_aside_run,
    write_text_atomic,
)
from .config import Config, to_yaml
from .evaluate import evaluate

_log = logging.getLogger("innerloop.train")  # the progress lines; the CLI prints them on stderr


def _duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day) of a non-negative number of seconds."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {text}" if days else text


def format_log_line(record: dict, total: int, eta_seconds: float) -> str:
    """One plain progress line: ``iteration 20/1000 loss 0.4123 ... tasks/s 512 ETA 0:12:34``."""
    rates = {"tasks_per_s": "tasks/s", "env_steps_per_s": "env steps/s"}
    fields = [f"iteration {record['iteration']}/{total}"]
    for key, value in record.items():
        if key == "iteration" or key in rates:
            continue
        fields.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    fields += [f"{label} {record[key]:.0f}" for key, label in rates.items() if key in record]
    return "  ".join([*fields, f"ETA {_duration(eta_seconds)}"])


class MetricsLog:
    """Append-only JSONL metrics file (and TensorBoard scalars when tensorboard is installed)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                pass
            else:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, iteration: int) -> None:
        """Drop records a resumed run will write again (those past the checkpoint), atomically.

        A line torn by a kill mid-write is dropped too. TensorBoard keeps its event files;
        the new writer's ``purge_step`` makes TensorBoard hide their events past ``iteration``.
        """
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["iteration"] <= iteration:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # torn or foreign line
                continue
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        if self.writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self.writer.log_dir
            self.writer.close()
            self.writer = SummaryWriter(log_dir=log_dir, purge_step=iteration + 1)

    def write(self, record: dict) -> None:
        """Append ``record`` (a dict with ``iteration``) as one JSON line, and its numbers to TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            split = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iteration",):
                    self.writer.add_scalar(f"{split}/{key}", value, record["iteration"])

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Meta-trains ``config``'s learner on its tasks in ``config.out_dir`` (one process; see ``training.distributed``).

    Args:
        config: the run (:class:`~innerloop.training.config.Config`).
        learner: a learner to train instead of the one ``config`` builds.
        resume: continue from the newest intact checkpoint in the run directory.
        progress: show the progress bar (default ``train.progress``); without it, log lines.
        overwrite: start afresh where the run directory holds a run, moving it aside.
    """

    group: Any = None  # the ProcessGroup of a distributed run (``training.distributed``)

    def __init__(
        self, config: Config, learner=None, resume: bool = False, progress: bool | None = None, overwrite: bool = False
    ) -> None:
        self.config = config
        self.run_dir = Path(config.out_dir)
        self.device = torch.device(config.train.device)
        self.dtype = DTYPES[config.train.dtype]
        torch.manual_seed(config.train.seed)  # model initialization
        # a MetaLearner, or under RLTrainer a MetaPolicyLearner: the loop calls what the two families share
        self.learner: Any = learner if learner is not None else build_learner(config)
        self.optimizer = build_optimizer(config, self.learner)
        self.tasks = build_tasks(config, "train")
        self.val_tasks = optional_tasks(config, "val")  # None: an image folder without a validation split
        self.progress = config.train.progress if progress is None else progress
        self.start_iteration = 0
        self.last_checkpoint: Path | None = None
        self.intact: list[Path] = []  # checkpoints known whole: resumed from or written here (see save_checkpoint)
        self.overwrite = overwrite
        self.start_note: str | None = None  # one line on what the start found (resumed from, skipped, set aside)
        checkpoint = self.load_existing(resume)
        if checkpoint is not None:
            self._resume_from(checkpoint)

    # -- hooks a distributed trainer overrides ----------------------------------------
    def task_slice(self) -> range:
        """The tasks of the global meta-batch this process computes (a single process: all of them)."""
        return range(self.config.train.meta_batch_size)

    def all_reduce(self, metrics: dict[str, float], share: float) -> dict[str, float]:
        """Combine the shards' gradients and metrics (a single process holds the whole batch)."""
        return metrics

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the processes of a distributed run (here: itself)."""
        return tensor

    def load_existing(self, resume: bool) -> Checkpoint | None:
        """The newest intact checkpoint to resume from, or None to start afresh; refuses where either loses work.

        Without ``resume`` a run directory that already holds a run is refused, unless
        ``overwrite`` moves its contents to ``RUN/replaced-<UTC time>/``. With ``resume``,
        checkpoints that are not whole are passed over (and left as they are); where some
        exist and none is whole, nothing is changed and :class:`CheckpointError` says why.
        """
        held = run_contents(self.run_dir)
        if not resume:
            if held and not self.overwrite:
                raise ConfigError(
                    f"{self.run_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, --overwrite "
                    f"to start afresh (the old run is moved to {self.run_dir}/replaced-<time>/), or choose another --out"
                )
            if held:
                moved = set_aside_run(self.run_dir)
                self.start_note = f"--overwrite: moved the previous run to {moved}; starting from iteration 0"
            return None
        found, skipped = newest_intact(self.run_dir)
        root = self.run_dir / "checkpoints"
        if found is None:
            if skipped or checkpoint_dirs(root):
                raise CheckpointError(
                    f"no intact checkpoint to resume from in {root} ({'; '.join(skipped)}); nothing was changed. "
                    "Restore a checkpoint, or start afresh with --overwrite (moves the old run aside)"
                )
            if held:
                self.start_note = f"no checkpoint in {self.run_dir} yet: starting from iteration 0"
            return None
        self.start_note = f"resuming from iteration {found.iteration} ({found.path})" + (
            f"; passed over newer: {'; '.join(skipped)}" if skipped else ""
        )
        return found

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints (rank 0, or the only process)."""
        return self.group is None or self.group.is_main

    # -- state ------------------------------------------------------------------------
    @property
    def strategy_choices(self) -> dict[str, str]:
        """The vmap/loop choices of ``strategy="auto"`` (kept across resumes); meta-RL learners always vmap."""
        chooser = getattr(self.learner, "chooser", None)
        return chooser.choices if chooser is not None else {}

    def _resume_from(self, checkpoint: Checkpoint) -> None:
        restore_learner(self.learner, checkpoint, self.config)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        torch.set_rng_state(checkpoint.state["torch_rng"])
        if checkpoint.state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint.state["cuda_rng"])
        self.strategy_choices.update(checkpoint.state.get("strategy_choices", {}))
        self.start_iteration = checkpoint.iteration
        self.last_checkpoint = checkpoint.path
        self.intact = [checkpoint.path]

    def save(self, iteration: int) -> Path:
        """Write an atomic checkpoint of ``iteration`` (weights, optimizer, RNG, config) and return its folder."""
        self.last_checkpoint = save_checkpoint(
            self.run_dir,
            iteration,
            self.learner,
            self.optimizer,
            self.config,
            extra={"strategy_choices": dict(self.strategy_choices)},
            keep=self.config.train.keep_checkpoints,
            intact=self.intact,
        )
        self.intact = [p for p in self.intact if p.is_dir()] + [self.last_checkpoint]
        return self.last_checkpoint

    def checkpoint(self, iteration: int) -> None:
        """The periodic checkpoint (a distributed run writes it on rank 0 only)."""
        self.save(iteration)

    # -- the loop -----------------------------------------------------------------------
    def learning_rate(self, iteration: int) -> float:
        """Step decay as a function of the iteration alone, so resuming needs no scheduler state."""
        c = self.config.train
        return c.meta_lr * (c.lr_decay ** (iteration // c.lr_decay_every) if c.lr_decay_every else 1.0)

    def step(self, iteration: int) -> dict[str, float]:
        """One meta-training iteration: sample, meta-gradient, finiteness check, clip, optimizer step; the metrics."""
        optimizer = self.optimizer
        assert optimizer is not None  # build_optimizer leaves only maml-trpo without one, which RLTrainer runs
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate(iteration)
        batch = self.tasks.sample(iteration, self.task_slice()).to(device=self.device, dtype=self.dtype)
        optimizer.zero_grad(set_to_none=True)
        share = len(self.task_slice()) / self.config.train.meta_batch_size
        metrics = {k: float(v) for k, v in self.learner.meta_backward(batch, weight=share).items()}
        metrics = self.all_reduce(metrics, share)
        grads = [p.grad for p in self.learner.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(
            self.learner.parameters(), self.config.train.grad_clip if self.config.train.grad_clip else math.inf
        )
        if not math.isfinite(metrics["loss"]) or not torch.isfinite(norm) or not grads:
            what = (
                f"meta-loss {metrics['loss']}"
                if not math.isfinite(metrics["loss"])
                else f"meta-gradient norm {float(norm)}"
            )
            if not grads:
                raise TrainingDiverged(
                    f"no meta-parameter received a gradient at iteration {iteration}; check the model and algorithm.adapt"
                )
            raise TrainingDiverged.at(
                iteration + 1,
                what,
                self.last_checkpoint,
                "Lower train.meta_lr or algorithm.inner_lr, or set train.grad_clip.",
            )
        optimizer.step()
        metrics["grad_norm"] = float(norm)
        return metrics

    def progress_fields(self, record: dict) -> dict[str, str]:
        """What the progress bar shows after each logged iteration."""
        return {"loss": f"{record['loss']:.4f}", "tasks_s": f"{record['tasks_per_s']:.0f}"}

    def validate(self) -> dict[str, float]:
        """Mean of each metric over the validation tasks at the learner's ``eval_steps``.

        Where some tasks give a non-finite value (an update rule meta-trained for one step and
        validated at ten can blow up on a few tasks), the mean is NaN or inf, so the record also
        carries the median over the tasks (NaNs left out) and how many were not finite.
        """
        steps = [getattr(self.learner, "eval_steps", 0)]
        c = self.config.train
        results = evaluate(
            self.learner,
            self.val_tasks,
            steps,
            c.val_tasks,
            min(c.val_tasks, c.meta_batch_size),
            self.device,
            self.dtype,
            self.group,
        )
        record = {}
        for name, s in results[steps[0]].items():
            record[name] = s["mean"]
            if s["nonfinite"]:
                record |= {f"{name}_median": s["median"], f"{name}_nonfinite": s["nonfinite"]}
        return record

    def check_validation(self, iteration: int, record: dict, train_metrics: dict) -> None:
        """Stop with :class:`TrainingDiverged` where a validation metric is non-finite on *every* task.

        Some non-finite tasks (an update rule run past the steps it was meta-trained for) only
        mark the record (``validate``); none finite means the meta-parameters no longer adapt at all.
        """
        n = self.config.train.val_tasks
        for name, value in record.items():
            if math.isfinite(value) or record.get(f"{name}_nonfinite", 0) < n:
                continue
            steps = getattr(self.learner, "eval_steps", None)
            raise TrainingDiverged.at(
                iteration,
                f"validation {name} is {value} on all {n} validation tasks"
                f"{f' after {steps} adaptation steps' if steps is not None else ''} (training loss "
                f"{train_metrics.get('loss', float('nan')):.4g})",
                self.last_checkpoint,
                f"Lower train.meta_lr or algorithm.inner_lr{' (or algorithm.eval_steps)' if steps else ''}, or set train.grad_clip.",
            )

    def catch_stop_signals(self) -> tuple[list[int], Callable[[], None]]:
        """While training, SIGINT (Ctrl-C) and SIGTERM ask for a clean stop; returns (requests, restore).

        A signal is appended to ``requests``; the loop then finishes the current iteration,
        writes a checkpoint of it and raises :class:`TrainingInterrupted`, so an interruption
        loses nothing (without this, up to ``checkpoint_every`` iterations). A second signal
        interrupts at once. Only a single process on the main thread: the ranks of a
        distributed run would see a signal at different iterations, so they keep the default
        (resume from the last periodic checkpoint). ``restore()`` puts the old handlers back.
        """
        requests: list[int] = []
        if self.group is not None or threading.current_thread() is not threading.main_thread():
            return requests, lambda: None

        def request(signum, frame):
            if requests:
                raise KeyboardInterrupt
            requests.append(signum)

        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return requests, restore

    def fit(self) -> dict:
        """Meta-train from ``start_iteration`` to ``train.iterations``, logging, validating and checkpointing.

        Returns ``{"train": last logged record, "val": last validation}``.
        """
        c = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.run_dir) if self.is_main else None
        if log is not None:  # rank 0
            (self.run_dir / "config.yaml").write_text(to_yaml(self.config))
            log.truncate_after(self.start_iteration)
        # On a terminal a progress bar (train.progress); otherwise (a file, a pipe) or without the bar,
        # a plain log line every log_every iterations through the "innerloop.train" logger.
        show_bar = self.progress and self.is_main and sys.stderr.isatty()
        lines = self.is_main and not show_bar
        bar = tqdm(
            total=c.iterations,
            initial=self.start_iteration,
            disable=not show_bar,
            desc=f"{self.config.algorithm.name} {self.config.task.name}",
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        summary: dict = {}
        tick, tasks_seen, env_steps = time.perf_counter(), 0, 0.0
        stop, restore_signals = self.catch_stop_signals()
        try:
            for iteration in range(self.start_iteration, c.iterations):
                metrics = self.step(iteration)
                tasks_seen += c.meta_batch_size
                env_steps += metrics.get("env_steps", 0)
                done = iteration + 1
                bar.update(1)
                if done % c.log_every == 0 or done == c.iterations:
                    elapsed = max(time.perf_counter() - tick, 1e-9)
                    record = {"iteration": done, **metrics, "tasks_per_s": tasks_seen / elapsed}
                    if env_steps:  # meta-RL: environment steps of every rollout
                        record["env_steps_per_s"] = env_steps / elapsed
                    tick, tasks_seen, env_steps = time.perf_counter(), 0, 0
                    bar.set_postfix(self.progress_fields(record))
                    if log:
                        log.write(record)
                    summary["train"] = record
                    if lines:
                        rate = (done - self.start_iteration) / max(time.perf_counter() - started, 1e-9)
                        _log.info(format_log_line(record, c.iterations, (c.iterations - done) / rate))
                if self.val_tasks is not None and (done % c.val_every == 0 or done == c.iterations):
                    val = self.validate()
                    summary["val"] = {"iteration": done, **val}
                    if log:
                        log.write({"iteration": done, "split": "val", **val})
                    if lines:
                        _log.info(
                            "validation at iteration %d: %s",
                            done,
                            "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()),
                        )
                    self.check_validation(done, val, metrics)
                if done % c.checkpoint_every == 0 or done == c.iterations or stop:
                    self.checkpoint(done)
                if stop and done < c.iterations:  # SIGINT/SIGTERM: this iteration is whole and saved; leave
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(stop[0]).name} after iteration {done} of {c.iterations}; "
                        f"checkpoint {self.last_checkpoint} written: add --resume to the same command to continue exactly"
                    )
        finally:
            restore_signals()
            bar.close()
            if log:
                log.close()
        return summary
