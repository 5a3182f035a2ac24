"""Where the real datasets for tests live (``../shared/data`` beside the repository), and what a test needs.

A test marked ``@needs(present, what)`` FAILS when ``what`` is missing (CI must not pass by skipping it);
``INNERLOOP_ALLOW_MISSING=1`` turns those failures into skips for users without the data or an extra
(tests/conftest.py applies the mark).
"""

import importlib.util
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALLOW_MISSING = "INNERLOOP_ALLOW_MISSING"


def needs(present: bool, what: str) -> pytest.MarkDecorator:
    """Mark a test that needs ``what`` (a data folder, an optional package): it fails, or skips under the opt-out."""
    return pytest.mark.needs(present=bool(present), what=what)


def missing(what: str) -> None:
    """Inside a fixture or test: fail (or, with INNERLOOP_ALLOW_MISSING=1, skip) because ``what`` is missing."""
    if os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(f"{what} is missing ({ALLOW_MISSING}=1)")
    pytest.fail(
        f"{what} is missing; provide it, or set {ALLOW_MISSING}=1 to skip the tests that need it", pytrace=False
    )


needs_omniglot = needs((SHARED / "omniglot").exists(), f"{SHARED / 'omniglot'} (the shared Omniglot data)")

# Meta-World (the `metaworld` extra) pins mujoco==3.3.0 and so cannot share a virtualenv with the MuJoCo 4 of
# gymnasium[mujoco]: its tests have their own opt-out (`make test` runs them in .venv-metaworld).
ALLOW_MISSING_METAWORLD = "INNERLOOP_ALLOW_MISSING_METAWORLD"
HAVE_METAWORLD = importlib.util.find_spec("metaworld") is not None


def require_metaworld() -> None:
    """Inside a test: fail when metaworld is missing, skip under INNERLOOP_ALLOW_MISSING_METAWORLD=1 (or ..._MISSING=1)."""
    if HAVE_METAWORLD:
        return
    if os.environ.get(ALLOW_MISSING_METAWORLD) == "1" or os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(f"metaworld is not installed ({ALLOW_MISSING_METAWORLD}=1)")
    pytest.fail(
        "metaworld is not installed: pip install -e '.[metaworld,dev]' in a virtualenv of its own (it pins "
        f"mujoco==3.3.0; `make test-metaworld`), or set {ALLOW_MISSING_METAWORLD}=1 to skip the tests that need it",
        pytrace=False,
    )
