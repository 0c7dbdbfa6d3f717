# osteojax: two commands.
#   make run   set up .venv (once) and run the embedded default job
#   make test  set up .venv (once) and run the test suite (slow tests skipped; `make test-slow` runs them)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha1sum requirements.txt | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
BUILD_PREREQS := numpy setuptools wheel versioneer
PIP := $(PY) -m pip install --disable-pip-version-check -q
# uv installs the pinned set (parallel downloads): about half a minute on the 2-core machine, where
# pip took 1.6 min. The bytecode pass after it (~20 s) matters where PYTHONDONTWRITEBYTECODE is
# set: without .pyc files every Python process compiles jax and flax from source again, ~6 s each,
# and the test suite starts dozens of them.
UV := $(VENV)/bin/uv pip install -q --python $(PY)
WORKDIR ?= runs/default
# XLA's compiled programs are kept on disk and reused by later processes (the test suite's
# subprocesses, a resumed or repeated run); `make clean` removes them.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: run test test-slow setup clean
setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing pinned requirements into $(VENV) (first time only: about a minute)"
	@# pyradiomics cannot build in an isolated build env: its prerequisites go in first.
	$(PIP) $(shell grep -iE '^uv==' requirements.txt)
	$(UV) $(foreach p,$(BUILD_PREREQS),$(shell grep -iE '^$(p)==' requirements.txt))
	$(UV) --no-build-isolation $(shell grep -iE '^pyradiomics==' requirements.txt)
	$(UV) -r requirements.txt
	$(UV) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') osteojax \
	  || echo "[setup] bytecode pass incomplete (only slower process starts follow)"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(PY) -m osteojax.main --config configs/default.py --workdir $(WORKDIR)

# The default suite in TEST_WORKERS processes (pytest-xdist), a whole file per worker so that
# each module's fixtures are built once, the longest files first (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .cache
