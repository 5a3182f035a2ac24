"""One trainer for every learner, distribution by composition (issue 19, item 1).

A learner defined here, no ``MetaLearner`` and no built-in, implements only the learner protocol
(``training.trainer.Learner``); the plain :class:`Trainer`, never subclassed, meta-trains it on one
process and on a group of two ranks (two threads whose collectives meet on a shared board), and the
two runs end with the same weights and write the same metrics.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from innerloop.algorithms import MetaLearner
from innerloop.algorithms.step import Shard
from innerloop.errors import TrainingDiverged
from innerloop.tasks.fixed import EVAL_DRAW
from innerloop.training.config import load_config
from innerloop.training.distributed import LocalGroup, shard
from innerloop.training.trainer import Trainer

OVERRIDES = [
    "train.dtype=float64",
    "train.iterations=6",
    "train.meta_batch_size=5",
    "train.val_every=3",
    "train.val_tasks=7",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.progress=false",
    "train.meta_lr=0.05",
]


class LineFit(nn.Module):
    """A line ``a x + b`` meta-trained on the query sets of sinusoid tasks: the smallest learner of the protocol."""

    validation_steps = (0,)

    def __init__(self) -> None:
        super().__init__()
        self.line = nn.Linear(1, 1, dtype=torch.float64)
        nn.init.zeros_(self.line.weight)
        nn.init.zeros_(self.line.bias)
        self.seen: list[list[int]] = []  # the tasks of each meta-step (shard.task_ids)

    def task_losses(self, batch) -> torch.Tensor:
        return ((self.line(batch.query_x) - batch.query_y) ** 2).mean(dim=(1, 2))

    def meta_step(self, batch, optimizer, shard: Shard) -> dict[str, float]:
        batch = batch.to(device=shard.device, dtype=shard.dtype)
        assert batch.num_tasks == len(shard.task_ids)
        self.seen.append(list(shard.task_ids))
        optimizer.zero_grad(set_to_none=True)
        loss = self.task_losses(batch).mean()
        (shard.weight * loss).backward()
        grads = [p.grad for p in self.parameters()]
        metrics = shard.sum_(grads, {"loss": float(loss.detach())})
        if not all(torch.isfinite(g).all() for g in grads):
            raise TrainingDiverged("a non-finite line gradient")
        optimizer.step()
        return metrics

    def evaluate_tasks(self, source, ids, num_tasks, steps, device=None, dtype=None):
        batch = source.sample(EVAL_DRAW, ids, torch.float64)
        return {0: {"loss": self.task_losses(batch).detach()}}

    def progress_fields(self, record: dict) -> dict[str, str]:
        return {"loss": f"{record['loss']:.3f}"}


class ThreadGroup:
    """Rank ``rank`` of a group of threads: ``ProcessGroup``'s interface, its collectives met on a shared board."""

    def __init__(self, rank: int, world_size: int, board: dict) -> None:
        self.rank, self.world_size, self.local_rank, self.board = rank, world_size, 0, board
        self.calls = {"sum": 0, "gather": 0}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, obj) -> list:
        """Every rank's ``obj`` in rank order (three barriers: all written, all read, free again)."""
        slots, barrier = self.board["slots"], self.board["barrier"]
        barrier.wait()
        slots[self.rank] = obj
        barrier.wait()
        out = list(slots)
        barrier.wait()
        return out

    def shard(self, num_tasks: int, **step) -> Shard:
        ids = shard(num_tasks, self.rank, self.world_size)
        return Shard(task_ids=ids, weight=len(ids) / num_tasks, reduce=self.sum, **step)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls["sum"] += 1
        parts = self.exchange(tensor.detach().clone())
        return sum(parts[1:], parts[0])

    def broadcast(self, obj):
        return self.exchange(obj)[0]

    def gather(self, obj) -> list:
        self.calls["gather"] += 1
        return self.exchange(obj)

    def broadcast_(self, tensors) -> None:
        for tensor, value in zip(tensors, self.broadcast([t.detach().clone() for t in tensors])):
            tensor.data.copy_(value)

    def restarted(self) -> bool:
        return False

    def barrier(self) -> None:
        self.board["barrier"].wait()

    def close(self) -> None:
        pass


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k != "tasks_per_s"} for line in path.read_text().splitlines()]


def test_the_trainer_runs_a_learner_of_its_own_protocol_alone_and_on_two_ranks(tmp_path):
    alone_config = load_config("maml-sine", OVERRIDES, out_dir=str(tmp_path / "alone"))
    toy = LineFit()
    assert not isinstance(toy, MetaLearner)
    alone = Trainer(alone_config, learner=toy)
    assert type(alone) is Trainer and isinstance(alone.group, LocalGroup)
    summary = alone.fit()
    assert summary["train"]["iteration"] == 6 and set(summary["val"]) == {"iteration", "loss"}
    assert float(toy.line.weight.detach().abs().sum() + toy.line.bias.detach().abs().sum()) > 1e-3  # it learned

    board = {"slots": [None, None], "barrier": threading.Barrier(2, timeout=60)}
    groups = [ThreadGroup(rank, 2, board) for rank in range(2)]
    learners = [LineFit(), LineFit()]

    def rank(r: int) -> Trainer:
        config = load_config("maml-sine", OVERRIDES, out_dir=str(tmp_path / "ranks"))
        trainer = Trainer(config, learner=learners[r], group=groups[r])
        trainer.fit()
        return trainer

    with ThreadPoolExecutor(2) as pool:
        trainers = [f.result() for f in [pool.submit(rank, r) for r in range(2)]]
    assert all(type(t) is Trainer for t in trainers)
    # each rank computed its own shard (3 and 2 of the 5 tasks) and summed through the group
    assert toy.seen == [[0, 1, 2, 3, 4]] * 6
    assert learners[0].seen == [[0, 1, 2]] * 6 and learners[1].seen == [[3, 4]] * 6
    assert [g.calls["sum"] for g in groups] == [6, 6] and all(g.calls["gather"] >= 2 for g in groups)
    for learner in learners:
        for got, want in zip(learner.parameters(), toy.parameters()):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    ours, single = records(tmp_path / "ranks" / "metrics.jsonl"), records(tmp_path / "alone" / "metrics.jsonl")
    assert [r.keys() for r in ours] == [r.keys() for r in single] and len(ours) == 10  # 6 train, 2 val, 2 meta-train
    for mine, theirs in zip(ours, single):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-12)
    # rank 0 alone wrote the checkpoints, and the two ranks agreed (check_in_sync) before each
    assert sorted(p.name for p in (tmp_path / "ranks" / "checkpoints").glob("step-*")) == [
        "step-00000003",
        "step-00000006",
    ]
    resumed = Trainer(load_config("maml-sine", OVERRIDES, out_dir=str(tmp_path / "alone")), LineFit(), resume=True)
    assert resumed.start_iteration == 6 and torch.equal(resumed.learner.line.weight, toy.line.weight)


def test_a_learner_s_divergence_is_reported_with_the_iteration_and_its_checkpoint(tmp_path):
    class Diverging(LineFit):
        poisoned_seed = None

        def meta_step(self, batch, optimizer, shard):
            if shard.seed == self.poisoned_seed:
                raise TrainingDiverged("a non-finite line gradient")
            return super().meta_step(batch, optimizer, shard)

    config = load_config("maml-sine", OVERRIDES, out_dir=str(tmp_path / "run"))
    toy = Diverging()
    trainer = Trainer(config, learner=toy)
    seeds = []
    original = trainer.group.shard

    def recording(num_tasks, **step):
        seeds.append(step["seed"])
        return original(num_tasks, **step)

    trainer.group.shard = recording
    trainer.fit()
    assert len(set(seeds)) == 6  # one seed per iteration, as the rollouts of meta-RL need

    toy = Diverging()
    trainer = Trainer(load_config("maml-sine", OVERRIDES, out_dir=str(tmp_path / "other")), learner=toy)
    toy.poisoned_seed = seeds[4]
    with pytest.raises(TrainingDiverged, match=r"^training diverged at iteration 5: a non-finite line gradient; "):
        trainer.fit()
    assert trainer.last_checkpoint is not None and trainer.last_checkpoint.name == "step-00000003"
