# Cohort - the two README commands are `make demo` and `make test`.
# Both create .venv on first use and install everything (CPU torch, the eight packages,
# CrypTen without its broken metadata, solc-js for the contract check).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cohort-deps
SRC    := $(shell find core federation crypto clients aggregator bounties -name '*.py' -o -name '*.json' -o -name '*.sol' 2>/dev/null)

.PHONY: setup demo test test-fast lint format bench proto contracts clean

setup: $(VENV)/.cohort-links

# Third-party packages: only when the dependency pins change.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from the machine's local wheel; an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0 -c requirements/constraints.txt
	$(BIN)/pip install -q -c requirements/constraints.txt -e ".[dev]" --config-settings editable_mode=strict
	# CrypTen declares the dead `sklearn` package: install it without its metadata deps
	# (its real run-time deps are in pyproject's dependencies).
	$(BIN)/pip install -q --no-deps crypten==0.4.1
	touch $@

# Strict editable install: a link tree with real paths for mypy and editors. Re-linked when
# a source file is added or removed.
$(VENV)/.cohort-links: $(STAMP) $(SRC)
	$(BIN)/pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $@

node_modules/.cohort-npm: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/cohort simulate --seed 7 --out runs/demo

test: setup node_modules/.cohort-npm
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p cohort
	$(BIN)/mypy --explicit-package-bases tests bench

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/round.py
	$(BIN)/python bench/control.py
	$(BIN)/python bench/noise.py
	$(BIN)/python bench/dp_speed.py
	$(BIN)/python bench/study.py
	$(BIN)/python bench/dp_accuracy.py
	$(BIN)/python bench/empirical.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/mpc.py
	$(BIN)/python bench/mpc_norm.py
	$(BIN)/python bench/secagg.py
	$(BIN)/python bench/client_split.py

proto: setup
	$(BIN)/python aggregator/proto/generate.py

contracts: node_modules/.cohort-npm
	node bounties/compile.mjs

clean:
	rm -rf build runs .pytest_cache .mypy_cache .ruff_cache
