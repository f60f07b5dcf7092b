#!/usr/bin/env bash
# Build a TensorRT engine for every export directory under a folder.
#
#   scripts/build_engines.sh [FOLDER] [build options...]      (FOLDER defaults to exports/)
#   scripts/build_engines.sh exports --fp16 --max input_ids:16x256 --timing-cache exports/timing.cache
#
# An export directory is one with export.json and model.onnx (made by `python -m exporter`). Every
# option after FOLDER goes to `python -m trt_runtime build` (see its --help). Without TensorRT this
# stops at once, non-zero, saying so. Exit status: 0 when every build succeeded, 1 otherwise.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
folder="${1:-exports}"
[[ $# -gt 0 ]] && shift

if [[ ! -d "$folder" ]]; then
    echo "error: $folder is not a folder; export models first (make export) or pass the folder holding them" >&2
    exit 2
fi

# fail early, with the reason, where the builder cannot run at all
if ! reason=$("$PYTHON" -c '
from trt_runtime.backends.tensorrt.libs import tensorrt_available
ok, reason = tensorrt_available()
print(reason)
raise SystemExit(0 if ok else 1)
' 2>&1); then
    echo "error: cannot build TensorRT engines here: $reason" >&2
    exit 1
fi
echo "$reason"

mapfile -t exports < <(find "$folder" -name export.json -printf '%h\n' | sort)
if [[ ${#exports[@]} -eq 0 ]]; then
    echo "error: no export directories (with export.json) under $folder" >&2
    exit 2
fi

failed=()
for i in "${!exports[@]}"; do
    dir="${exports[$i]}"
    echo "[$((i + 1))/${#exports[@]}] $dir"
    if ! "$PYTHON" -m trt_runtime build "$dir" "$@"; then
        failed+=("$dir")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "error: ${#failed[@]} of ${#exports[@]} builds failed: ${failed[*]}" >&2
    exit 1
fi
echo "built ${#exports[@]} engine(s)"
