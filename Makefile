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
WORKDIR ?= runs/default
# XLA's compiled programs are kept on disk and reused by later processes (the test suite's
# subprocesses, a resumed or repeated run); `make clean` removes them.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: run test test-slow setup clean
setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing pinned requirements into $(VENV) (first time only: a few minutes)"
	@# pyradiomics cannot build in an isolated build env: its prerequisites go in first.
	$(PIP) $(foreach p,$(BUILD_PREREQS),$(shell grep -iE '^$(p)==' requirements.txt))
	$(PIP) --no-build-isolation $(shell grep -iE '^pyradiomics==' requirements.txt)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(PY) -m osteojax.main --config configs/default.py --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .cache
