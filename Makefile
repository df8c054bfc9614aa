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

# The bundled default model suggests code at a few spots of examples/ (FILE:LINE:COL, 1-based).
DEMO_SPOTS := examples/Bank.java:50:24 examples/BankAccount.java:46:17 examples/BankAccount.java:60:21

demo: setup
	@for spot in $(DEMO_SPOTS); do $(KAFFEE) complete $$spot -k 5 || exit 1; echo; done
	@echo "Next: use it in an editor -- 'kaffee serve' speaks LSP over stdio (see README, 'Use it in your editor'):"
	@echo "  $(KAFFEE) serve            # bundled model; --model DIR for your own"

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
