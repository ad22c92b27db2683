# qwen-embed: `make demo` runs the main job, `make test` runs the test suite (`make test-fast`: without the
# tests marked slow). Tests pin torch to one thread, so they run in JOBS pytest-xdist workers (default 2).
# Both create .venv and install everything on a fresh machine (torch==2.13.0 first: a bare
# `torch` requirement would pull a multi-GB CUDA build on these machines).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

JOBS ?= 2
# Tests write bytecode caches (__pycache__/, ignored by git) even where the environment sets
# PYTHONDONTWRITEBYTECODE: otherwise every process a test starts recompiles the package (~0.3 s of CPU
# each) and each pytest worker re-rewrites every test module's asserts (~6 s).
TEST_ENV := PYTHONDONTWRITEBYTECODE=

.PHONY: demo test test-fast lint bench-gpu clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qwen_embed.demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src

test: $(STAMP) lint
	$(TEST_ENV) $(PY) -m pytest -n $(JOBS) --dist worksteal

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n $(JOBS) --dist worksteal -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
