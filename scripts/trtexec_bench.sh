#!/usr/bin/env bash
# Benchmark export directories with trtexec; results in benchmarks/results/trtexec-<name>.json.
#
#   scripts/trtexec_bench.sh [FOLDER_OR_EXPORT_DIR...]           (default: every export under exports/)
#   TRTEXEC_MODE=build scripts/trtexec_bench.sh exports/minilm-qdq
#
# Modes (TRTEXEC_MODE):
#   engine (default)  run the model.engine that `python -m trt_runtime build` made (--loadEngine) at the
#                     opt shapes of its first profile. Engines with AOT ibert plugins (TensorRT >= 10.9) carry
#                     their compiled kernels, so trtexec needs no plugin library (no --staticPlugins or
#                     --dynamicPlugins); engines with JIT plugins need Python and are refused.
#   build             trtexec builds from the graph `build --no-plugins` would parse (written to a scratch
#                     directory), with --min/--opt/--maxShapes from export.json, --stronglyTyped (the FP16
#                     graph with TRTEXEC_FP16=1), or --int8/--fp16 when weakly typed (TRTEXEC_STRONGLY_TYPED=0;
#                     deprecated in TensorRT 10.12). trtexec cannot load the Python plugins, so the ibert ops
#                     are built from their ONNX function bodies.
# Other settings: TRTEXEC (the binary; default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec),
# WARMUP_MS (500), ITERATIONS (200), RESULTS (benchmarks/results), TRTEXEC_CUDA_GRAPH=1 (--useCudaGraph),
# TRTEXEC_NO_DATA_TRANSFERS=1 (--noDataTransfers: the GPU-compute figure without host copies),
# TRTEXEC_EXTRA (more trtexec flags, checked against trtexec's option list like the others).
# Every flag comes from `python -m trt_runtime.backends.tensorrt.trtexec args`, which checks it against
# samples/common/sampleOptions.cpp's options. Results record the shapes, batch and sequence length, and
# give throughput in sequences/s. Without trtexec this stops at once, non-zero, saying so.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
MODE="${TRTEXEC_MODE:-engine}"
WARMUP_MS="${WARMUP_MS:-500}"
ITERATIONS="${ITERATIONS:-200}"
RESULTS="${RESULTS:-benchmarks/results}"

trtexec_bin="${TRTEXEC:-$(command -v trtexec || true)}"
if [[ -z "$trtexec_bin" && -x /usr/src/tensorrt/bin/trtexec ]]; then
    trtexec_bin=/usr/src/tensorrt/bin/trtexec
fi
if [[ -z "$trtexec_bin" || ! -x "$trtexec_bin" ]]; then
    echo "error: trtexec not found: install TensorRT (its trtexec binary) on a machine with an NVIDIA GPU and put" \
         "it on PATH, or set TRTEXEC=/path/to/trtexec" >&2
    exit 1
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mode_args=(--warmup "$WARMUP_MS" --iterations "$ITERATIONS" "--extra=${TRTEXEC_EXTRA:-}")
[[ "${TRTEXEC_CUDA_GRAPH:-0}" == 1 ]] && mode_args+=(--cuda-graph)
[[ "${TRTEXEC_NO_DATA_TRANSFERS:-0}" == 1 ]] && mode_args+=(--no-data-transfers)
case "$MODE" in
    engine) ;;
    build)
        mode_args+=(--build --scratch "$scratch")
        [[ "${TRTEXEC_FP16:-0}" == 1 ]] && mode_args+=(--fp16)
        [[ "${TRTEXEC_STRONGLY_TYPED:-}" == 0 ]] && mode_args+=(--no-strongly-typed)
        [[ "${TRTEXEC_STRONGLY_TYPED:-}" == 1 ]] && mode_args+=(--strongly-typed)
        ;;
    *) echo "error: TRTEXEC_MODE=$MODE; use engine or build" >&2; exit 2 ;;
esac

[[ $# -eq 0 ]] && set -- exports
exports=()
for target in "$@"; do
    if [[ -f "$target/export.json" ]]; then
        exports+=("$target")
    elif [[ -d "$target" ]]; then
        mapfile -t -O "${#exports[@]}" exports < <(find "$target" -name export.json -printf '%h\n' | sort)
    else
        echo "error: $target is neither an export directory nor a folder of them" >&2
        exit 2
    fi
done
if [[ ${#exports[@]} -eq 0 ]]; then
    echo "error: no export directories (with export.json) in $*; export models first (make export)" >&2
    exit 2
fi

mkdir -p "$RESULTS"
failed=()
for dir in "${exports[@]}"; do
    name="$(basename "$dir")"
    [[ "$MODE" == build ]] && name="$name-trtexec-build"
    echo "== $dir ($MODE)"
    # every flag comes from export.json / engine.json, checked against trtexec's options (trt_runtime.backends.tensorrt.trtexec)
    if ! args_text="$("$PYTHON" -m trt_runtime.backends.tensorrt.trtexec args "$dir" "${mode_args[@]}" \
            --export-prefix "$scratch/$name")"; then
        failed+=("$dir")
        continue
    fi
    mapfile -t args <<< "$args_text"
    echo "$trtexec_bin ${args[*]}"
    if ! "$trtexec_bin" "${args[@]}" > "$scratch/$name.log" 2>&1; then
        tail -n 30 "$scratch/$name.log" >&2
        echo "error: trtexec failed on $dir (log above)" >&2
        failed+=("$dir")
        continue
    fi
    "$PYTHON" -m trt_runtime.backends.tensorrt.trtexec summarize "$dir" --label "$name" --mode "$MODE" \
        --times "$scratch/$name-times.json" --profile "$scratch/$name-profile.json" \
        --layers "$scratch/$name-layers.json" --out "$RESULTS/trtexec-$name.json" \
        --command "$(printf '%q ' "${args[@]}")" || failed+=("$dir")
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "error: ${#failed[@]} of ${#exports[@]} benchmarks failed: ${failed[*]}" >&2
    exit 1
fi
