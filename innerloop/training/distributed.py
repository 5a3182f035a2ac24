"""Data-parallel meta-training on ``torch.distributed``, launched by ``torchrun``.

    torchrun --nproc-per-node=4 -m innerloop train --config maml-omniglot-5w1s --resume
    # two nodes: the same command on each node, with
    #   --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=RUN-NAME

The meta-batch of ``B`` tasks is cut into contiguous shards, one per rank: with ``P``
ranks, rank ``r`` computes tasks ``[start_r, start_r + B//P (+1 for the first B%P ranks))``.
Tasks are indexed by ``(seed, iteration, task)`` (``tasks.seeding``), so the shard of rank
``r`` is exactly what one process would compute at those positions: the union over
ranks *is* the single-process meta-batch. Each rank accumulates
``(|shard| / B) * d L_shard / d theta``; a SUM all-reduce turns that into the
meta-gradient of the whole meta-batch on every rank, and identical optimizers then keep
the meta-parameters identical (they start identical: rank 0's are broadcast).

Only rank 0 logs, draws the progress bar and writes checkpoints (atomically). On
(re)start rank 0 reads the newest intact checkpoint (passing over any that is not whole,
``Trainer.load_existing``) and broadcasts it, so every rank resumes
from the same one without needing a shared file system, and a group that
``torchrun --max-restarts`` restarts after a dead worker resumes by itself. Errors found
on rank 0 (an existing run without ``--resume``, a corrupt checkpoint) are raised on
every rank so none is left waiting in a collective. gloo serves CPU runs, NCCL CUDA runs.

The trainer is the same on one process and many: ``Trainer(config, group=ProcessGroup...)``
(``LocalGroup()`` for one process) takes its shard of each meta-batch, its sums, broadcasts and
whether it writes (rank 0) from the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import torch
import torch.distributed as dist

from ..algorithms.step import Shard
from ..errors import ConfigError, DistributedError, PeerLost
from .config import Config, to_dict, to_yaml


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_JOINED = {"group": False}  # whether this process has joined a process group (ProcessGroup.from_environment)


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; a process that joined a process group leaves without the interpreter's finalisation.

    A worker that finished (or failed cleanly) can still abort (SIGABRT) while Python tears its
    modules down: gloo's threads and work objects and the store clients outlive the interpreter's
    state they call back into (pytorch/pytorch#179291 is one such path). torchrun then reports
    a finished run as a failed one, or restarts it. By this point the trainer has closed every
    file it writes (metrics, TensorBoard, checkpoints, figures), so the worker flushes Python's and
    C's output buffers and leaves with ``os._exit``; environment worker processes (``rl.workers``)
    see their pipe close and exit by themselves. Any other process raises ``SystemExit`` as usual.
    Only the command's entry point (``innerloop.cli.main.entry``) calls it: ``main()`` called in-process
    (a test, a notebook) must return control to its caller.
    """
    if not _JOINED["group"]:
        sys.exit(code)
    with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can be said
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        ctypes.CDLL(None).fflush(None)  # native code's printf output (MuJoCo's warnings)
    os._exit(code)


def shard(num_tasks: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(num_tasks)``; shares differ by at most one task."""
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """The key-value store for this attempt's process group, or None to let torch build it.

    torchrun's agent keeps one store across ``--max-restarts`` attempts on a node, so a
    restarted worker can read the connection keys its dead predecessors wrote and wait
    forever for a peer that is gone (pytorch/pytorch#135712). On one node every worker
    of an attempt has the same ``TORCHELASTIC_RESTART_COUNT``, so it names a fresh key
    space. Across nodes the counts can differ; there the agents must not share their store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which ``innerloop launch`` sets), so that
    rank 0 of every attempt hosts a new one.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        return None
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"innerloop/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", shared)


class Group(Protocol):
    """What the trainer and evaluation use of a group of processes (:class:`LocalGroup`, :class:`ProcessGroup`)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and figures."""
        ...

    def shard(self, num_tasks: int, **step) -> Shard:
        """This rank's :class:`Shard` of a meta-batch of ``num_tasks`` tasks; ``step``: the other Shard fields."""
        ...

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (every rank gets the sum)."""
        ...

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        ...

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        ...

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's."""
        ...

    def restarted(self) -> bool:
        """Whether torchrun restarted this group after a failure (the run then resumes)."""
        ...

    def barrier(self) -> None:
        """Wait until every rank has arrived."""
        ...

    def close(self) -> None:
        """Leave the group."""
        ...


class LocalGroup(Group):
    """The group of a single process: :class:`ProcessGroup`'s interface, every collective the identity."""

    rank, world_size, local_rank, is_main = 0, 1, 0, True

    def shard(self, num_tasks: int, **step) -> Shard:
        """The whole meta-batch; ``step``: the other :class:`Shard` fields."""
        return Shard(task_ids=range(num_tasks), **step)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast(self, obj):
        return obj

    def gather(self, obj) -> list:
        return [obj]

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        pass

    def restarted(self) -> bool:
        return False

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


# How gloo's transport says that a peer is gone or silent (its messages in gloo/transport/tcp/pair.cc).
TRANSPORT_ERRORS = (
    "gloo/transport",
    "Connection",
    "Broken pipe",
    "Socket closed",
    "Read error",
    "Write error",
    "imed out",
)


@dataclass
class ProcessGroup:
    """This process's place in the group (``rank`` of ``world_size``) and the collectives innerloop uses."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls, device: str, timeout_s: float) -> ProcessGroup:
        """Join the group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if env[k] is None]
        if missing:
            raise DistributedError(
                f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} is not set; launch with "
                "`torchrun --nproc-per-node=P -m innerloop train ...` (or `innerloop launch`), which sets them"
            )
        local_rank = int(env["LOCAL_RANK"] or 0)
        cuda = torch.device(device).type == "cuda"
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(
                    f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                    "start at most that many processes per node (--nproc-per-node)"
                )
            torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=timeout_s)
            try:
                store = attempt_store(timeout)
                # with a store, rank and size are given; without one (-1, the defaults) env:// reads them
                rank, size = (int(env["RANK"] or 0), int(env["WORLD_SIZE"] or 1)) if store else (-1, -1)
                dist.init_process_group(
                    "nccl" if cuda else "gloo", timeout=timeout, store=store, rank=rank, world_size=size
                )
                _JOINED["group"] = True
            except (dist.DistError, RuntimeError, TimeoutError) as err:
                raise DistributedError(
                    f"rank {env['RANK']} could not join the process group at {env['MASTER_ADDR']}:{env['MASTER_PORT']} "
                    f"within {timeout_s:g} s ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Check that every "
                    "node runs the same command with the same --rdzv-endpoint/MASTER_ADDR, that the port is open, and "
                    "raise train.dist_timeout if nodes start far apart."
                ) from None
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the rank that logs and writes checkpoints."""
        return self.rank == 0

    @contextlib.contextmanager
    def collective(self, what: str):
        """Run a collective; a peer that died or hung in it becomes one :class:`PeerLost` line, not a gloo trace."""
        try:
            yield
        except RuntimeError as err:
            # NCCL raises DistErrors; gloo plain RuntimeErrors from its transport ("Connection reset by peer", "Write
            # error ... Broken pipe", "Socket closed") or a timeout. Anything else (a shape mismatch: a bug) stays.
            if not (isinstance(err, dist.DistError) or any(s in str(err) for s in TRANSPORT_ERRORS)):
                raise
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise PeerLost(
                f"lost the group during {what} ({first[:200]}): "
                "another rank died or stopped answering, and printed its own error if it could. With --max-restarts, "
                "torchrun restarts the group, which resumes from the last checkpoint"
            ) from err

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        box = [obj if self.is_main else None]
        with self.collective("a broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        out = [None] * self.world_size
        with self.collective("a gather"):
            dist.all_gather_object(out, obj)
        return out

    def shard(self, num_tasks: int, **step) -> Shard:
        """This rank's contiguous share of a meta-batch of ``num_tasks`` tasks; ``step``: the other :class:`Shard` fields."""
        ids = shard(num_tasks, self.rank, self.world_size)
        return Shard(task_ids=ids, weight=len(ids) / num_tasks, reduce=self.sum, **step)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor, without graph)."""
        summed = tensor.detach().clone()
        with self.collective("an all-reduce"):
            dist.all_reduce(summed)
        return summed

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (each in its own dtype)."""
        with self.collective("a broadcast"):
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def restarted(self) -> bool:
        """Whether torchrun restarted this group after a failure (then it resumes by itself).

        Each node's agent counts its own restarts (a node whose workers were healthy may still
        say 0), so the group restarted if any rank says so.
        """
        return max(self.gather(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))) > 0

    def barrier(self) -> None:
        """Wait until every rank of the group reaches this point."""
        with self.collective("a barrier"):
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group (idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def config_hash(config: Config) -> str:
    """A short digest of ``config``, compared across ranks to refuse ranks started with different configs."""
    return hashlib.sha256(to_yaml(config).encode()).hexdigest()[:16]


def check_same_config(group: Group, config: Config) -> None:
    """Fail on every rank, naming the differing options, unless all ranks run the same config."""
    entries = group.gather((config_hash(config), to_dict(config)))
    if len({h for h, _ in entries}) == 1:
        return
    reference = entries[0][1]
    for rank, (digest, other) in enumerate(entries):
        if digest != entries[0][0]:
            diffs = [
                f"{section}.{key}: rank 0 {value!r} vs rank {rank} {other.get(section, {}).get(key)!r}"
                for section, values in reference.items()
                if isinstance(values, dict)
                for key, value in values.items()
                if other.get(section, {}).get(key) != value
            ] or [f"out_dir: rank 0 {reference.get('out_dir')!r} vs rank {rank} {other.get('out_dir')!r}"]
            raise ConfigError(
                f"the ranks were started with different configurations (hash {entries[0][0]} on rank 0, {digest} on "
                f"rank {rank}): {'; '.join(diffs[:5])}. Launch every node with the same --config and overrides."
            )


def torchrun(options: list[str], command: list[str]) -> None:
    """``torchrun OPTIONS -m innerloop COMMAND``, with rendezvous and worker failures as one clear error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousError, RendezvousTimeoutError
    from torch.distributed.run import parse_args, run

    args = parse_args([*options, "-m", "innerloop", *command])
    # With the agent's store shared, a c10d rendezvous reuses one store across restarts and
    # restart counts differ between nodes, so a restarted worker can read stale connection
    # keys (pytorch/pytorch#135712). Unshared, rank 0 of each attempt hosts a fresh store.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    where = f"{args.rdzv_backend} rendezvous at {args.rdzv_endpoint or 'localhost'} (id {args.rdzv_id!r})"
    try:
        run(args)
    except RendezvousTimeoutError:
        raise DistributedError(
            f"timed out waiting for the other nodes at the {where}: not all of --nnodes={args.nnodes} joined. Start the "
            "same command on every node (same --rdzv-endpoint and --rdzv-id), or raise join_timeout (--rdzv-conf join_timeout=S)"
        ) from None
    except RendezvousClosedError:
        raise DistributedError(
            f"the {where} was closed: another node gave up (its own error is printed on that node) or the run had "
            "already finished. Fix that node's error and start every node again."
        ) from None
    except RendezvousError as err:
        raise DistributedError(
            f"could not reach the {where} ({type(err).__name__}: {err}). Check the host and port of --rdzv-endpoint, "
            "that the node hosting it is up (--rdzv-conf is_host=1 there when in doubt) and that no firewall blocks the port"
        ) from None
    except ChildFailedError as err:
        codes = ", ".join(f"rank {rank}: exit {failure.exitcode}" for rank, failure in sorted(err.failures.items()))
        raise DistributedError(
            f"worker processes failed ({codes}); their own error messages are printed above"
        ) from None
