"""Meta-overfitting made visible (issue 23, item 3): the meta-training tasks are evaluated beside the validation
tasks at each validation, and the checkpoint of the best validation is kept through pruning and --resume."""

import json

import pytest
import torch
from shared_data import needs_omniglot  # tests/shared_data.py
from torch import nn

from innerloop.algorithms.step import Shard
from innerloop.errors import ConfigError
from innerloop.tasks import SinusoidTasks
from innerloop.tasks.fixed import EVAL_DRAW
from innerloop.training.checkpoint import load_checkpoint
from innerloop.training.config import load_config
from innerloop.training.overfitting import BestCheckpoint, SeenTasks, best_checkpoint, meta_train_tasks
from innerloop.training.task_sources import build_tasks
from innerloop.training.trainer import Trainer

OVERRIDES = [
    "train.dtype=float64",
    "train.meta_batch_size=3",
    "train.val_every=2",
    "train.val_tasks=4",
    "train.log_every=1",
    "train.checkpoint_every=4",
    "train.keep_checkpoints=1",
    "train.progress=false",
]


class Scripted(nn.Module):
    """A line fitted to the query sets; its validation loss after ``n`` meta-steps is ``script[n]`` (held-out
    tasks) and its real query loss on any other source (the meta-training tasks)."""

    validation_steps = (0,)

    def __init__(self, script: dict[int, float]) -> None:
        super().__init__()
        self.line = nn.Linear(1, 1, dtype=torch.float64)
        self.script, self.steps, self.val_source = script, 0, None
        self.weights_at: dict[int, torch.Tensor] = {}

    def task_losses(self, batch) -> torch.Tensor:
        return ((self.line(batch.query_x) - batch.query_y) ** 2).mean(dim=(1, 2))

    def meta_step(self, batch, optimizer, shard: Shard) -> dict[str, float]:
        batch = batch.to(dtype=torch.float64)
        optimizer.zero_grad()
        loss = self.task_losses(batch).mean()
        loss.backward()
        optimizer.step()
        self.steps += 1
        self.weights_at[self.steps] = self.line.weight.detach().clone()
        return {"loss": float(loss.detach())}

    def evaluate_tasks(self, source, ids, num_tasks, steps, device=None, dtype=None):
        real = self.task_losses(source.sample(EVAL_DRAW, ids, torch.float64)).detach()
        if isinstance(source, SeenTasks):
            return {0: {"loss": real}}
        return {0: {"loss": torch.full((len(ids),), self.script[self.steps], dtype=torch.float64)}}

    def progress_fields(self, record: dict) -> dict[str, str]:
        return {}


def fit(run, iterations: int, script: dict[int, float], resume: bool = False) -> Trainer:
    config = load_config("maml-sine", [*OVERRIDES, f"train.iterations={iterations}"], out_dir=str(run))
    learner = Scripted(script)
    trainer = Trainer(config, learner=learner, resume=resume)
    learner.steps = trainer.start_iteration
    trainer.summary = trainer.fit()
    return trainer


def records(run, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


def test_the_seen_tasks_are_the_first_tasks_meta_training_drew():
    source = SinusoidTasks(shots=2, queries=3, seed=4)
    seen = SeenTasks(source, meta_batch_size=3, num_tasks=5)
    got = seen.sample(EVAL_DRAW, range(1, 5))
    want = [source.sample(0, [1]), source.sample(0, [2]), source.sample(1, [0]), source.sample(1, [1])]
    assert torch.equal(got.query_y, torch.cat([w.query_y for w in want]))


def test_meta_training_task_metrics_are_recorded_at_each_validation(tmp_path):
    trainer = fit(tmp_path / "run", 4, {2: 1.0, 4: 2.0})
    val, seen = records(tmp_path / "run", "val"), records(tmp_path / "run", "meta-train")
    assert [r["iteration"] for r in seen] == [r["iteration"] for r in val] == [2, 4]
    assert seen[0].keys() == val[0].keys()
    line = trainer.learner.line  # the meta-train value is the learner's real loss on the first tasks of training
    tasks = SeenTasks(trainer.tasks, 3, 4).sample(EVAL_DRAW, range(4), torch.float64)
    with torch.no_grad():
        assert seen[1]["loss"] == pytest.approx(float(((line(tasks.query_x) - tasks.query_y) ** 2).mean()))
    assert trainer.summary["meta_train"]["iteration"] == 4


def test_the_best_validation_checkpoint_survives_pruning_and_resume(tmp_path):
    run = tmp_path / "run"
    script = {2: 3.0, 4: 1.0, 6: 2.0, 8: 1.5, 10: 0.5, 12: 0.7}
    learner = fit(run, 8, script).learner
    assert sorted(p.name for p in (run / "checkpoints").glob("*step-*")) == ["best-step-00000004", "step-00000008"]
    best = load_checkpoint(best_checkpoint(run))  # step-4 itself was pruned (keep_checkpoints=1)
    assert best.iteration == 4 and torch.equal(best.weights["line.weight"], learner.weights_at[4])
    assert json.loads((run / "checkpoints" / "best.json").read_text())["value"] == 1.0
    fit(run, 10, script, resume=True)  # iteration 10's 0.5 beats the 1.0 the resumed run remembers
    assert load_checkpoint(best_checkpoint(run)).iteration == 10
    assert not (run / "checkpoints" / "best-step-00000004").exists()
    fit(run, 12, script, resume=True)  # 0.7 does not beat 0.5
    assert load_checkpoint(best_checkpoint(run)).iteration == 10


def test_the_best_metric_follows_its_direction_and_refuses_an_unknown_name(tmp_path):
    best = BestCheckpoint(tmp_path)
    assert [best.improved(r) for r in ({"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.4}, {"accuracy": 0.6})] == [
        True,
        False,
        True,
    ]
    assert (best.metric, best.mode) == ("accuracy", "max")
    steps = BestCheckpoint(tmp_path)
    assert steps.improved({"return_0": -9.0, "return_1": -5.0}) and steps.metric == "return_1"
    assert not steps.improved({"return_0": -1.0, "return_1": float("nan")})
    with pytest.raises(Exception, match=r"train\.best_metric='nope'.*loss"):
        BestCheckpoint(tmp_path, "nope").improved({"loss": 1.0})
    assert not BestCheckpoint(tmp_path, "none").improved({"loss": 1.0})


@needs_omniglot
def test_meta_training_classes_are_scored_with_the_validation_protocol_where_training_differs():
    """ProtoNets trains on 60-way episodes and validates 5-way: its meta-train records use 5-way 1-shot 15-query
    episodes of the training classes, or the gap would measure the protocol (60 ways are harder than 5)."""
    config = load_config("protonet-omniglot-5w1s")
    seen = meta_train_tasks(config)
    batch = seen.sample(EVAL_DRAW, range(2))
    assert batch.support_y.shape == (2, 5) and batch.query_y.shape == (2, 75)
    assert seen.source.class_names == build_tasks(config, "train").class_names  # the training classes
    assert load_config("maml-omniglot-5w1s").task.queries == 1  # one query per class at training: scored with 15
    assert meta_train_tasks(load_config("maml-omniglot-5w1s")).sample(EVAL_DRAW, [0]).query_y.shape == (1, 75)
    same = load_config("protonet-omniglot-5w1s", ["task.ways=5", "task.queries=15"])  # both protocols agree:
    seen = meta_train_tasks(same).sample(EVAL_DRAW, [1])  # the very episodes of training (one per meta-batch)
    assert torch.equal(seen.query_x, build_tasks(same, "train").sample(1, [0]).query_x)


def test_no_best_checkpoint_says_why_when_every_validation_diverged(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    val = {"split": "val", "iteration": 2, "loss": float("nan"), "loss_median": 0.5, "loss_nonfinite": 3}
    (run / "metrics.jsonl").write_text(json.dumps(val) + "\n" + json.dumps({**val, "iteration": 4}) + "\n")
    with pytest.raises(ConfigError, match="every one of its 2 validations had diverged tasks"):
        best_checkpoint(run)
    (run / "metrics.jsonl").write_text(json.dumps({**val, "loss": 0.4, "loss_nonfinite": 0}) + "\n")
    with pytest.raises(ConfigError, match="it is kept at each validation"):
        best_checkpoint(run)
