"""Every script in examples/ runs for a couple of iterations (so none can rot) on the public API alone."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import innerloop

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def run_example(name: str, *args: str, timeout: float = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [PYTHON, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_examples_are_the_four_documented_scripts():
    assert SCRIPTS == ["maml_trpo_nav2d.py", "omniglot_anil.py", "protonets_image_folder.py", "sinusoid_own_loop.py"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_examples_use_only_the_public_api(name):
    """Imports from innerloop name public modules and public (exported) names only."""
    tree = ast.parse((EXAMPLES / name).read_text())
    assert ast.get_docstring(tree), f"{name} has no docstring saying what it does"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("innerloop"):
            module = __import__(node.module, fromlist=["__all__"])
            assert node.module in ("innerloop", "innerloop.models", "innerloop.data", "innerloop.rl"), node.module
            for alias in node.names:
                assert alias.name in getattr(module, "__all__", ()), (
                    f"{name}: {node.module}.{alias.name} is not exported"
                )
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("innerloop.") for a in node.names)
    source = (EXAMPLES / name).read_text()
    assert '"--iterations"' in source


def test_sinusoid_own_loop():
    out = run_example("sinusoid_own_loop.py", "--iterations", "2", "--meta-batch", "3", "--proximal", "0.1")
    assert "iteration 1: query MSE" in out and "unseen tasks: mean query MSE" in out


def test_omniglot_anil():
    """Real Omniglot from ../shared/data (or $INNERLOOP_DATA): this test fails, not skips, when it is missing."""
    out = run_example(
        "omniglot_anil.py",
        "--iterations",
        "2",
        "--meta-batch",
        "2",
        "--steps",
        "1",
        "--eval-tasks",
        "4",
        "--strategy",
        "loop",
    )
    assert "iteration 1: query loss" in out and "5-way 1-shot accuracy" in out and "over 4 tasks" in out


def test_protonets_on_your_own_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(6):  # root/<class>/<image>, grayscale PNGs
        (tmp_path / "letters" / f"class_{c}").mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((16, 16)) < 0.1 + 0.12 * c).astype(np.uint8) * 255
            Image.fromarray(pixels, "L").save(tmp_path / "letters" / f"class_{c}" / f"{i}.png")
    out = run_example(
        "protonets_image_folder.py",
        str(tmp_path / "letters"),
        "--iterations",
        "2",
        "--ways",
        "2",
        "--shots",
        "1",
        "--queries",
        "2",
        "--mode",
        "L",
        "--eval-tasks",
        "4",
    )
    assert "1x16x16" in out and "4 training classes, 2 test classes" in out  # grayscale kept: one channel
    assert "2-way 1-shot accuracy" in out and "over 4 tasks" in out


def test_maml_trpo_nav2d():
    out = run_example("maml_trpo_nav2d.py", "--iterations", "2", "--tasks", "2", "--episodes", "2", "--eval-tasks", "2")
    assert "iteration 1: return" in out and "return after 0 / 1 / 2 / 3 steps" in out


def test_the_package_exports_the_handle():
    assert {"TaskHandle", "TaskList"} <= set(innerloop.__all__)
