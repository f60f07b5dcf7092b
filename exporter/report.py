"""`python -m exporter.report DIR [--json]`: print the INT8 share of an export directory's GEMM work.

The rule (TensorRT's explicit quantization, read from the ONNX graph) and its text have one home,
trt_runtime.contract.int8_share, which the export log and `python -m trt_runtime build` use too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from trt_runtime.contract.int8_share import format_report, int8_share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.report", description="Print the INT8 share of an export directory's GEMM work."
    )
    parser.add_argument("directory", help="an export directory (model.onnx)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args(argv)
    path = Path(args.directory) / "model.onnx"
    if not path.is_file():
        print(f"error: {path} not found; pass an export directory made by `python -m exporter`", file=sys.stderr)
        return 2
    data = int8_share(onnx.load(str(path), load_external_data=False)).to_dict()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
