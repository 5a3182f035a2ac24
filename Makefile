# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use (quick afterwards) and install innerloop into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint setup clean

# The code ruff lints and format-checks (its rules: [tool.ruff] in pyproject.toml).
LINTED := innerloop tests benchmarks examples

setup: $(VENV)/.installed

# torch is pinned first so that a machine with a local CPU wheel (pip find-links) uses it
# instead of pulling a multi-GB CUDA build; elsewhere pip installs its usual torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/innerloop demo

# Lint, format check and type check first: a failure there stops `make test` before the suite runs.
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy  # type check of innerloop/ ([tool.mypy] in pyproject.toml)

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
