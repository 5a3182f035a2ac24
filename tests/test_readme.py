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
