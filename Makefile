# Every target bootstraps .venv itself: `make demo` and `make test` work on a fresh machine.
# Installs come from requirements.lock (every package pinned), so a new release upstream cannot
# break a fresh clone; `make lock` re-resolves pyproject's ranges and rewrites it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
LOCK := requirements.lock
STAMP := $(VENV)/.fxforge-installed
EXTRAS := dev,bench

.PHONY: demo test test-long lint bench lock clean

# pip and setuptools from the lock first; then fxforge editable, built with that setuptools (no
# build isolation: an isolated build would fetch whatever setuptools the index serves today).
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c $(LOCK) pip setuptools
	$(PIP) install --quiet -c $(LOCK) torch
	$(PIP) install --quiet -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	$(PIP) check
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fxforge demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

# The property tests and the hostile-input fuzzers (IR parser, verifier, dump loader, autotune
# cache) with 50x the examples `make test` gives them.
FUZZED := tests/test_pass_properties.py tests/test_hostile_ir.py tests/test_hostile_dumps.py \
	tests/test_hostile_autotune_cache.py
test-long: $(STAMP)
	FXFORGE_PROPERTY_EXAMPLES=2000 $(PY) -m pytest -q -n 2 $(FUZZED)

bench: $(STAMP)
	$(PY) -m fxforge bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# A fresh venv, pyproject's ranges resolved against today's index, every version written down.
# torch's local label (+cpu) is dropped: `torch==2.13.0` matches the CPU build this workplace
# serves and the plain build elsewhere. Review the diff, run `make test`, commit both.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip setuptools
	.lock-venv/bin/python -m pip install --quiet "torch==$$(sed -n 's/^torch==//p' $(LOCK))"
	.lock-venv/bin/python -m pip install --quiet ".[$(EXTRAS)]"
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --all --exclude fxforge \
	  | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv build

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .hypothesis build *.egg-info
