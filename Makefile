# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOB    ?= questions
INPUTS ?=

.PHONY: demo test sysdeps lint typecheck suite unit scenarios simtests entrypoint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --job $(JOB) $(if $(INPUTS),--inputs $(INPUTS))

test: $(STAMP) sysdeps lint typecheck suite entrypoint

# Real parts some tests use (redis-server, chromium, promtool), installed when absent and root.
sysdeps:
	bash deploy/system-packages.sh

lint: $(STAMP)
	$(BIN)/ruff check synthd tests bench examples
	$(BIN)/ruff format --check synthd tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite; or one folder of it: tests/unit (a file per module), tests/scenarios (the
# daemon end to end: subprocesses, signals, crashes), tests/sim (the simulator).
suite: $(STAMP)
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

scenarios: $(STAMP)
	$(BIN)/python -m pytest -q tests/scenarios

simtests: $(STAMP)
	$(BIN)/python -m pytest -q tests/sim

# The container's entrypoint (synthd --help) from a wheel in a clean venv: a missing
# dependency in pyproject.toml shows here, not in production.
entrypoint:
	bash deploy/check-entrypoint.sh

clean:
	rm -rf $(VENV) out state .pytest_cache .mypy_cache .ruff_cache
