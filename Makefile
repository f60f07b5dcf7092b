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
	$(PY) -m pip install -q -e ".[test,openvino]"
	# TensorRT's API for mypy only (the real wheels cannot install here; see README)
	$(PY) -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
	# ... made readable by mypy: copied into typings/ (generated, not committed) with two fixes
	$(PY) scripts/vendor_tensorrt_stubs.py
	touch $(STAMP)

setup: $(STAMP)  ## make .venv and install the project with its test extras

lint: setup  ## ruff
	$(VENV)/bin/ruff check models exporter trt_runtime tests benchmarks

typecheck: setup  ## mypy, trt_runtime against tensorrt-stubs
	$(VENV)/bin/mypy models exporter trt_runtime

# the suite includes tests/packaging (slow): the wheel installed into fresh venvs under the temp dir, `[export]`
# exporting qdq from another directory on the shipped corpus, `[runtime]` alone (no torch) serving exports
test: setup lint typecheck  ## lint, type-check and the test suite (GPU tests skip without a GPU; fresh-venv install tests included)
	$(PY) -m pytest -q

# The quantization settings are the recipe's defaults (models/quantization/recipe.py), not restated here;
# EXPORT_FLAGS (the qdq export) and CALIBRATE_FLAGS (both modes) add recipe flags, e.g.
# EXPORT_FLAGS="--calibration-method max", CALIBRATE_FLAGS="--num-calibration-samples 128"
.PHONY: export
DEMO_CHECKPOINT = $$($(PY) -m models.demo_model)
export: setup  ## export the demo model (all-MiniLM-L6-v2, feature-extraction) to exports/minilm-float and exports/minilm-qdq
	$(PY) -m exporter --model "$(DEMO_CHECKPOINT)" --task feature-extraction --output exports/minilm-float
	$(PY) -m exporter --model "$(DEMO_CHECKPOINT)" --task feature-extraction --quantization qdq \
		--output exports/minilm-qdq $(EXPORT_FLAGS)

.PHONY: calibrate
CALIBRATION_DIR = exports/calibration
calibrate: setup  ## calibrate all-MiniLM-L6-v2 in qdq and integer mode with the default recipe on the shipped calibration_data -> $(CALIBRATION_DIR)/minilm-{qdq,integer}-calibration.json
	$(PY) -m models.quantization.calibrate --model "$(DEMO_CHECKPOINT)" --quantization qdq \
		--output $(CALIBRATION_DIR)/minilm-qdq-calibration.json $(CALIBRATE_FLAGS)
	$(PY) -m models.quantization.calibrate --model "$(DEMO_CHECKPOINT)" --quantization integer \
		--output $(CALIBRATION_DIR)/minilm-integer-calibration.json $(CALIBRATE_FLAGS)

.PHONY: demo
demo: setup  ## all-MiniLM-L6-v2 float vs INT8 on ONNX Runtime: export (or reuse) into exports/, compare embeddings, search, size, latency
	$(PY) scripts/demo.py

.PHONY: bench bench-quick
bench: setup  ## CPU speed/memory/accuracy side by side: transformers, ONNX Runtime (float, O2, quantize_dynamic), OpenVINO (float, + NNCF) and our backends (BERT-base, MiniLM; real-corpus pass) -> benchmarks/results/bench.{json,png} (docs/benchmarks.md)
	$(PY) -m benchmarks.bench $(BENCH_FLAGS)

bench-quick: setup  ## the same for MiniLM at batch 1 and 8 x sequence 128 and a 500-sentence corpus pass -> benchmarks/results/bench-quick.{json,png}
	$(PY) -m benchmarks.bench --quick $(BENCH_FLAGS)

.PHONY: engines trtexec-bench
engines: setup  ## TensorRT engines for every export under exports/ (needs TensorRT + GPU; ENGINE_FLAGS="--fp16 ...")
	PYTHON=$(PY) scripts/build_engines.sh exports $(ENGINE_FLAGS)

trtexec-bench: setup  ## trtexec on every engine under exports/ -> benchmarks/results/trtexec-*.json (needs trtexec)
	PYTHON=$(PY) scripts/trtexec_bench.sh exports

# Triton Inference Server (docs/serving.md): nvidia-pytriton's tritonserver in its own environment
# (numpy < 2), made on first use under ~/.cache/qbert-deploy (or $TRITON_SERVER_ENV)
.PHONY: serve serve-bench
SERVE_REPO := .cache/triton/demo-repo
DEMO_EXPORTS := exports/minilm-float exports/minilm-qdq
serve: setup  ## Triton on loopback (HTTP 8000, gRPC 8001, metrics 8002) serving the demo exports (text in, embeddings out); Ctrl-C stops it
	@test -f exports/minilm-float/export.json -a -f exports/minilm-qdq/export.json || $(MAKE) export
	$(PY) -m trt_runtime triton-repo $(DEMO_EXPORTS) --output $(SERVE_REPO) --force --kinds text,onnx \
		--onnx-backend python --pipeline-option pooling=mean --pipeline-option normalize=true
	$(PY) -m trt_runtime triton-serve $(SERVE_REPO)

serve-bench: setup  ## bounded load test on loopback: Triton (HTTP, gRPC) vs the in-process pipeline -> benchmarks/results/triton-load.{json,png}
	@test -f exports/minilm-float/export.json -a -f exports/minilm-qdq/export.json || $(MAKE) export
	$(PY) benchmarks/triton_load.py

.PHONY: eval
eval: setup  ## accuracy on real data: fine-tuned all-MiniLM-L6-v2 sentiment, float vs PTQ (every calibrator) vs QAT vs I-BERT integer -> benchmarks/results/eval-vader.{json,png}, docs/eval.md (docs/eval.md)
	$(PY) -m benchmarks.eval $(EVAL_FLAGS)
