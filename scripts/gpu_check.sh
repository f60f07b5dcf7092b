#!/usr/bin/env bash
# One command for a GPU machine: the `gpu` tests, the ibert kernels timed against torch, and (where TensorRT is
# importable) engines, the layer report and the trtexec bench; results as JSON and a tests/GPU_RESULTS.md row.
#
#   OUT=/path/to/results scripts/gpu_check.sh [--parts env,tests,kernels,tensorrt] [--budget SECONDS]
#   scripts/gpu_check.sh --out DIR ...
#
# Made for a fresh machine with Python, torch (CUDA), Triton, cuda-python, pytest, onnx, onnxruntime and
# transformers, no TensorRT and no network; it must finish in under 8 minutes there. Every part runs under
# its own time limit, within the whole check's budget (default 450 s), and a part that fails or times out
# is recorded and the next one runs; a part that cannot run here (no GPU, no TensorRT) says why and is
# skipped. Parts:
#   env       python, library versions, GPU and driver (nvidia-smi)                -> env.json
#   tests     pytest -m gpu on the kernel and TensorRT tests (the single-op and tiny-model engines where
#             TensorRT is installed)                                                -> gpu-tests.xml, logs/tests.log
#   kernels   the ibert Triton kernels vs torch float32 gelu/softmax/layer_norm at BERT-base b32 s128
#             (GB/s and x torch)                                                    -> kernels.json
#   tensorrt  where TensorRT is usable: a tiny Q/DQ export built FP32 and FP16, its layer report, and
#             scripts/trtexec_bench.sh on it                                        -> tensorrt.json, trtexec/
# then always: results.json (everything) and gpu-results-row.md (the row to paste into tests/GPU_RESULTS.md).
# Exit status: 0 when no part failed or timed out, 1 otherwise, 2 for bad arguments.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

out="${OUT:-}"
parts="env,tests,kernels,tensorrt"
budget=450
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="${2:-}"; shift 2 ;;
        --parts) parts="${2:-}"; shift 2 ;;
        --budget) budget="${2:-}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$out" ]]; then
    echo "error: no results directory: set OUT=DIR or pass --out DIR" >&2
    exit 2
fi
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [[ "$budget" -lt 10 ]]; then
    echo "error: --budget $budget: give whole seconds, at least 10" >&2
    exit 2
fi
IFS=',' read -r -a selected <<< "$parts"
for part in "${selected[@]}"; do
    case "$part" in
        env|tests|kernels|tensorrt) ;;
        *) echo "error: unknown part '$part'; choose from env,tests,kernels,tensorrt" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out/logs"
started=$SECONDS
failures=0

# run_part NAME LIMIT COMMAND...: run under `timeout` within the budget left, log to logs/NAME.log, record it
run_part() {
    local name="$1" limit="$2"
    shift 2
    local left=$((budget - (SECONDS - started) - 15))  # 15 s kept for the summary
    if [[ "$left" -lt 10 ]]; then
        echo "== $name: skipped (the ${budget} s budget is spent)"
        "$PYTHON" scripts/gpu_check.py record --out "$out" --part "$name" --status skipped --seconds 0 \
            --reason "time budget spent" || true
        return 0
    fi
    [[ "$limit" -gt "$left" ]] && limit="$left"
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.log" 2>&1 || rc=$?
    local took=$((SECONDS - t0)) status=passed reason=""
    if [[ "$rc" -eq 124 || "$rc" -eq 137 ]]; then
        status=timeout reason="over ${limit} s"
        failures=$((failures + 1))
    elif [[ "$rc" -eq 3 ]]; then  # gpu_check.py: this part cannot run here; its JSON says why
        status=skipped reason="cannot run here (see $name.json)"
    elif [[ "$rc" -ne 0 ]]; then
        status=failed reason="exit status $rc"
        failures=$((failures + 1))
    fi
    tail -n 5 "$out/logs/$name.log" | sed 's/^/   /'
    echo "   $name: $status in ${took} s${reason:+ ($reason)}"
    "$PYTHON" scripts/gpu_check.py record --out "$out" --part "$name" --status "$status" --seconds "$took" \
        --rc "$rc" --reason "$reason" || true
}

skip_part() {
    echo "== $1: skipped ($2)"
    "$PYTHON" scripts/gpu_check.py record --out "$out" --part "$1" --status skipped --seconds 0 --reason "$2" || true
}

wants() { [[ ",$parts," == *",$1,"* ]]; }

wants env && run_part env 60 "$PYTHON" scripts/gpu_check.py env --out "$out"

if wants tests; then
    if "$PYTHON" -c "import pytest" 2>/dev/null; then
        run_part tests 300 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rA \
            tests/trt_runtime/backends/tensorrt/test_gpu_kernels.py tests/trt_runtime/backends/tensorrt/test_gpu.py \
            --junitxml "$out/gpu-tests.xml"
    else
        skip_part tests "pytest is not installed"
    fi
fi

wants kernels && run_part kernels 180 "$PYTHON" scripts/gpu_check.py kernels --out "$out"

if wants tensorrt; then
    if reason=$("$PYTHON" -c '
from trt_runtime.backends.tensorrt.libs import tensorrt_available
ok, reason = tensorrt_available()
print(reason)
raise SystemExit(0 if ok else 1)' 2>&1); then
        run_part tensorrt 240 "$PYTHON" scripts/gpu_check.py tensorrt --out "$out"
    else
        skip_part tensorrt "$reason"
    fi
fi

"$PYTHON" scripts/gpu_check.py summarize --out "$out"
echo "results: $out/results.json; row for tests/GPU_RESULTS.md: $out/gpu-results-row.md ($((SECONDS - started)) s)"
[[ "$failures" -eq 0 ]]
