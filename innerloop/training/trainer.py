"""The meta-training loop: one trainer for every learner, on one process or many.

One iteration: the process group gives this process its shard of the meta-batch (tasks are
indexed by ``(seed, iteration, task)``, see ``tasks.seeding``), the task source samples it, and
``learner.meta_step(batch, optimizer, shard)`` makes the whole meta-update (a meta-gradient,
summed over the processes through the shard, clipped and stepped; or meta-RL's rollouts and
TRPO/ProMP step). Periodically: log (JSONL, TensorBoard when installed, a progress bar or log
lines), validate on held-out tasks, and write an atomic checkpoint from which ``resume=True``
continues bit for bit.

What differs between learners sits behind the learner protocol (:class:`Learner`); what differs
between one process and a torchrun group sits behind the group (``training.distributed``:
``LocalGroup`` or ``ProcessGroup``), which shards, sums, broadcasts and says which rank writes.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..algorithms.step import DIVERGENCE_FIX, Shard
from ..errors import (
    CheckpointError,
    ConfigError,
    DistributedError,
    InnerloopError,
    TrainingDiverged,
    TrainingInterrupted,
)
from ..tasks.seeding import derive_seed
from .builders import DTYPES, build_learner, build_optimizer, build_tasks, optional_tasks
from .checkpoint import (
    Checkpoint,
    checkpoint_dirs,
    newest_intact,
    restore_learner,
    run_contents,
    save_checkpoint,
    set_aside_run,
)
from .config import Config, to_yaml
from .distributed import Group, LocalGroup, check_same_config
from .evaluate import evaluate
from .metrics_log import MetricsLog
from .overfitting import BestCheckpoint, meta_train_tasks
from .progress import format_log_line, format_values
from .schedule import MetaLRSchedule
from .signals import catch_stop_signals

_log = logging.getLogger("innerloop.train")  # the progress lines; the CLI prints them on stderr


class Learner(Protocol):
    """What :class:`Trainer` calls on a learner (``MetaLearner`` and ``MetaPolicyLearner`` implement it).

    Besides these, an ``nn.Module``'s ``parameters()`` / ``state_dict()`` (checkpoints), and optionally
    ``chooser`` (the vmap/loop choices kept across resumes), ``eval_steps`` and ``divergence_fix``.
    """

    def meta_step(self, batch: Any, optimizer: Any, shard: Shard) -> dict[str, float]:
        """The meta-update of one iteration on ``shard`` of the meta-batch; its metrics (meta-batch means)."""
        ...

    @property
    def validation_steps(self) -> list[int]:
        """The adaptation steps validation reports (e.g. ``[0, inner_steps]``)."""

    def evaluate_tasks(
        self, source: Any, ids: range, num_tasks: int, steps: Sequence[int], device: Any = None, dtype: Any = None
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Per-task metrics ``{step: {name: (len(ids),)}}`` of held-out tasks ``ids`` of ``source``."""
        ...

    def progress_fields(self, record: dict) -> dict[str, str]:
        """The fields of ``record`` the progress bar and log line show, formatted."""


class Trainer:
    """Meta-trains ``config``'s learner on its tasks in ``config.out_dir``.

    Args:
        config: the run (:class:`~innerloop.training.config.Config`).
        learner: a learner to train instead of the one ``config`` builds (any :class:`Learner`).
        resume: continue from the newest intact checkpoint in the run directory.
        progress: show the progress bar (default ``train.progress``); without it, log lines.
        overwrite: start afresh where the run directory holds a run, moving it aside.
        group: the processes sharing the run (default: this one alone); see ``training.distributed``.
    """

    def __init__(
        self,
        config: Config,
        learner=None,
        resume: bool = False,
        progress: bool | None = None,
        overwrite: bool = False,
        group: Group | None = None,
    ) -> None:
        self.group: Group = group if group is not None else LocalGroup()
        if config.train.meta_batch_size < self.group.world_size:
            raise ConfigError(
                f"train.meta_batch_size={config.train.meta_batch_size} cannot be split across {self.group.world_size} "
                f"processes (each needs at least one task); raise train.meta_batch_size to >= {self.group.world_size} "
                "or start fewer processes"
            )
        check_same_config(self.group, config)
        # A group torchrun restarted after a failure resumes, and never sets the run aside again
        # (--overwrite applied to the first attempt).
        restarted = self.group.restarted()
        resume, overwrite = resume or restarted, overwrite and not restarted
        self.config = config
        self.run_dir = Path(config.out_dir)
        self.device = torch.device(config.train.device)
        self.dtype = DTYPES[config.train.dtype]
        torch.manual_seed(config.train.seed)  # model initialization
        self.learner: Any = learner if learner is not None else build_learner(config)
        self.optimizer = build_optimizer(config, self.learner)
        self.schedule = MetaLRSchedule(config.train, self.optimizer)  # train.lr_schedule: step decay or cosine
        self.tasks = build_tasks(config, "train")
        self.val_tasks = optional_tasks(config, "val")  # None: an image folder without a validation split
        self.seen_tasks = meta_train_tasks(config) if self.val_tasks is not None else None  # validated beside them
        self.best = BestCheckpoint(self.run_dir, config.train.best_metric, config.train.best_mode)
        self.progress = config.train.progress if progress is None else progress
        self.start_iteration = 0
        self.last_checkpoint: Path | None = None
        self.intact: list[Path] = []  # checkpoints known whole: resumed from or written here (see save_checkpoint)
        self.overwrite = overwrite
        self.start_note: str | None = None  # one line on what the start found (resumed from, skipped, set aside)
        checkpoint = self.load_existing(resume)
        if checkpoint is not None:
            self._resume_from(checkpoint)
        # Identical start on every rank (a resumed run is already identical; this makes it certain).
        self.group.broadcast_(list(self.learner.state_dict().values()))
        self._strategies_agreed = self.group.world_size == 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints (rank 0, or the only process)."""
        return self.group.is_main

    # -- start: afresh, resumed, or refused ------------------------------------------------
    def load_existing(self, resume: bool) -> Checkpoint | None:
        """Rank 0 finds the checkpoint to resume from (or None); every rank gets it, or rank 0's error."""
        found, error = None, None
        if self.is_main:
            try:
                found = self.find_start(resume)
            except InnerloopError as err:
                error = err
        found, error = self.group.broadcast((found, error))
        if error is not None:
            raise error
        return found

    def find_start(self, resume: bool) -> Checkpoint | None:
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

    # -- state ------------------------------------------------------------------------
    @property
    def strategy_choices(self) -> dict[str, str]:
        """The vmap/loop choices of ``strategy="auto"`` (kept across resumes); empty for learners without them."""
        chooser = getattr(self.learner, "chooser", None)
        return chooser.choices if chooser is not None else {}

    def _resume_from(self, checkpoint: Checkpoint) -> None:
        restore_learner(self.learner, checkpoint, self.config)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        self.schedule.load_state_dict(checkpoint.state.get("lr_schedule"), checkpoint.iteration)
        torch.set_rng_state(checkpoint.state["torch_rng"])
        if checkpoint.state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint.state["cuda_rng"])
        self.strategy_choices.update(checkpoint.state.get("strategy_choices", {}))
        self.start_iteration = checkpoint.iteration
        self.best.resume(checkpoint.iteration)
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
            extra={"strategy_choices": dict(self.strategy_choices), "lr_schedule": self.schedule.state_dict()},
            keep=self.config.train.keep_checkpoints,
            intact=self.intact,
        )
        self.intact = [p for p in self.intact if p.is_dir()] + [self.last_checkpoint]
        return self.last_checkpoint

    def checkpoint(self, iteration: int, best: bool = False) -> None:
        """The periodic (or ``best``-validation) checkpoint, written by rank 0 once the ranks are known to agree."""
        if self.group.world_size > 1:
            self.check_in_sync()
        if self.is_main:
            path = self.save(iteration)
            if best:
                self.best.keep(path, iteration)

    def check_in_sync(self) -> None:
        """Guard against silent drift: the meta-parameters must be bit-identical on every rank."""
        checksum = float(sum(p.detach().double().sum() for p in self.learner.parameters()))
        sums = self.group.gather(checksum)
        if len(set(sums)) != 1:
            raise DistributedError(
                f"meta-parameters differ across ranks (checksums {sums}); this is a bug, please report it"
            )

    # -- the loop -----------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, float]:
        """One meta-training iteration: this process's shard of the meta-batch, ``learner.meta_step``; the metrics."""
        c = self.config.train
        self.schedule.before(iteration)
        shard = self.group.shard(
            c.meta_batch_size,
            # what the step draws itself (rollouts) comes from the run's seed and the iteration alone
            seed=derive_seed(c.seed, "rollouts", iteration),
            device=self.device,
            dtype=self.dtype,
            max_grad_norm=c.grad_clip or None,
        )
        batch = self.tasks.sample(iteration, shard.task_ids)
        try:
            metrics = self.learner.meta_step(batch, self.optimizer, shard)
        except TrainingDiverged as err:
            fix = getattr(self.learner, "divergence_fix", DIVERGENCE_FIX)
            raise TrainingDiverged.at(iteration + 1, str(err), self.last_checkpoint, fix) from None
        self.schedule.after()
        if not self._strategies_agreed:
            # After the first step each rank has timed vmap against the loop ("auto") on its own
            # shard; from now on all use rank 0's choices, which the checkpoints record, so a
            # resumed group batches exactly as the uninterrupted one did.
            self.strategy_choices.update(self.group.broadcast(dict(self.strategy_choices)))
            self._strategies_agreed = True
        return metrics

    def validate(self, source=None, num_tasks: int = 0) -> dict[str, float]:
        """The mean of each metric over the validation tasks (or ``num_tasks`` of ``source``) at the learner's
        ``validation_steps``.

        Metrics are named ``name`` for one step, ``name_<step>`` for several. Where some tasks give
        a non-finite value (an update rule meta-trained for one step and validated at ten can blow
        up on a few tasks), the mean is NaN or inf, so the record also carries the median over the
        tasks (NaNs left out) and how many were not finite.
        """
        c = self.config.train
        steps = list(self.learner.validation_steps)
        source, n = (self.val_tasks, c.val_tasks) if source is None else (source, num_tasks)
        results = evaluate(
            self.learner, source, steps, n, min(n, c.meta_batch_size), self.device, self.dtype, self.group
        )
        record: dict[str, float] = {}
        for step in steps:
            for name, s in results[step].items():
                key = name if len(steps) == 1 else f"{name}_{step}"
                record[key] = s["mean"]
                if s["nonfinite"]:
                    record |= {f"{key}_median": s["median"], f"{key}_nonfinite": s["nonfinite"]}
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

    def fit(self) -> dict:
        """Meta-train from ``start_iteration`` to ``train.iterations``, logging, validating and checkpointing.

        Returns ``{"train": last logged record, "val": last validation, "meta_train": its meta-training tasks}``.
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
        stop, restore_signals = catch_stop_signals(enabled=self.group.world_size == 1)
        try:
            for iteration in range(self.start_iteration, c.iterations):
                metrics, kept = self.step(iteration), False
                tasks_seen += c.meta_batch_size
                env_steps += metrics.get("env_steps", 0)
                done = iteration + 1
                bar.update(1)
                if done % c.log_every == 0 or done == c.iterations:
                    elapsed = max(time.perf_counter() - tick, 1e-9)
                    record = {"iteration": done, **metrics, "tasks_per_s": tasks_seen / elapsed}
                    if env_steps:  # learners that step environments (meta-RL): every rollout's steps
                        record["env_steps_per_s"] = env_steps / elapsed
                    tick, tasks_seen, env_steps = time.perf_counter(), 0, 0
                    bar.set_postfix(self.learner.progress_fields(record))
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
                    if self.seen_tasks is not None:  # the meta-training tasks, evaluated as the validation tasks
                        seen = self.validate(self.seen_tasks, self.seen_tasks.num_tasks)
                        summary["meta_train"] = {"iteration": done, **seen}
                        if log:
                            log.write({"iteration": done, "split": "meta-train", **seen})
                    if lines:
                        _log.info("validation at iteration %d: %s", done, format_values(val))
                    self.check_validation(done, val, metrics)
                    if kept := self.best.improved(val):  # the same on every rank: the validation is gathered
                        self.checkpoint(done, best=True)
                if not kept and (done % c.checkpoint_every == 0 or done == c.iterations or stop):
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
