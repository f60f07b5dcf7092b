"""Build a TensorRT engine from an export directory: model.onnx + export.json -> model.engine + engine.json.

    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine
    build_engine("out_dir", BuildOptions(fp16=False, opt_shapes="input_ids:8x128"))

or `python -m trt_runtime build out_dir [--fp16] [--min/--opt/--max SHAPES] [--no-plugins] ...`.

Steps: read and check export.json; resolve the optimization profile (`trt_runtime.backends.tensorrt.profiles`);
prepare the ONNX for the parser (`trt_runtime.backends.tensorrt.onnx_prep`: ibert function bodies out, plugin
attributes in); register the ibert plugins when the graph uses them; parse; configure precision,
workspace, profile, timing cache and a progress monitor; build; write model.engine and engine.json
atomically. Only `build_engine` needs TensorRT; the decisions before it (`resolve_precision`,
`PhaseBars`, the profile and ONNX steps) are plain functions that the CPU tests cover.

Precision. Quantized exports carry explicit Q/DQ nodes, which fix the INT8 parts of the network.
 - Strongly typed (the default where TensorRT supports it, 10.0+): the network's types come from the
   ONNX (float32 outside Q/DQ pairs, INT8 inside). No precision builder flags are set or allowed, so
   `--fp16` cannot be combined with `--strongly-typed`.
 - Weakly typed (`--no-strongly-typed`, implied by `--fp16`): TensorRT chooses precisions; a Q/DQ
   network additionally needs BuilderFlag.INT8 so that TensorRT may pick INT8 kernels, and `--fp16`
   sets BuilderFlag.FP16 so the float parts may run in half precision (faster, not bit-exact).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
from trt_runtime.backends.tensorrt.onnx_prep import PreparedOnnx, prepare_for_tensorrt
from trt_runtime.backends.tensorrt.profiles import Profile, format_shapes, resolve_profile
from trt_runtime.contract.export_dir import ENGINE, MODEL_ONNX, read_export_info
from trt_runtime.contract.files import sha256_bytes, sha256_file, write_bytes_atomic

if TYPE_CHECKING:
    import tensorrt as trt


class BuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message carries TensorRT's own errors."""


@dataclass
class BuildOptions:
    fp16: bool = False
    min_shapes: str | None = None  # trtexec format: "input_ids:1x1,attention_mask:1x1"
    opt_shapes: str | None = None
    max_shapes: str | None = None
    use_plugins: bool = True  # False: --no-plugins, TensorRT builds the ibert ops from their ONNX bodies
    workspace_mb: int | None = None  # None: TensorRT's default (the GPU's memory)
    timing_cache: str | None = None  # path; loaded if present, merged and saved after the build
    strongly_typed: bool | None = None  # None: strongly typed unless --fp16
    builder_optimization_level: int | None = None  # 0..5, TensorRT's default 3
    verbose: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Precision:
    """The network-creation and builder flags a build uses."""

    strongly_typed: bool
    fp16: bool  # BuilderFlag.FP16
    int8: bool  # BuilderFlag.INT8


def resolve_precision(
    fp16: bool, strongly_typed: bool | None, has_qdq: bool, supports_strongly_typed: bool = True
) -> Precision:
    """Decide strong typing and precision flags (see the module docstring); raise ValueError on a conflict."""
    if strongly_typed is None:
        strongly_typed = supports_strongly_typed and not fp16
    if strongly_typed and not supports_strongly_typed:
        raise ValueError("this TensorRT cannot build strongly-typed networks (it needs 10.0+); use --no-strongly-typed")
    if strongly_typed and fp16:
        raise ValueError(
            "--fp16 cannot be combined with --strongly-typed: a strongly-typed network takes its types from the "
            "ONNX and TensorRT refuses precision flags for it. Drop --strongly-typed (--fp16 implies weak typing) "
            "or drop --fp16"
        )
    return Precision(strongly_typed=strongly_typed, fp16=fp16 and not strongly_typed, int8=has_qdq and not strongly_typed)


class PhaseBars:
    """One tqdm bar per builder phase, nested by parent phase; what the TensorRT progress monitor drives.

    TensorRT calls the monitor from several threads, hence the lock. Without a terminal (or with
    enabled=False) nothing is drawn.
    """

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.bars: dict[str, Any] = {}
        self.depth: dict[str, int] = {}
        self.finished: list[str] = []
        self._lock = threading.Lock()

    def start(self, phase: str, parent: str | None, num_steps: int) -> None:
        from tqdm import tqdm

        with self._lock:
            depth = self.depth.get(parent, -1) + 1 if parent else 0
            self.depth[phase] = depth
            self.bars[phase] = tqdm(
                total=num_steps,
                desc=("  " * depth) + phase,
                position=depth,
                leave=depth == 0,
                file=self.stream,
                disable=not self.enabled,
                unit="step",
            )

    def step(self, phase: str, step: int) -> bool:
        with self._lock:
            bar = self.bars.get(phase)
            if bar is not None and step + 1 > bar.n:  # steps may arrive out of order from several threads
                bar.update(step + 1 - bar.n)
        return True  # False would ask TensorRT to cancel the build

    def finish(self, phase: str) -> None:
        with self._lock:
            bar = self.bars.pop(phase, None)
            if bar is not None:
                bar.close()
            self.depth.pop(phase, None)
            self.finished.append(phase)

    def close(self) -> None:
        with self._lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()


def _progress_monitor(bars: PhaseBars) -> trt.IProgressMonitor:
    """A trt.IProgressMonitor forwarding to `bars` (the class needs tensorrt, so it is made here)."""
    import tensorrt as trt

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            bars.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return bars.step(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            bars.finish(phase_name)

    return ProgressMonitor()


class _ErrorLog:
    """Errors TensorRT logged during a build, for BuildError's message."""

    def __init__(self) -> None:
        self.errors: list[str] = []


def _capturing_logger(verbose: bool, log: _ErrorLog) -> trt.ILogger:
    """A trt.ILogger that prints warnings (every message with verbose) and keeps errors in `log`."""
    import tensorrt as trt

    errors = {int(trt.ILogger.Severity.ERROR), int(trt.ILogger.Severity.INTERNAL_ERROR)}
    shown = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if int(severity) in errors:
                log.errors.append(msg)
            if int(severity) <= shown:
                from tqdm import tqdm

                tqdm.write(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return CapturingLogger()


def parser_errors(parser: trt.OnnxParser) -> str:
    """TensorRT's parser errors, one per line, each with the ONNX node it is about."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()} {error.node_name()!r}" if error.node() >= 0 else "the model"
        lines.append(f"  {where}: {error.desc()} [{error.code()}]")
    return "\n".join(lines)


def _network_io(network: trt.INetworkDefinition) -> tuple[list[str], list[str]]:
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return inputs, outputs


def _load_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> trt.ITimingCache:
    data = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge this build's timings into the file (which another build may have updated meanwhile)."""
    cache = config.get_timing_cache()
    if path.exists():
        on_disk = config.create_timing_cache(path.read_bytes())
        cache.combine(on_disk, ignore_mismatch=True)
    write_bytes_atomic(path, bytes(cache.serialize()))


@dataclass
class BuildResult:
    info: EngineInfo
    engine_path: Path
    profile: Profile
    prepared: PreparedOnnx = field(repr=False)


def build_engine(directory: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build model.engine + engine.json in `directory` (an export directory). Needs TensorRT and a GPU."""
    from trt_runtime.backends.tensorrt.libs import gpu_properties, require_tensorrt

    options = options or BuildOptions()
    directory = Path(directory)
    export = read_export_info(directory)  # also checks model.onnx against its recorded sha256
    profile = resolve_profile(export, options.min_shapes, options.opt_shapes, options.max_shapes)
    onnx_path = directory / MODEL_ONNX
    onnx_sha256 = export.onnx_sha256 or sha256_file(onnx_path)
    # weights stay on disk: the parser reads external data itself, relative to `path`
    prepared = prepare_for_tensorrt(
        onnx.load(str(onnx_path), load_external_data=False), options.use_plugins, base_dir=directory
    )

    require_tensorrt()
    import tensorrt as trt

    supports_strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    try:
        precision = resolve_precision(options.fp16, options.strongly_typed, prepared.has_qdq, supports_strongly_typed)
    except ValueError as e:
        raise BuildError(str(e)) from None
    plugin_implementation = None
    if prepared.plugins:
        from trt_runtime.backends.tensorrt.plugins import register_plugins

        register_plugins()
        # AOT (kernels embedded in the engine) from TensorRT 10.12; before that only JIT exists
        plugin_implementation = "aot" if hasattr(trt, "QuickPluginCreationRequest") else "jit"
    gpu_name, compute_capability = gpu_properties()

    error_log = _ErrorLog()
    logger = _capturing_logger(options.verbose, error_log)
    builder = trt.Builder(logger)
    flags = 0
    if precision.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if plugin_implementation == "aot":
        # both implementations exist; without a preference the plugin creator refuses to choose
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    print(f"parsing {onnx_path} ({', '.join(prepared.plugins) or 'no plugins'})", file=sys.stderr)
    if not parser.parse(prepared.model.SerializeToString(), path=str(onnx_path)):
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{parser_errors(parser)}")

    inputs, outputs = _network_io(network)
    missing = [name for name in inputs if name not in profile]
    if missing:
        raise BuildError(f"the network has inputs {missing} that export.json does not list; re-export the model")

    config = builder.create_builder_config()
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if precision.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    trt_profile = builder.create_optimization_profile()
    for name in inputs:
        shape_range = profile[name]
        min_dims, opt_dims, max_dims = (trt.Dims(list(s)) for s in (shape_range.min, shape_range.opt, shape_range.max))
        trt_profile.set_shape(name, min_dims, opt_dims, max_dims)
    config.add_optimization_profile(trt_profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    _load_timing_cache(config, cache_path)
    bars = PhaseBars(enabled=options.progress)
    monitor = _progress_monitor(bars)  # a local keeps it alive for the build: TensorRT does not own it
    config.progress_monitor = monitor

    print(
        f"building: {'strongly typed' if precision.strongly_typed else 'weakly typed'}"
        f"{', FP16' if precision.fp16 else ''}{', INT8' if precision.int8 else ''}; profile "
        f"min {format_shapes({n: r.min for n, r in profile.items()})} "
        f"opt {format_shapes({n: r.opt for n, r in profile.items()})} "
        f"max {format_shapes({n: r.max for n, r in profile.items()})}",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        bars.close()
    if serialized is None:
        details = "\n".join(f"  {line}" for line in error_log.errors) or "  (TensorRT logged no error)"
        raise BuildError(f"TensorRT could not build the engine:\n{details}")
    seconds = time.monotonic() - started
    engine_bytes = bytes(serialized)
    if cache_path is not None:
        _save_timing_cache(config, cache_path)

    info = EngineInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        onnx_sha256=onnx_sha256,
        engine_sha256=sha256_bytes(engine_bytes),
        profiles=[profile],
        plugins=prepared.plugins,
        plugin_implementation=plugin_implementation,
        fp16=precision.fp16,
        int8=precision.int8 or prepared.has_qdq,
        strongly_typed=precision.strongly_typed,
        builder={
            "use_plugins": options.use_plugins,
            "workspace_mb": options.workspace_mb,
            "timing_cache": str(cache_path) if cache_path else None,
            "builder_optimization_level": options.builder_optimization_level,
            "int8_builder_flag": precision.int8,
            "onnx_parser_version": _parser_version(trt),
        },
        input_names=inputs,
        output_names=outputs,
        build_seconds=round(seconds, 2),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_engine(directory, engine_bytes, info)
    print(f"wrote {directory / ENGINE} ({len(engine_bytes) / 2**20:.1f} MiB) in {seconds:.0f} s", file=sys.stderr)
    return BuildResult(info, directory / ENGINE, profile, prepared)


def _parser_version(trt: Any) -> str | None:
    get_version = getattr(trt, "get_nv_onnx_parser_version", None)
    return str(get_version()) if get_version is not None else None
