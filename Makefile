# Two entry points (README): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
KAFFEE := $(VENV)/bin/kaffee

.PHONY: setup demo test lint

setup: $(VENV)/.installed

# torch==2.13.0 first: it is a CPU build on disk; any other spec pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(KAFFEE) corpus build examples --out runs/demo-corpus --force
	$(KAFFEE) corpus stats runs/demo-corpus

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
