# Set-up and everyday commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## the research workflow on the embedded SQLite store, killed and resumed
	$(VENV)/bin/phaseledger demo

test: $(STAMP)  ## the whole suite (PostgreSQL tests skip outside CI when no server is reachable)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)  ## the benchmark suite (figures as ratios to floors measured in the same run)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis phaseledger.db* demo.db* demo-*.svg
