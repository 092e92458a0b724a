# Set-up and everyday commands. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOWEST := .venv-lowest

.PHONY: demo test test-fast test-lowest bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## the research workflow on the embedded SQLite store, killed and resumed
	$(VENV)/bin/phaseledger demo

test: $(STAMP)  ## the typing gate, then the whole suite (PostgreSQL tests skip outside CI when no server is reachable)
	$(PY) -m mypy
	$(PY) -m pytest -q; status=$$?; \
	echo "screenshots of the web view's pages (browser tests): $(CURDIR)/test-artifacts/screenshots"; \
	exit $$status

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-lowest:  ## unit, property and docs tests on the lowest dependency versions pyproject.toml allows
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet -e ".[test]" -c constraints/lowest.txt
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/property tests/test_docs.py

bench: $(STAMP)  ## the benchmark suite, LangGraph and DBOS included (ratios to floors measured in the same run)
	$(PY) -m pip install --quiet -e ".[dev,compare]"
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .hypothesis phaseledger.db* demo.db* demo-*.svg test-artifacts
