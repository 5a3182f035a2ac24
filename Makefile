# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use (quick afterwards) and install innerloop into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-metaworld lint setup clean

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

# Meta-World's package pins mujoco==3.3.0 (its models fail to load under the MuJoCo 4 of gymnasium[mujoco]), so its
# tests run in a virtualenv of their own; the main suite skips them by the explicit opt-out below.
MWVENV := .venv-metaworld

$(MWVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MWVENV)
	$(MWVENV)/bin/python -m pip install --quiet --upgrade pip
	$(MWVENV)/bin/python -c "import torch" 2>/dev/null || $(MWVENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(MWVENV)/bin/python -m pip install --quiet -e ".[metaworld]" "pytest>=8" "pytest-timeout>=2.3"
	touch $@

test-metaworld: $(MWVENV)/.installed
	$(MWVENV)/bin/python -m pytest -q tests/test_metaworld.py

# The suite must end its session: a test that ends the pytest process itself would leave a status 0 and no mark.
FINISHED := $(VENV)/pytest-finished

test: lint
	rm -f $(FINISHED)
	INNERLOOP_PYTEST_FINISHED=$(FINISHED) INNERLOOP_ALLOW_MISSING_METAWORLD=1 $(BIN)/python -m pytest -q
	@test -f $(FINISHED) || { echo "error: pytest stopped before the end of its session (a test ended the process)"; exit 1; }
	$(MAKE) test-metaworld

clean:
	rm -rf $(VENV) $(MWVENV) runs
