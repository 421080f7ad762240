# peergrid: `make train` installs everything into .venv and trains the default config;
# `make test` installs the same and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch by default; a GPU user sets TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url ...").
TORCH_SPEC ?= torch==2.13.0

.PHONY: install train test bench lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/network_throughput.py

lint: install
	$(BIN)/ruff check .
