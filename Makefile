# xclip-lightning: every target installs what it needs into .venv first (a fresh clone needs nothing else).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-min lint format bench bench-gpu demo clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install the package with its dev extras (re-runs when setup.cfg changes)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install ## Run the whole test suite (CPU, no downloads)
	$(BIN)/python -m pytest -q

test-min: ## Install the oldest supported versions (constraints-min.txt) into .venv-min, then run the tests there
	test -x .venv-min/bin/python || $(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --upgrade pip
	.venv-min/bin/python -m pip install --quiet -e ".[dev]" -c constraints-min.txt
	.venv-min/bin/python -m pytest -q

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: install ## ruff autofix and format
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Run the benchmarks (each prints a table and one JSON line; videos are generated once)
	$(BIN)/python bench/head.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/index_load.py
	$(BIN)/python bench/index_memory.py
	$(BIN)/python bench/decode_memory.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/serve.py
	@echo "needs a GPU, not run here: make bench-gpu (bench/gpu_check.py)"

bench-gpu: $(BENCH_STAMP) ## The GPU check (one CUDA GPU, under 8 minutes): training modes, index cuda vs cpu, fp16, 1000x1000 eval
	$(BIN)/python bench/gpu_check.py

demo: install ## Train and test on the embedded synthetic dataset (CPU, about 80 s), print the retrieval table
	$(BIN)/xclip-lightning demo

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .venv-min .pytest_cache .ruff_cache src/*.egg-info
