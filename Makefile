# Quick start (fresh Debian machine, Python 3.11, no GPU):
#   make paper   # set up .venv from requirements.lock, regenerate the paper: paper/build/paper.pdf
#   make test    # set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CORES  ?= all

.PHONY: paper test lint metrics-check env clean-results
paper: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: env lint
	bash .ci/setup-system.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# the ecosystem's own checks: ruff (pyproject.toml [tool.ruff]) and Snakemake's linter
lint: env
	$(BIN)/ruff check src tests benchmarks
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

# after `make paper`: this run's metrics against the committed ones, within config/tolerances.yaml
metrics-check: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/facecaption metrics-check

env: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

clean-results:
	rm -rf results logs paper/build .snakemake
