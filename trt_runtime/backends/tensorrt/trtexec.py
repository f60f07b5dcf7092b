"""Helpers for scripts/trtexec_bench.sh: trtexec's arguments for an export directory, and its JSON summarised.

    python -m trt_runtime.backends.tensorrt.trtexec args DIR [--build] [--fp16] [--strongly-typed|--no-strongly-typed]
    python -m trt_runtime.backends.tensorrt.trtexec summarize DIR --times T.json --profile P.json --out RESULT.json [--label L]
                                   [--command "TRTEXEC ARGS"]

`args` prints trtexec's shape and precision arguments, one per line:
 - default: run the engine that `python -m trt_runtime build` made (`--loadEngine`), at the opt shapes
   of its profile. Engines with AOT ibert plugins carry their kernels and need no plugin library;
   engines with JIT plugins (TensorRT < 10.12) need Python at every call and cannot run under trtexec.
 - `--build`: let trtexec build from model.onnx itself (`--onnx` with --min/--opt/--maxShapes from
   export.json and the precision flags of `trt_runtime.backends.tensorrt.builder.resolve_precision`). trtexec cannot load
   the Python plugins, so the ibert ops are built from their ONNX function bodies (like --no-plugins).

`summarize` turns trtexec's --exportTimes and --exportProfile files into one JSON result: latency and
GPU-compute percentiles, throughput, and the slowest layers. Pure Python; no TensorRT needed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError, read_engine_info
from trt_runtime.backends.tensorrt.profiles import ProfileError, format_shapes, resolve_profile
from trt_runtime.contract.export_dir import ENGINE, MODEL_ONNX, ExportDirError, read_export_info
from trt_runtime.contract.files import write_json_atomic


class TrtexecError(ValueError):
    """The directory cannot be benchmarked this way, or trtexec's output is not what was expected."""


def trtexec_args(
    directory: str | Path, build: bool = False, fp16: bool = False, strongly_typed: bool | None = None
) -> list[str]:
    """trtexec's model, shape and precision arguments for an export directory (see the module docstring)."""
    directory = Path(directory)
    info = read_export_info(directory, verify_sha256=False)
    if not build:
        engine = read_engine_info(directory)
        if engine.plugin_implementation == "jit":
            raise TrtexecError(
                f"{directory / ENGINE} uses JIT Python plugins ({', '.join(engine.plugins)}), which run Python at "
                f"every call and cannot be loaded by trtexec. Rebuild with TensorRT >= 10.12 (AOT plugins), or with "
                f"--no-plugins, or benchmark with --build"
            )
        opt = {name: shape_range.opt for name, shape_range in engine.profiles[0].items()}
        return [f"--loadEngine={directory / ENGINE}", f"--shapes={format_shapes(opt)}"]

    import onnx

    from trt_runtime.backends.tensorrt.builder import resolve_precision
    from trt_runtime.backends.tensorrt.onnx_prep import has_qdq

    profile = resolve_profile(info)
    model = onnx.load(str(directory / MODEL_ONNX), load_external_data=False)
    precision = resolve_precision(fp16, strongly_typed, has_qdq(model))
    args = [
        f"--onnx={directory / MODEL_ONNX}",
        f"--minShapes={format_shapes({n: r.min for n, r in profile.items()})}",
        f"--optShapes={format_shapes({n: r.opt for n, r in profile.items()})}",
        f"--maxShapes={format_shapes({n: r.max for n, r in profile.items()})}",
        f"--shapes={format_shapes({n: r.opt for n, r in profile.items()})}",
    ]
    if precision.strongly_typed:
        args.append("--stronglyTyped")
    if precision.int8:
        args.append("--int8")
    if precision.fp16:
        args.append("--fp16")
    return args


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


def summarize_times(times: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency / GPU compute statistics (ms) and throughput from trtexec's --exportTimes records."""
    try:
        latency = [float(t["latencyMs"]) for t in times]
        compute = [float(t["computeMs"]) for t in times]
        start = min(float(t["startH2DMs"]) for t in times)
        end = max(float(t["endD2HMs"]) for t in times)
    except (KeyError, TypeError, ValueError) as e:
        raise TrtexecError(f"unexpected --exportTimes format ({e!r}); is this trtexec's times JSON?") from None
    wall_ms = end - start
    return {
        "inferences": len(times),
        "latency_ms": _percentiles(latency),
        "gpu_compute_ms": _percentiles(compute),
        "throughput_inferences_per_s": len(times) / (wall_ms / 1000) if wall_ms > 0 else None,
    }


def summarize_profile(profile: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """Per-layer times from trtexec's --exportProfile: the slowest layers and the ibert plugins' share."""
    layers = [entry for entry in profile if "name" in entry]
    if not layers:
        raise TrtexecError("unexpected --exportProfile format: no layers; is this trtexec's profile JSON?")
    total = sum(float(layer["averageMs"]) for layer in layers)
    slowest = sorted(layers, key=lambda layer: float(layer["averageMs"]), reverse=True)[:top]
    plugins = [layer for layer in layers if any(op in str(layer["name"]) for op in ("IntGELU", "IntSoftmax", "IntLayerNorm"))]
    return {
        "layers": len(layers),
        "total_average_ms": total,
        "slowest_layers": [
            {"name": layer["name"], "average_ms": float(layer["averageMs"]), "percentage": float(layer.get("percentage", 0))}
            for layer in slowest
        ],
        "ibert_plugin_average_ms": sum(float(layer["averageMs"]) for layer in plugins),
        "ibert_plugin_layers": len(plugins),
    }


def _load_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrtexecError(f"{path} not found: trtexec did not write its {what}") from None
    except json.JSONDecodeError as e:
        raise TrtexecError(f"{path} is not valid JSON ({e}): trtexec's {what} is damaged") from None


def summarize(
    directory: str | Path, times_path: str | Path, profile_path: str | Path | None, label: str, command: list[str]
) -> dict[str, Any]:
    """One benchmark result: what ran (export, engine, trtexec arguments) and how fast."""
    directory = Path(directory)
    info = read_export_info(directory, verify_sha256=False)
    result: dict[str, Any] = {
        "label": label,
        "export": str(directory),
        "task": info.task,
        "quantization": info.quantization,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "trtexec_args": command,
        **summarize_times(_load_json(times_path, "timings (--exportTimes)")),
    }
    if profile_path is not None and Path(profile_path).exists():
        result["profile"] = summarize_profile(_load_json(profile_path, "layer profile (--exportProfile)"))
    try:
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
    except EngineMismatchError:
        result["engine"] = None  # --build: trtexec built its own
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trt_runtime.backends.tensorrt.trtexec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    args_parser = sub.add_parser("args", help="print trtexec's arguments for an export directory, one per line")
    args_parser.add_argument("directory")
    args_parser.add_argument("--build", action="store_true", help="trtexec builds from model.onnx (no plugins)")
    args_parser.add_argument("--fp16", action="store_true")
    args_parser.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=None)
    summary_parser = sub.add_parser("summarize", help="write trtexec's exported JSON as one benchmark result")
    summary_parser.add_argument("directory")
    summary_parser.add_argument("--times", required=True)
    summary_parser.add_argument("--profile")
    summary_parser.add_argument("--out", required=True)
    summary_parser.add_argument("--label", default="")
    summary_parser.add_argument("--command", default="", help="the trtexec arguments used, to record")
    args = parser.parse_args(argv)
    try:
        if args.command == "args":
            print("\n".join(trtexec_args(args.directory, args.build, args.fp16, args.strongly_typed)))
        else:
            result = summarize(args.directory, args.times, args.profile, args.label or Path(args.directory).name,
                               shlex.split(args.command))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out, result)
            latency = result["latency_ms"]
            print(f"{args.out}: latency median {latency['median']:.3f} ms, p99 {latency['p99']:.3f} ms, "
                  f"{result['throughput_inferences_per_s'] or 0:.1f} inferences/s")
    except (TrtexecError, ExportDirError, EngineMismatchError, ProfileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
