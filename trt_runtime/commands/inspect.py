"""`python -m trt_runtime inspect OUT`: what an export directory's engine is, read from engine.json (no TensorRT needed).

Prints the engine's record (TensorRT, GPU, driver, precision, profiles, plugins and their implementation)
and its layer report: how many layers and how much of the GEMM work run in INT8, FP16 and FP32, whether
attention runs fused, which ibert plugins the engine holds (trt_runtime/backends/tensorrt/layer_report.py).
`--layers` lists every layer from engine_layers.json; `--json` prints the record and report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "inspect"
HELP = "show an export directory's TensorRT engine: precision per layer and of the GEMM work, plugins, profiles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="OUT", help="export directory with model.engine (python -m trt_runtime build)")
    parser.add_argument("--layers", action="store_true", help="also list every layer (name, type, precision, tactic)")
    parser.add_argument("--json", action="store_true", help="print engine.json's record and layer report as JSON")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trt_runtime.backends.tensorrt.engine_info import ENGINE_LAYERS, EngineMismatchError, read_engine_info
    from trt_runtime.backends.tensorrt.layer_report import LayerReportError, format_layer_report, layer_rows
    from trt_runtime.backends.tensorrt.profiles import format_shape

    directory = Path(args.directory)
    try:
        info = read_engine_info(directory)
        layers_file = directory / ENGINE_LAYERS
        rows = layer_rows(layers_file.read_text(encoding="utf-8")) if args.layers and layers_file.exists() else None
    except (EngineMismatchError, LayerReportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        data = info.to_dict()
        if rows is not None:
            data["layer_list"] = [dict(zip(("name", "type", "precision", "tactic"), row)) for row in rows]
        print(json.dumps(data, indent=2))
        return 0
    precision = "FP16" if info.fp16 else "FP32"
    typing = "strongly typed" if info.strongly_typed else "weakly typed"
    print(f"{directory / 'model.engine'}: TensorRT {info.tensorrt_version}, {info.gpu_name} (compute capability "
          f"{info.compute_capability}), CUDA driver {info.cuda_driver_version or 'not recorded'}")
    print(f"precision: {typing}, {precision} outside the INT8 parts" + (" (Q/DQ)" if info.int8 else ", no INT8"))
    for index, profile in enumerate(info.profiles):
        shapes = ", ".join(f"{name} {format_shape(r.min)}..{format_shape(r.max)} (opt {format_shape(r.opt)})"
                           for name, r in profile.items())
        print(f"profile {index}: {shapes}")
    if info.plugins:
        needs = f"; needs a CUDA {info.min_cuda_driver_version}+ driver" if info.min_cuda_driver_version else ""
        print(f"plugins: {', '.join(info.plugins)} ({info.plugin_implementation}{needs})")
    if info.layers is None:
        print("layer report: none (engine.json has none: rebuild with python -m trt_runtime build to get one)")
    else:
        print(format_layer_report(info.layers))
    if args.layers:
        if rows is None:
            print(f"(no {ENGINE_LAYERS}: rebuild the engine to list its layers)")
        else:
            width = max((len(r[1]) for r in rows), default=4)
            for name, kind, layer_precision, tactic in rows:
                print(f"  {kind:<{width}}  {layer_precision:<7}  {name}  [{tactic}]")
    return 0
