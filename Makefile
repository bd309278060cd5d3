# acr-mirror: install · test · demo · bench · lint
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: install test test-slow test-reliability demo bench lint clean

$(VENV)/.installed: pyproject.toml manifests-rewriter/pyproject.toml
	./scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./manifests-rewriter -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Everything but the suites marked slow (run those with `make test-slow`).
test: install
	$(PYTEST) -m "not slow" -q

test-slow: install
	$(PYTEST) -m slow -q

test-reliability: install
	$(PYTEST) -m reliability -q
	$(PY) scripts/reliability_table.py --print

# A real migration against two local registries: seed, migrate examples/, show diff and report.
demo: install
	$(PY) -m scripts.demo

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .demo .bench .pytest_cache .mypy_cache .ruff_cache
