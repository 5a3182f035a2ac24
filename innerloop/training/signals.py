"""SIGINT and SIGTERM as a request for a clean stop at the end of the current iteration."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def catch_stop_signals(enabled: bool = True) -> tuple[list[int], Callable[[], None]]:
    """While training, SIGINT (Ctrl-C) and SIGTERM ask for a clean stop; returns (requests, restore).

    A signal is appended to ``requests``; the loop then finishes the current iteration,
    writes a checkpoint of it and stops, so an interruption loses nothing (without this,
    up to ``checkpoint_every`` iterations). A second signal interrupts at once. Only on the
    main thread and where ``enabled``: the ranks of a distributed run would see a signal at
    different iterations, so they keep the default (resume from the last periodic checkpoint).
    ``restore()`` puts the old handlers back.
    """
    requests: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
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
