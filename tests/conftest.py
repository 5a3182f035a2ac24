import os
from pathlib import Path

import pytest
import torch

# Keep tests deterministic and light on a shared 2-core machine.
# Tiny models: one intra-op thread is fastest and avoids oversubscribing a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """``@needs(present, what)`` (tests/shared_data.py): a missing requirement fails the test before its fixtures run."""
    from shared_data import missing

    for mark in item.iter_markers("needs"):
        if not mark.kwargs["present"]:
            missing(mark.kwargs["what"])


def pytest_sessionfinish(session, exitstatus):
    """Leave a mark that the session ended (``make test`` checks it): a test that ended the process itself (an
    os._exit once did, with status 0) would otherwise pass for a green suite with the rest of it never run."""
    mark = os.environ.get("INNERLOOP_PYTEST_FINISHED")
    if mark:
        Path(mark).write_text(f"{int(exitstatus)}\n")
