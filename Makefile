# Every target bootstraps .venv itself: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fxforge-installed
TORCH := torch==2.13.0

.PHONY: demo test test-long lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,bench]" $(TORCH)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fxforge demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

test-long: $(STAMP)
	FXFORGE_PROPERTY_EXAMPLES=2000 $(PY) -m pytest -q -n 2 tests/test_pass_properties.py

bench: $(STAMP)
	$(PY) -m fxforge bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
