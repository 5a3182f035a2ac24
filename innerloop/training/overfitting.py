"""Meta-overfitting made visible: the meta-training tasks evaluated beside the validation tasks, and the
best-validation checkpoint (early stopping as one flag: ``innerloop eval RUN --checkpoint best``).

The gap between a learner's performance on the tasks it was meta-trained on and on held-out tasks is
meta-overfitting (Yin et al. 2020, "Meta-learning without memorization"; Rajendran et al. 2020): the
trainer evaluates both with one protocol (``Trainer.validate``) and ``plots.training_curves`` draws both.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .. import registry
from ..errors import ConfigError
from ..tasks.batch import TaskBatch
from .checkpoint import write_text_atomic
from .task_sources import build_tasks

BEST = "best.json"  # in RUN/checkpoints: {"checkpoint": "best-step-N", "iteration", "metric", "mode", "value"}
HIGHER_IS_BETTER = ("accuracy", "return", "success")


class SeenTasks:
    """The first ``num_tasks`` tasks meta-training drew, as a fixed evaluation set: task ``i`` is task
    ``i % meta_batch_size`` of meta-batch ``i // meta_batch_size`` of ``source`` (supervised ``sample``,
    meta-RL ``fixed``). A validation before that many were drawn includes some not yet seen."""

    def __init__(self, source, meta_batch_size: int, num_tasks: int) -> None:
        self.source, self.meta_batch_size, self.num_tasks = source, meta_batch_size, num_tasks
        self.seed = getattr(source, "seed", 0)

    def _groups(self, ids):
        ids = [int(i) for i in ids]
        draws = sorted({i // self.meta_batch_size for i in ids})
        return [(d, [i % self.meta_batch_size for i in ids if i // self.meta_batch_size == d]) for d in draws]

    def sample(self, draw: int, tasks, dtype: torch.dtype = torch.float32) -> TaskBatch:
        """Seen tasks ``tasks`` (``draw`` is ignored: the set is fixed), in order."""
        return TaskBatch.cat([self.source.sample(d, js, dtype) for d, js in self._groups(tasks)])

    def fixed(self, num_tasks: int) -> torch.Tensor:
        """The first ``num_tasks`` meta-RL tasks meta-training drew."""
        return torch.cat([self.source.sample(d, js) for d, js in self._groups(range(num_tasks))])


def best_checkpoint(run_dir: str | Path) -> Path:
    """The best-validation checkpoint folder of a run (``RUN/checkpoints/best-step-N``), or a ConfigError."""
    record = read_best(Path(run_dir) / "checkpoints")
    if record is None or not (Path(run_dir) / "checkpoints" / record["checkpoint"]).is_dir():
        diverged = _diverged_validations(Path(run_dir))
        why = (
            f"every one of its {diverged} validations had diverged tasks (a non-finite mean is never the best; "
            "see the *_nonfinite fields of metrics.jsonl): validate with fewer eval steps or a smaller inner lr, or"
            if diverged
            else "it is kept at each validation of a run with validation tasks and train.best_metric other than none:"
        )
        raise ConfigError(
            f"{run_dir} has no best-validation checkpoint (checkpoints/{BEST}); {why} evaluate the latest one instead"
        )
    return Path(run_dir) / "checkpoints" / record["checkpoint"]


def _diverged_validations(run_dir: Path) -> int:
    """How many validations of the run had diverged tasks, where all had (0 where none, any had not, or no log)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        val = [r for r in map(json.loads, lines) if r.get("split") == "val"]
    except (OSError, ValueError):
        return 0
    diverged = [r for r in val if any(k.endswith("_nonfinite") and v for k, v in r.items())]
    return len(val) if val and len(diverged) == len(val) else 0


def read_best(root: Path) -> dict | None:
    """``RUN/checkpoints/best.json``, or None where there is none (or it is unreadable)."""
    try:
        record = json.loads((root / BEST).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("checkpoint"), str) else None


def _is_step_key(key: str, name: str) -> bool:
    return key.startswith(f"{name}_") and key[len(name) + 1 :].isdigit()


class BestCheckpoint:
    """Tracks the best value of ``metric`` over the validations of a run in ``run_dir``.

    ``metric="auto"``: accuracy, else return, else loss, after the most validation steps (``loss_10`` over
    ``loss_1``); ``"none"``: no best checkpoint. ``mode="auto"``: max for accuracy, return and success.
    """

    def __init__(self, run_dir: str | Path, metric: str = "auto", mode: str = "auto") -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.metric, self.mode = (None if metric == "auto" else metric), mode
        self.enabled = metric != "none"
        self.value: float | None = None

    def resume(self, iteration: int) -> None:
        """Continue from the best record of the run, unless it is newer than ``iteration`` (a later future)."""
        record = read_best(self.root) or {}
        if record.get("iteration", iteration + 1) <= iteration and self.metric in (None, record.get("metric")):
            self.metric, self.value = record.get("metric"), record.get("value")

    def _resolve(self, record: dict) -> str:
        if self.metric is None:
            for name in ("accuracy", "return", "loss"):  # name, or name_<step>: the most steps
                steps = {k: int(k[len(name) + 1 :] or -1) for k in record if k == name or _is_step_key(k, name)}
                if steps:
                    self.metric = max(steps, key=steps.__getitem__)
                    break
        if self.metric is None or self.metric not in record:
            raise ConfigError(
                f"train.best_metric={self.metric!r} is not a validation metric of this run; choose one of "
                f"{', '.join(k for k in record if not k.endswith(('_median', '_nonfinite')))}, or none"
            )
        if self.mode == "auto":
            self.mode = "max" if self.metric.startswith(HIGHER_IS_BETTER) else "min"
        return self.metric

    def improved(self, record: dict) -> bool:
        """Whether the validation ``record`` is better than every earlier one (a non-finite value never is)."""
        if not self.enabled:
            return False
        value = float(record[self._resolve(record)])
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better and value == value and abs(value) != float("inf"):
            self.value = value
            return True
        return False

    def keep(self, checkpoint: Path, iteration: int) -> Path:
        """Make ``checkpoint`` (just written) the best: hard links to its files in ``best-step-N`` (a copy where
        links are refused), then ``best.json`` names it atomically, then the older ``best-step-*`` go."""
        final = self.root / f"best-{checkpoint.name}"
        tmp = self.root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in checkpoint.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        record = {"checkpoint": final.name, "iteration": iteration, "metric": self.metric, "mode": self.mode}
        write_text_atomic(self.root / BEST, json.dumps({**record, "value": self.value}))
        for old in self.root.glob("best-step-*"):
            if old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final


def validation_protocol(config) -> dict:
    """The ways/shots/queries of validation where an image family trains with others (ProtoNets' 60-way
    episodes, MAML's one query per class, which also changes transductive batch-norm statistics): the
    meta-training classes are then scored as the validation classes are, so the gap measures the classes, not
    the protocol. The tasks are then of the training classes, drawn at the
    draws meta-training made, not its very episodes. Empty where both protocols agree or the family has none."""
    task, e = config.task, config.eval
    if not hasattr(task, "ways") or registry.task_family(task.name).kind != "classification":
        return {}
    protocol = {"ways": e.ways or task.ways, "shots": e.shots[0], "queries": e.queries}
    return {} if (task.ways, task.shots, task.queries) == tuple(protocol.values()) else protocol


def meta_train_tasks(config) -> SeenTasks | None:
    """The meta-training tasks a run validates beside its validation tasks (``train.val_train_tasks``; 0: none)."""
    t = config.train
    n = t.val_tasks if t.val_train_tasks is None else t.val_train_tasks
    if not n:
        return None
    source = build_tasks(config, "train", wrapped=False, **validation_protocol(config))
    if hasattr(source, "seen"):  # a learned optimizer's runs: the tasks they trained on (unroll.learner)
        return source.seen(t.seed, t.meta_batch_size, n)
    return SeenTasks(source, t.meta_batch_size, n)
