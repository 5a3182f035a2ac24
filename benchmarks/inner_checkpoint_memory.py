"""Memory and time of second-order MAML with and without ``checkpoint_steps`` (issue 5).

Two memory measures for one task's meta-loss, before its backward pass:

* saved: the bytes of every tensor the autograd graph keeps for the backward pass
  (unique storages reachable from the loss) — exact, and what checkpointing targets;
* RSS growth of a whole ``meta_backward`` over the meta-batch (the speed suite's probe),
  which also counts the backward pass's transient buffers and the allocator.

    OMP_NUM_THREADS=1 python benchmarks/inner_checkpoint_memory.py --tasks 8 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import MemoryProbe, omniglot_batch

from innerloop import MAML
from innerloop.models import Conv4


def saved_mib(loss: torch.Tensor) -> float:
    """MiB of the distinct tensors the autograd graph of ``loss`` has saved for backward."""
    seen, stack, storages = set(), [loss.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            value = getattr(node, attr)
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values()) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--queries", type=int, nargs="*", default=[1, 15], help="query images per class")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| queries / class | checkpoint_steps | graph saved for backward, 1 task (MiB) | RSS growth, meta_backward (MiB) | ms / meta-batch (median) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for queries in args.queries:
        batch = omniglot_batch(args.tasks, queries=queries)
        learners = {}
        for checkpoint in (False, True):
            torch.manual_seed(0)
            learners[checkpoint] = MAML(
                Conv4(1, 64, out_features=5),
                inner_lr=0.4,
                inner_steps=args.steps,
                strategy="loop",
                checkpoint_steps=checkpoint,
            )
        rows = {c: {"ms": [], "rss": 0.0, "saved": saved_mib(m.meta_loss(batch[:1])[0])} for c, m in learners.items()}
        for _ in range(args.repeats + 1):  # round-robin, the first round a warm-up
            for checkpoint, learner in learners.items():
                learner.zero_grad()
                with MemoryProbe(torch.device("cpu")) as probe:
                    start = time.perf_counter()
                    learner.meta_backward(batch)
                    elapsed = time.perf_counter() - start
                rows[checkpoint]["ms"].append(elapsed * 1000)
                rows[checkpoint]["rss"] = max(rows[checkpoint]["rss"], probe.bytes / 2**20)
        for checkpoint, row in rows.items():
            print(
                f"| {queries} | {checkpoint} | {row['saved']:.1f} | {row['rss']:.0f} | {statistics.median(row['ms'][1:]):.0f} |"
            )


if __name__ == "__main__":
    main()
