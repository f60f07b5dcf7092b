"""Helpers for scripts/trtexec_bench.sh: trtexec's arguments for an export directory, and its JSON summarised.

    python -m trt_runtime.backends.tensorrt.trtexec args DIR [--build --scratch DIR] [--fp16] [--no-strongly-typed]
                                   [--cuda-graph] [--no-data-transfers] [--warmup MS] [--iterations N]
                                   [--export-prefix PREFIX] [--extra "FLAGS"]
    python -m trt_runtime.backends.tensorrt.trtexec summarize DIR --times T.json [--profile P.json]
                                   [--layers L.json] --out RESULT.json [--label L] [--mode engine|build]
                                   [--command "TRTEXEC ARGS"]

`args` prints trtexec's arguments, one per line, every flag checked against the options trtexec parses
(`data/trtexec_options.json`: the quoted "--option" names of NVIDIA/TensorRT samples/common/
sampleOptions.cpp at v10.0.0, v10.13.0 and v11.1; a flag must exist in 10.0 and 10.13):
 - default (engine mode): run the engine `python -m trt_runtime build` made (`--loadEngine`) at the
   opt shapes of its first profile. Engines with AOT ibert plugins carry their kernels and need no
   plugin library; engines with JIT plugins call Python at every inference and cannot run under trtexec.
 - `--build`: trtexec builds from the graph `python -m trt_runtime build --no-plugins` would parse
   (written to --scratch), with --min/--opt/--maxShapes from export.json; strongly typed (`--stronglyTyped`,
   the FP16 graph with `--fp16`), or weakly typed with `--int8`/`--fp16` (deprecated in TensorRT 10.12,
   gone in 11). trtexec cannot load the Python plugins, so the ibert ops come from their function bodies.
 - `--cuda-graph` (`--useCudaGraph`) and `--no-data-transfers` (`--noDataTransfers`) give the pure
   GPU-compute figure (TensorRT 11 makes both the default).

`summarize` turns trtexec's --exportTimes, --exportProfile and --exportLayerInfo files into one JSON
result: latency and GPU-compute percentiles, throughput in inferences/s and sequences/s at the shapes
used, the slowest layers, the ibert plugins' share and the layer-precision report. The --exportTimes
format is sampleReporting.cpp `exportJSONTrace` (v10.0.0 to v11.1 alike, lines 355-377 at v10.13.0):
a list of {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
"startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"}; --exportProfile is
`exportJSONProfile` (:445-462): [{"count"}, {"name", "timeMs", "averageMs", "medianMs", "percentage"}, ...].
Pure Python; no TensorRT needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from math import prod
from pathlib import Path
from typing import Any

from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError, read_engine_info
from trt_runtime.backends.tensorrt.layer_report import LayerReportError, summarize_layers
from trt_runtime.backends.tensorrt.profiles import (
    BATCH_SIZE,
    NUM_CHOICES,
    SEQUENCE_LENGTH,
    ProfileError,
    format_shapes,
    parse_shapes,
    resolve_profile,
)
from trt_runtime.contract.errors import BAD_INPUT, QbertError
from trt_runtime.contract.export_dir import ENGINE, ExportDirError, ExportInfo, read_export_info
from trt_runtime.contract.files import check_output_outside_inputs, save_onnx_atomic, write_json_atomic

OPTIONS_FILE = Path(__file__).with_name("data") / "trtexec_options.json"
#: trtexec versions whose option lists every flag must be in (the oldest supported and the stubs' version)
REQUIRED_VERSIONS = ("v10.0.0", "v10.13.0")
MODES = ("engine", "build")
IBERT_OPS = ("IntGELU", "IntSoftmax", "IntLayerNorm")


class TrtexecError(QbertError, ValueError):
    """The directory cannot be benchmarked this way, or trtexec's output is not what was expected."""

    code = "trtexec-invalid"


@functools.cache
def trtexec_options() -> dict[str, frozenset[str]]:
    """trtexec version tag -> the option names its sampleOptions.cpp parses."""
    data = json.loads(OPTIONS_FILE.read_text(encoding="utf-8"))
    return {tag: frozenset(entry["options"]) for tag, entry in data["versions"].items()}


def check_flags(args: Iterable[str], versions: Sequence[str] = REQUIRED_VERSIONS) -> list[str]:
    """`args` unchanged if every --flag is one trtexec parses in each of `versions`; else TrtexecError."""
    args = list(args)
    known = trtexec_options()
    for arg in args:
        if not arg.startswith("--"):
            raise TrtexecError(f"{arg!r} is not a trtexec flag (trtexec takes --name or --name=value)")
        name = arg.split("=", 1)[0]
        missing = [tag for tag in versions if name not in known[tag]]
        if missing:
            raise TrtexecError(
                f"trtexec {', '.join(missing)} has no option {name} (samples/common/sampleOptions.cpp); "
                f"see trtexec --help"
            )
    return args


def _export_shapes(info: ExportInfo, build: bool, directory: Path) -> dict[str, tuple[int, ...]]:
    if build:
        profile = resolve_profile(info)
        return {name: r.opt for name, r in profile.items()}
    engine = read_engine_info(directory)
    if engine.plugin_implementation == "jit":
        raise TrtexecError(
            f"{directory / ENGINE} uses JIT Python plugins ({', '.join(engine.plugins)}), which run Python at "
            f"every call and cannot be loaded by trtexec. Rebuild with TensorRT >= 10.9 (AOT plugins), or with "
            f"--no-plugins, or benchmark with --build"
        )
    return {name: shape_range.opt for name, shape_range in engine.profiles[0].items()}


def model_args(
    directory: str | Path,
    build: bool = False,
    fp16: bool = False,
    strongly_typed: bool | None = None,
    scratch: str | Path | None = None,
) -> list[str]:
    """trtexec's model, shape and precision arguments for an export directory (see the module docstring)."""
    directory = Path(directory)
    info = read_export_info(directory, verify_sha256=False)
    if not build:
        return [f"--loadEngine={directory / ENGINE}", f"--shapes={format_shapes(_export_shapes(info, False, directory))}"]
    if scratch is None:
        raise TrtexecError("--build needs --scratch DIR: where to write the graph trtexec builds from")

    from trt_runtime.backends.tensorrt.builder import BuildOptions, parser_input

    options = BuildOptions(fp16=fp16, strongly_typed=strongly_typed, use_plugins=False)
    inputs = parser_input(directory, options)
    precision = inputs.precision
    graph = Path(scratch) / f"{directory.name}-tensorrt.onnx"
    save_onnx_atomic(inputs.prepared.model_with_weights(directory), graph, root=scratch)
    profile = resolve_profile(info)
    args = [
        f"--onnx={graph}",
        f"--minShapes={format_shapes({n: r.min for n, r in profile.items()})}",
        f"--optShapes={format_shapes({n: r.opt for n, r in profile.items()})}",
        f"--maxShapes={format_shapes({n: r.max for n, r in profile.items()})}",
        f"--shapes={format_shapes({n: r.opt for n, r in profile.items()})}",
    ]
    if precision.strongly_typed:
        args.append("--stronglyTyped")
    if precision.int8_flag:
        args.append("--int8")
    if precision.fp16_flag:
        args.append("--fp16")
    return args


def bench_args(
    export_prefix: str | None = None,
    warmup_ms: int = 500,
    iterations: int = 200,
    cuda_graph: bool = False,
    no_data_transfers: bool = False,
    build: bool = False,
) -> list[str]:
    """trtexec's timing and export flags: a fixed number of iterations after a warm-up, the times, the
    per-layer profile in a separate run, and the layer information (detailed where trtexec builds)."""
    args = [f"--warmUp={warmup_ms}", f"--iterations={iterations}", "--duration=0"]
    if cuda_graph:
        args.append("--useCudaGraph")
    if no_data_transfers:
        args.append("--noDataTransfers")
    if export_prefix is not None:
        args += [
            f"--exportTimes={export_prefix}-times.json",
            f"--exportProfile={export_prefix}-profile.json",
            "--separateProfileRun",
            f"--exportLayerInfo={export_prefix}-layers.json",
        ]
    if build:
        args.append("--profilingVerbosity=detailed")
    return args


def trtexec_args(directory: str | Path, build: bool = False, fp16: bool = False, strongly_typed: bool | None = None,
                 scratch: str | Path | None = None, extra: Sequence[str] = (), **bench: Any) -> list[str]:
    """model_args + bench_args + extra, every flag checked against trtexec's option list."""
    return check_flags([*model_args(directory, build, fp16, strongly_typed, scratch),
                        *bench_args(build=build, **bench), *extra])


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        raise TrtexecError("trtexec exported no timings")
    ordered = sorted(values)

    def pick(q: float) -> float:  # nearest rank, as trtexec reports its percentiles
        return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]

    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p90": pick(90),
        "p95": pick(95),
        "p99": pick(99),
        "min": ordered[0],
        "max": ordered[-1],
    }


def summarize_times(times: list[dict[str, Any]], sequences_per_inference: int | None = None) -> dict[str, Any]:
    """Latency / GPU compute statistics (ms) and throughput from trtexec's --exportTimes records.

    Throughput is trtexec's own: inferences over the time from the first record's startH2dMs to the last
    one's endD2hMs (sampleReporting.cpp `printPerformanceReport`, v10.13.0:330, `benchTime`).
    """
    try:
        latency = [float(t["latencyMs"]) for t in times]
        compute = [float(t["computeMs"]) for t in times]
        start = float(times[0]["startH2dMs"]) if times else 0.0
        end = float(times[-1]["endD2hMs"]) if times else 0.0
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise TrtexecError(f"unexpected --exportTimes format ({e!r}); is this trtexec's times JSON?") from None
    wall_ms = end - start
    per_s = len(times) / (wall_ms / 1000) if wall_ms > 0 else None
    return {
        "inferences": len(times),
        "latency_ms": _percentiles(latency),
        "gpu_compute_ms": _percentiles(compute),
        "throughput_inferences_per_s": per_s,
        "throughput_sequences_per_s": per_s * sequences_per_inference if per_s and sequences_per_inference else None,
    }


def summarize_profile(profile: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Per-layer times from trtexec's --exportProfile: the slowest layers and the ibert plugins' share."""
    layers = [entry for entry in profile if isinstance(entry, dict) and "name" in entry]
    if not layers:
        raise TrtexecError("unexpected --exportProfile format: no layers; is this trtexec's profile JSON?")
    try:
        total = sum(float(layer["averageMs"]) for layer in layers)
        slowest = sorted(layers, key=lambda layer: float(layer["averageMs"]), reverse=True)[:top]
        plugins = [layer for layer in layers if any(op in str(layer["name"]) for op in IBERT_OPS)]
        return {
            "layers": len(layers),
            "total_average_ms": total,
            "slowest_layers": [
                {"name": layer["name"], "average_ms": float(layer["averageMs"]),
                 "percentage": float(layer.get("percentage", 0))}
                for layer in slowest
            ],
            "ibert_plugin_average_ms": sum(float(layer["averageMs"]) for layer in plugins),
            "ibert_plugin_layers": len(plugins),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise TrtexecError(f"unexpected --exportProfile format ({e!r}); is this trtexec's profile JSON?") from None


def shapes_used(command: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The --shapes trtexec ran at, from its arguments."""
    for arg in command:
        if arg.startswith("--shapes="):
            return parse_shapes(arg.split("=", 1)[1], "--shapes")
    raise TrtexecError("the trtexec command has no --shapes=...; pass the arguments it ran with (--command)")


def batch_and_sequence(info: ExportInfo, shapes: dict[str, tuple[int, ...]]) -> dict[str, int | None]:
    """batch_size, sequence_length, num_choices at `shapes` (from the named axes of export.json's inputs),
    and how many sequences one inference runs (batch x choices)."""
    axes: dict[str, int] = {}
    for spec in info.inputs:
        if spec.name in shapes:
            for dim, size in zip(spec.shape, shapes[spec.name]):
                if isinstance(dim, str):
                    axes[dim] = size
    batch = axes.get(BATCH_SIZE)
    choices = axes.get(NUM_CHOICES)
    sequences = prod(v for v in (batch, choices) if v is not None) if batch is not None else None
    return {"batch_size": batch, "sequence_length": axes.get(SEQUENCE_LENGTH), "num_choices": choices,
            "sequences_per_inference": sequences}


def _load_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrtexecError(f"{path} not found: trtexec did not write its {what}") from None
    except json.JSONDecodeError as e:
        raise TrtexecError(f"{path} is not valid JSON ({e}): trtexec's {what} is damaged") from None


def summarize(
    directory: str | Path,
    times_path: str | Path,
    profile_path: str | Path | None,
    label: str,
    command: list[str],
    mode: str = "engine",
    layers_path: str | Path | None = None,
) -> dict[str, Any]:
    """One benchmark result: what ran (export, engine, trtexec arguments, shapes) and how fast."""
    if mode not in MODES:
        raise TrtexecError(f"mode {mode!r}; use one of {', '.join(MODES)}")
    directory = Path(directory)
    info = read_export_info(directory, verify_sha256=False)
    shapes = shapes_used(command)
    counts = batch_and_sequence(info, shapes)
    result: dict[str, Any] = {
        "label": label,
        "export": str(directory),
        "task": info.task,
        "quantization": info.quantization,
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "trtexec_args": command,
        "shapes": {name: list(shape) for name, shape in shapes.items()},
        **counts,
        **summarize_times(_load_json(times_path, "timings (--exportTimes)"), counts["sequences_per_inference"]),
    }
    if profile_path is not None and Path(profile_path).exists():
        result["profile"] = summarize_profile(_load_json(profile_path, "layer profile (--exportProfile)"))
    if layers_path is not None and Path(layers_path).exists():
        try:
            result["layers"] = summarize_layers(_load_json(layers_path, "layer information (--exportLayerInfo)"))
        except LayerReportError as e:
            result["layers"] = {"error": str(e)}
    if mode == "build":
        result["engine"] = None  # trtexec built its own engine; any engine.json here describes another one
        return result
    engine = read_engine_info(directory)
    result["engine"] = {
        "tensorrt_version": engine.tensorrt_version,
        "gpu_name": engine.gpu_name,
        "compute_capability": engine.compute_capability,
        "plugins": engine.plugins,
        "plugin_implementation": engine.plugin_implementation,
        "fp16": engine.fp16,
        "int8": engine.int8,
        "strongly_typed": engine.strongly_typed,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trt_runtime.backends.tensorrt.trtexec",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    args_parser = sub.add_parser("args", help="print trtexec's arguments for an export directory, one per line")
    args_parser.add_argument("directory")
    args_parser.add_argument("--build", action="store_true", help="trtexec builds from the graph (no plugins)")
    args_parser.add_argument("--scratch", help="--build: directory for the graph trtexec builds from")
    args_parser.add_argument("--fp16", action="store_true")
    args_parser.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=None)
    args_parser.add_argument("--cuda-graph", action="store_true", help="--useCudaGraph")
    args_parser.add_argument("--no-data-transfers", action="store_true", help="--noDataTransfers")
    args_parser.add_argument("--warmup", type=int, default=500, metavar="MS")
    args_parser.add_argument("--iterations", type=int, default=200)
    args_parser.add_argument("--export-prefix", help="write PREFIX-times.json, -profile.json, -layers.json")
    args_parser.add_argument("--extra", default="", help="more trtexec flags (checked like the others)")
    summary_parser = sub.add_parser("summarize", help="write trtexec's exported JSON as one benchmark result")
    summary_parser.add_argument("directory")
    summary_parser.add_argument("--times", required=True)
    summary_parser.add_argument("--profile")
    summary_parser.add_argument("--layers")
    summary_parser.add_argument("--out", required=True)
    summary_parser.add_argument("--label", default="")
    summary_parser.add_argument("--mode", choices=MODES, default="engine")
    summary_parser.add_argument("--command", default="", help="the trtexec arguments used, to record")
    args = parser.parse_args(argv)
    try:
        if args.command == "args":
            flags = trtexec_args(
                args.directory, args.build, args.fp16, args.strongly_typed, args.scratch, shlex.split(args.extra),
                export_prefix=args.export_prefix, warmup_ms=args.warmup, iterations=args.iterations,
                cuda_graph=args.cuda_graph, no_data_transfers=args.no_data_transfers,
            )
            print("\n".join(flags))
        else:
            check_output_outside_inputs(
                args.out,
                {"DIRECTORY": args.directory, "--times": args.times, "--profile": args.profile, "--layers": args.layers},
                output_label="--out",
            )
            result = summarize(args.directory, args.times, args.profile, args.label or Path(args.directory).name,
                               shlex.split(args.command), args.mode, args.layers)
            write_json_atomic(args.out, result)
            latency = result["latency_ms"]
            per_s = result["throughput_sequences_per_s"] or result["throughput_inferences_per_s"] or 0
            unit = "sequences/s" if result["throughput_sequences_per_s"] else "inferences/s"
            print(f"{args.out}: latency median {latency['median']:.3f} ms, p99 {latency['p99']:.3f} ms, "
                  f"{per_s:.1f} {unit} at batch {result['batch_size']} x sequence {result['sequence_length']}")
    except (TrtexecError, ExportDirError, EngineMismatchError, ProfileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", BAD_INPUT)  # 2: bad arguments or files (docs/errors.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
