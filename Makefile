# Every target works on a fresh clone: the ones that need the environment depend on `setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test lint typecheck

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# TensorRT's API for mypy only (the real wheels cannot install here; see README)
	$(PY) -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
	touch $(STAMP)

setup: $(STAMP)  ## make .venv and install the project with its test extras

lint: setup  ## ruff
	$(VENV)/bin/ruff check models exporter trt_runtime tests benchmarks

typecheck: setup  ## mypy, trt_runtime against tensorrt-stubs
	$(VENV)/bin/mypy models exporter trt_runtime

test: setup lint typecheck  ## lint, type-check and the test suite (GPU tests skip without a GPU)
	$(PY) -m pytest -q

.PHONY: export
DEMO_CHECKPOINT = $$($(PY) -m models.demo_model)
export: setup  ## export the demo model (all-MiniLM-L6-v2, feature-extraction) to exports/minilm-float and exports/minilm-qdq
	$(PY) -m exporter --model "$(DEMO_CHECKPOINT)" --task feature-extraction --output exports/minilm-float
	$(PY) -m exporter --model "$(DEMO_CHECKPOINT)" --task feature-extraction --quantization qdq --output exports/minilm-qdq

.PHONY: demo
demo: setup  ## all-MiniLM-L6-v2 float vs INT8 on ONNX Runtime: export (or reuse) into exports/, compare embeddings, search, size, latency
	$(PY) scripts/demo.py

.PHONY: engines trtexec-bench
engines: setup  ## TensorRT engines for every export under exports/ (needs TensorRT + GPU; ENGINE_FLAGS="--fp16 ...")
	PYTHON=$(PY) scripts/build_engines.sh exports $(ENGINE_FLAGS)

trtexec-bench: setup  ## trtexec on every engine under exports/ -> benchmarks/results/trtexec-*.json (needs trtexec)
	PYTHON=$(PY) scripts/trtexec_bench.sh exports
