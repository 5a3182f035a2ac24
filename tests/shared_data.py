"""Where the real datasets for tests live: ``../shared/data`` beside the repository."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

needs_omniglot = pytest.mark.skipif(not (SHARED / "omniglot").exists(), reason="needs ../shared/data/omniglot")
