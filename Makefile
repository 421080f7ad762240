# peergrid: `make train` installs everything into .venv and trains the default config;
# `make sweep ARGS=...` runs a sweep on a local Ray; `make test` installs the same (the test
# extra includes ray[tune] and optuna for tests/test_sweep.py) and runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own, so that peergrid's `torch>=2.2` is already met and pip
# pulls in no CUDA packages. TORCH_SPEC is the requirement; TORCH_INDEX, when set, is the index
# it comes from (pip --index-url, in place of PyPI).
# - Default (TORCH_INDEX empty): pip's configured indexes. Where they hold the CPU wheel, as on
#   this project's CI machines (torch-2.13.0+cpu, which `torch==2.13.0` matches), that is it.
# - A fresh Linux x86_64 machine on plain PyPI: PyPI's torch==2.13.0 is the CUDA build there
#   (GBs of nvidia-* packages); take the CPU build from PyTorch's CPU index:
#     make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   (macOS, Windows and Linux aarch64: PyPI's wheel is already a CPU one.)
# - A GPU machine: TORCH_INDEX=https://download.pytorch.org/whl/cu<version>, a CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_INSTALL := $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: install train sweep test bench bench-sweep lint wheel-smoke

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INSTALL)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python train.py $(ARGS)

# A sweep on a local Ray (agents/sweep.py), e.g.
#   make sweep ARGS="--config configs/mappo.yaml --seeds 0-4 mappo.actor_lr=[1e-4,3e-4]"
sweep: install
	$(BIN)/python train.py --sweep $(ARGS)

# The suite in two processes (pytest-xdist), one test file each at a time so that a file's
# module fixtures (a reference run, a local Ray) are built once: 324 s against 592 s in one
# process on a 2-core machine. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/network_throughput.py

# Ray sweep against the same 8 trials back to back on 2 cores (README, "Sweeps on Ray").
bench-sweep: install
	$(BIN)/python benchmarks/sweep_overhead.py $(ARGS)

lint: install
	$(BIN)/ruff check .

# Build the wheel, install it into a fresh venv (torch first, as above) and run a smoke test of
# the installed package from outside the repository (.ci/wheel_smoke.sh; CI runs it).
wheel-smoke:
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" .ci/wheel_smoke.sh
