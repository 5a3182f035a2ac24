"""The README's Python example runs as written (with fewer iterations) and learns."""

import re
from pathlib import Path


def test_readme_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "range(10_000)" in code
    namespace: dict = {}
    exec(code.replace("range(10_000)", "range(300)"), namespace)
    new, prediction = namespace["new"], namespace["prediction"]
    assert prediction.shape == new.query_y[0].shape
    # After 300 iterations, ten adaptation steps already help on average over unseen tasks.
    learner, tasks = namespace["learner"], namespace["tasks"]
    result = learner.evaluate(tasks.sample(10**6, range(100)), [0, 10])
    assert result[10]["loss"].mean() < 0.8 * result[0]["loss"].mean()


def test_every_row_of_what_happens_when_names_tests_that_exist():
    """Each row of the README's "What happens when..." table is backed by tests that exist."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    table = text[text.index("### What happens when") :].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 9
    for row in rows:
        cited = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`|`::(\w+)`", row.split(" | ")[-1])
        assert cited, f"row without a test: {row}"
        current = None
        for path, name, continued in cited:
            current = path or current
            source = (root / current).read_text()
            for test in filter(None, [name.lstrip(":"), continued]):
                assert f"def {test}(" in source, f"{current} has no {test} (README row: {row[:60]}...)"
