"""A run's ``metrics.jsonl`` (and TensorBoard scalars when tensorboard is installed), written by rank 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .checkpoint import write_text_atomic


def wait_past_event_files(log_dir: str | Path) -> None:
    """Sleep until the clock's second is past every event file's in ``log_dir`` (at most about 1 s).

    TensorBoard reads a run's event files in name order, and a name is ``events.out.tfevents.SECOND.HOST.PID.N``
    with N unpadded. A writer created in the same second and process as an older one may sort before it (N = 10
    against 9), and then the older events come after its ``purge_step`` and are not hidden."""
    seconds = [p.name.split(".")[3] for p in Path(log_dir).glob("events.out.tfevents.*")]
    newest = max((int(s) for s in seconds if s.isdigit()), default=None)
    if newest is not None and (wait := newest + 1 - time.time()) > 0:
        time.sleep(wait)


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
            wait_past_event_files(log_dir)  # the new file must sort after the ones whose events it purges
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
