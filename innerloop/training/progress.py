"""The plain progress lines of a run (``innerloop.train`` logger) when no progress bar is drawn."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day) of a non-negative number of seconds."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {text}" if days else text


def format_values(record: dict) -> str:
    """``key value`` pairs, floats to 4 significant digits."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())


def format_log_line(record: dict, total: int, eta_seconds: float) -> str:
    """One plain progress line: ``iteration 20/1000 loss 0.4123 ... tasks/s 512 ETA 0:12:34``."""
    rates = {"tasks_per_s": "tasks/s", "env_steps_per_s": "env steps/s"}
    values = format_values({k: v for k, v in record.items() if k != "iteration" and k not in rates})
    fields = [f"iteration {record['iteration']}/{total}", *([values] if values else [])]
    fields += [f"{label} {record[key]:.0f}" for key, label in rates.items() if key in record]
    return "  ".join([*fields, f"ETA {duration(eta_seconds)}"])
