# `make help` lists every target. Targets that need Python create .venv first when it is missing.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: help install train test test-fast lint format bench gpu-check clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install the package with its dev extras

train: $(VENV)/.installed ## Train the default DCGAN on the embedded shapes dataset (ARGS="key=value ...")
	$(PY) -m dcgan_lightning $(ARGS)

test: $(VENV)/.installed ## Run the whole test suite, a worker per logical CPU (lint first; the 15 slowest listed)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n logical --dist worksteal --durations=15 $(ARGS)

test-fast: $(VENV)/.installed ## Run the tests not marked slow
	$(PY) -m pytest -n logical --dist worksteal -m "not slow" $(ARGS)

lint: $(VENV)/.installed ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed ## Benchmarks in one table: train(cfg) vs raw PyTorch, loading, metrics (ARGS="--quick")
	$(PY) -m dcgan_lightning.bench $(ARGS)

gpu-check: $(VENV)/.installed ## On a GPU (<5 min): pytest -m gpu, trainer=gpu at 3 precisions, GPU bench (else exits 0)
	$(PY) -m dcgan_lightning.bench.gpu_check $(ARGS)

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
