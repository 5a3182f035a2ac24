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
