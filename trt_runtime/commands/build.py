"""`python -m trt_runtime build OUT ...`: build model.engine + engine.json for an export directory (or, with
`--target cpu-int8 | cpu-float | cpu-integer`, the CPU graph ONNX Runtime runs, with its record)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "build"
HELP = "build a TensorRT engine (model.engine + engine.json) from an export directory's model.onnx"

_SHAPES_HELP = (
    "input shapes in trtexec's format, e.g. input_ids:1x128,attention_mask:1x128; a shape given for one input "
    "also sets the axes it shares with the others. Default from export.json: {default}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="OUT", help="export directory (made by python -m exporter)")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="FP16 outside the INT8 (Q/DQ) GEMMs: the graph's float parts in FP16, built strongly typed "
        "(with --no-strongly-typed: BuilderFlag.FP16, deprecated since TensorRT 10.12); not for integer exports",
    )
    parser.add_argument("--min", dest="min_shapes", metavar="SHAPES", help=_SHAPES_HELP.format(default="1 everywhere"))
    parser.add_argument(
        "--opt", dest="opt_shapes", metavar="SHAPES", help=_SHAPES_HELP.format(default="batch 8 (4 for multiple choice), sequence 128 (capped), 4 choices")
    )
    parser.add_argument(
        "--max", dest="max_shapes", metavar="SHAPES", help=_SHAPES_HELP.format(default="batch 32 (16 for multiple choice), max_sequence_length, 8 choices")
    )
    parser.add_argument(
        "--sequence-buckets",
        metavar="LENGTHS",
        help="one optimization profile per sequence-length bucket, e.g. 64,128,256,512 (as demo/BERT builds); "
        "the runner picks the smallest that fits each batch",
    )
    parser.add_argument(
        "--no-plugins",
        dest="use_plugins",
        action="store_false",
        help="keep the ibert ops' ONNX function bodies (TensorRT builds them from standard layers) instead of plugins",
    )
    parser.add_argument(
        "--plugin-implementation",
        choices=("auto", "aot", "jit"),
        default="auto",
        help="ibert plugins: AOT kernels in the engine (auto: where TensorRT has them, 10.9+) or JIT (Python at run time)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="no build: check the graph TensorRT's ONNX parser would get against onnx-tensorrt's operator matrix "
        "(needs no TensorRT), naming each offending node; exit 1 if any",
    )
    parser.add_argument("--workspace", dest="workspace_mb", type=int, metavar="MB", help="builder workspace limit in MiB")
    parser.add_argument(
        "--timing-cache", metavar="PATH", help="TensorRT timing cache file: read if present, merged and saved after the build"
    )
    parser.add_argument(
        "--strongly-typed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="strongly-typed network (types from the ONNX; the default, and the only kind TensorRT 11 builds)",
    )
    parser.add_argument(
        "--optimization-level", dest="builder_optimization_level", type=int, choices=range(6), metavar="0-5",
        help="TensorRT builder optimization level (default 3)",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorRT's verbose log")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_target_argument(parser)


def main(args: argparse.Namespace) -> int:
    if args.target != ENGINE_TARGET:
        return build_cpu_graph(args.directory, args.target)
    from trt_runtime.backends.tensorrt.builder import (
        BuildError,
        BuildOptions,
        PrecisionError,
        build_engine,
        parser_input,
    )
    from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError
    from trt_runtime.backends.tensorrt.libs import TensorRTUnavailable
    from trt_runtime.backends.tensorrt.onnx_prep import OnnxForTensorRTError
    from trt_runtime.backends.tensorrt.parser_support import check_parser_support
    from trt_runtime.backends.tensorrt.plugins import PluginsUnavailable
    from trt_runtime.backends.tensorrt.profiles import ProfileError
    from trt_runtime.contract.export_dir import ENGINE, ENGINE_JSON, EXPORT_JSON, MODEL_ONNX, ExportDirError
    from trt_runtime.contract.files import check_output_outside_inputs

    if args.timing_cache:  # read and rewritten by the build: never one of the files the build reads or writes
        try:
            check_output_outside_inputs(
                args.timing_cache,
                {name: Path(args.directory) / name for name in (MODEL_ONNX, EXPORT_JSON, ENGINE, ENGINE_JSON)},
                output_label="--timing-cache",
            )
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    options = BuildOptions(
        fp16=args.fp16,
        min_shapes=args.min_shapes,
        opt_shapes=args.opt_shapes,
        max_shapes=args.max_shapes,
        sequence_buckets=args.sequence_buckets,
        use_plugins=args.use_plugins,
        plugin_implementation=args.plugin_implementation,
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        strongly_typed=args.strongly_typed,
        builder_optimization_level=args.builder_optimization_level,
        verbose=args.verbose,
        progress=args.progress,
    )
    try:
        if args.check:
            inputs = parser_input(args.directory, options)
            report = check_parser_support(inputs.prepared.model, inputs.form)
            print(report.format())
            print(inputs.int8_share_line())
            return 0 if report.ok else 1
        build_engine(args.directory, options)
    except (
        BuildError,
        EngineMismatchError,
        ExportDirError,
        OnnxForTensorRTError,
        PluginsUnavailable,
        PrecisionError,
        ProfileError,
        TensorRTUnavailable,
        OSError,  # an engine that cannot be written (read-only export, full disk): OutputError names it
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 1 only for a failed build (BuildError), 2 otherwise (docs/errors.md)
    return 0


# --- --target cpu-int8 | cpu-float | cpu-integer: the CPU graphs of the ONNX Runtime backend ---------------------------------

ENGINE_TARGET = "engine"
CPU_TARGETS = ("cpu-int8", "cpu-float", "cpu-integer")


def add_target_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        choices=(ENGINE_TARGET, *CPU_TARGETS),
        default=ENGINE_TARGET,
        help="what to build: engine (TensorRT, the default), cpu-int8 (the CPU INT8 graph of a qdq export), "
        "cpu-float (the fused float graph of a float export) or cpu-integer (an integer export's GEMMs on u8 x s8 "
        "kernels, where the CPU has VNNI or AMX), each with a JSON record the runtime checks "
        "before use; the TensorRT options do not apply to the CPU targets",
    )


def build_cpu_graph(directory: str, target: str) -> int:
    """Write the CPU graph `target` and its record into the export; exit 2 with the reason where it cannot."""
    from trt_runtime.backends.onnxruntime.graphs import DERIVATION_ERRORS, build
    from trt_runtime.contract.export_dir import ExportDirError, read_export_info

    try:
        path = build(directory, read_export_info(directory), target)
    except (ExportDirError, *DERIVATION_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: building the {target} graph needs the onnx and sympy packages ({e}): pip install onnx sympy",
              file=sys.stderr)
        return 2
    except OSError as e:  # read-only export, full disk, a link in the way (UnsafePathError)
        print(f"error: cannot write the {target} graph into {directory}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and its record {path.with_suffix('.json').name}")
    return 0
