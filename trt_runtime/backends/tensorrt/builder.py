"""Build a TensorRT engine from an export directory: model.onnx + export.json -> model.engine + engine.json.

    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine, check_export
    build_engine("out_dir", BuildOptions(fp16=True, opt_shapes="input_ids:8x128"))
    print(check_export("out_dir", BuildOptions(use_plugins=False)).format())   # no TensorRT needed

or `python -m trt_runtime build out_dir [--fp16] [--min/--opt/--max SHAPES] [--sequence-buckets ...]
[--no-plugins] [--check] ...`.

Steps: read and check export.json; resolve the optimization profiles (`profiles.py`: one, or one per
sequence-length bucket); prepare the graph for the parser (`parser_input`: `onnx_prep.py` takes the ibert
function bodies out and plugin attributes in, `fp16.py` makes the float parts FP16); only then TensorRT:
register the ibert plugins when the graph uses them; parse; configure the profiles, workspace, timing
cache, DETAILED profiling verbosity and a progress monitor; build; inspect the built engine
(`layer_report.py`); write model.engine, engine_layers.json and engine.json atomically; merge the
timing cache last, so a cache problem never costs the engine. `--check` stops after `parser_input` and
checks that graph against onnx-tensorrt's operator matrix (`parser_support.py`).

Precision. Quantized exports carry explicit Q/DQ nodes, which fix the INT8 parts of the network.
 - Strongly typed (the default, TensorRT 10's way; the only way in TensorRT 11): the network's types
   are the ONNX's. Without --fp16 that is FP32 outside the Q/DQ pairs; with --fp16 the graph handed to
   the parser has FP16 float parts (fp16.py), so INT8 GEMMs run with FP16 everywhere else. No
   precision builder flags.
 - Weakly typed (`--no-strongly-typed`): TensorRT chooses precisions; a Q/DQ network needs
   BuilderFlag.INT8 and `--fp16` sets BuilderFlag.FP16. Both flags are "Deprecated in TensorRT 10.12.
   Superseded by strong typing" (NvInfer.h v10.13:8849-8853) and trtexec 11 has no --fp16.

Plugins. On TensorRT 10.9+ the ibert nodes get `aot=1` (the strict request NVIDIA's sample writes;
the parser maps it to kSTRICT_AOT, which overrides network flags) and the network also gets
PREFER_AOT_PYTHON_PLUGINS; `plugin_implementation="jit"` asks for the Python (JIT) implementation with
`aot=0`. On 10.6-10.8 only JIT exists. engine.json records the implementation the build used, checked
against the calls TensorRT made (registration.CALLS) and the plugin layers the inspector reports.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
from trt_runtime.backends.tensorrt.fp16 import Float16Summary, to_float16
from trt_runtime.backends.tensorrt.onnx_prep import PreparedOnnx, prepare_for_tensorrt
from trt_runtime.backends.tensorrt.parser_support import SupportReport, check_parser_support
from trt_runtime.backends.tensorrt.profiles import (
    Profile,
    bucket_profiles,
    format_shapes,
    parse_buckets,
    resolve_profile,
)
from trt_runtime.contract.errors import VALIDATION_FAILED, QbertError
from trt_runtime.contract.export_dir import ENGINE, MODEL_ONNX, ExportInfo, read_export_info
from trt_runtime.contract.files import exclusive_lock, sha256_bytes, sha256_file, write_bytes_atomic
from trt_runtime.contract.int8_share import int8_share

if TYPE_CHECKING:
    import tensorrt as trt

PLUGIN_IMPLEMENTATIONS = ("auto", "aot", "jit")


class BuildError(QbertError, RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message carries TensorRT's own errors."""

    code = "engine-build-failed"
    exit_code = VALIDATION_FAILED


class PrecisionError(QbertError, ValueError):
    """Precision options that do not go together; the message says which to drop."""

    code = "precision-invalid"


@dataclass
class BuildOptions:
    fp16: bool = False  # float parts in FP16 (strongly typed: an FP16 graph; weakly typed: BuilderFlag.FP16)
    min_shapes: str | None = None  # trtexec format: "input_ids:1x1,attention_mask:1x1"
    opt_shapes: str | None = None
    max_shapes: str | None = None
    #: sequence lengths ("64,128,256,512") that each get their own optimization profile; None: one profile
    sequence_buckets: str | None = None
    use_plugins: bool = True  # False: --no-plugins, TensorRT builds the ibert ops from their ONNX bodies
    plugin_implementation: str = "auto"  # "auto": AOT where TensorRT has it (10.9+); "aot"; "jit"
    workspace_mb: int | None = None  # None: TensorRT's default (the GPU's memory)
    timing_cache: str | None = None  # path; loaded if present, merged and saved after the build
    strongly_typed: bool | None = None  # None: strongly typed (where TensorRT supports it, 10.0+)
    builder_optimization_level: int | None = None  # 0..5, TensorRT's default 3
    verbose: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Precision:
    """How a build gets its precisions."""

    strongly_typed: bool
    float16: bool  # the float parts run in FP16
    fp16_flag: bool  # weak typing: BuilderFlag.FP16
    int8_flag: bool  # weak typing with Q/DQ: BuilderFlag.INT8

    @property
    def float16_graph(self) -> bool:
        """FP16 through the graph (fp16.py), the strongly typed way."""
        return self.float16 and self.strongly_typed

    def describe(self) -> str:
        if self.strongly_typed:
            return f"strongly typed, {'FP16' if self.float16 else 'FP32'} outside the INT8 (Q/DQ) parts"
        flags = [name for name, on in (("FP16", self.fp16_flag), ("INT8", self.int8_flag)) if on]
        return f"weakly typed{', BuilderFlag ' + '+'.join(flags) if flags else ''} (deprecated since TensorRT 10.12)"


def resolve_precision(
    fp16: bool, strongly_typed: bool | None, has_qdq: bool, supports_strongly_typed: bool = True
) -> Precision:
    """Decide strong typing and precision flags (see the module docstring); PrecisionError on a conflict."""
    if strongly_typed is None:
        strongly_typed = supports_strongly_typed
    if strongly_typed and not supports_strongly_typed:
        raise PrecisionError("this TensorRT cannot build strongly-typed networks (it needs 10.0+); use --no-strongly-typed")
    return Precision(
        strongly_typed=strongly_typed,
        float16=fp16,
        fp16_flag=fp16 and not strongly_typed,
        int8_flag=has_qdq and not strongly_typed,
    )


@dataclass
class ParserInput:
    """The graph the builder hands TensorRT's parser, and what was decided on the way."""

    export: ExportInfo
    onnx_path: Path
    prepared: PreparedOnnx
    precision: Precision
    profiles: list[Profile]
    float16: Float16Summary | None = None

    @property
    def form(self) -> str:
        kind = "plugins" if self.prepared.plugins else ("no-plugins" if self.prepared.ibert_ops else "standard ops")
        return f"{kind}, {'FP16' if self.precision.float16_graph else 'FP32'}"

    def int8_share_line(self) -> str:
        """The INT8 share of the graph handed to the parser, in the export log's words (the same rule:
        trt_runtime.contract.int8_share), so a build says what should run in INT8 before TensorRT is needed;
        for an integer export that graph is its TensorRT form, whose split 16-bit GEMMs are two INT8 GEMMs."""
        graph = "the TensorRT form of the integer export" if self.export.quantization == "integer" else "the graph"
        return f"{int8_share(self.prepared.model).line()} [{graph} handed to TensorRT, by its Q/DQ rule]"


def resolve_profiles(export: ExportInfo, options: BuildOptions) -> list[Profile]:
    profile = resolve_profile(export, options.min_shapes, options.opt_shapes, options.max_shapes)
    buckets = parse_buckets(options.sequence_buckets)
    return bucket_profiles(profile, export, buckets) if buckets else [profile]


def parser_input(
    directory: str | Path, options: BuildOptions, supports_strongly_typed: bool = True, aot: bool | None = True
) -> ParserInput:
    """The exact graph `build_engine` parses, made without TensorRT (so `--check` and trtexec's build mode
    see the same graph). aot: the plugins' `aot` attribute (see onnx_prep.strip_plugin_functions)."""
    directory = Path(directory)
    export = read_export_info(directory)  # also checks model.onnx against its recorded sha256
    profiles = resolve_profiles(export, options)
    onnx_path = directory / MODEL_ONNX
    # weights stay on disk: the parser reads external data itself, relative to `path`
    prepared = prepare_for_tensorrt(
        onnx.load(str(onnx_path), load_external_data=False), options.use_plugins, base_dir=directory, aot=aot
    )
    precision = resolve_precision(options.fp16, options.strongly_typed, prepared.has_qdq, supports_strongly_typed)
    summary = None
    if precision.float16_graph:
        prepared.model, summary = to_float16(prepared.model, base_dir=directory)
    return ParserInput(export, onnx_path, prepared, precision, profiles, summary)


def check_export(directory: str | Path, options: BuildOptions | None = None) -> SupportReport:
    """Check the graph `build_engine` would hand TensorRT's parser against onnx-tensorrt's operator matrix."""
    inputs = parser_input(directory, options or BuildOptions())
    return check_parser_support(inputs.prepared.model, inputs.form)


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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def attach_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> trt.ITimingCache:
    """The file's cache on `config`, or an empty one where the file does not fit this GPU or TensorRT.

    `set_timing_cache(cache, ignore_mismatch=False)` returns False for a cache made on another device or
    version; Polygraphy then falls back to an empty cache (tools/Polygraphy/polygraphy/backend/trt/
    config.py:418-436, v10.13.0), and so does this.
    """
    data = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        _warn(f"the timing cache {path} was made for another GPU or TensorRT version; starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge this build's timings into the file, holding `<file>.lock` while reading, merging and writing
    (another build may update the file meanwhile; Polygraphy's loader.py:598-626 v10.13.0 locks the same
    way). Called after the engine is written: a failure here is reported and the engine kept."""
    cache = config.get_timing_cache()
    if cache is None:
        _warn(f"TensorRT returned no timing cache after the build; {path} is left as it was")
        return
    with exclusive_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            on_disk = config.create_timing_cache(path.read_bytes())
            if not cache.combine(on_disk, ignore_mismatch=True):
                _warn(f"{path} holds timings of another GPU or TensorRT version; it is replaced by this build's")
        write_bytes_atomic(path, bytes(cache.serialize()))


@dataclass
class BuildResult:
    info: EngineInfo
    engine_path: Path
    profiles: list[Profile]
    prepared: PreparedOnnx = field(repr=False)
    layers_json: str | None = field(default=None, repr=False)

    @property
    def profile(self) -> Profile:
        return self.profiles[0]


def plugin_implementation(requested: str, tensorrt_has_aot: bool) -> str:
    """"aot" or "jit" for an `--plugin-implementation` request (see the module docstring)."""
    if requested not in PLUGIN_IMPLEMENTATIONS:
        raise BuildError(f"plugin implementation {requested!r}; use one of {', '.join(PLUGIN_IMPLEMENTATIONS)}")
    if requested == "aot" and not tensorrt_has_aot:
        raise BuildError("this TensorRT has no AOT Python plugins (they need 10.9+); build with the JIT ones or --no-plugins")
    return "jit" if requested == "jit" or not tensorrt_has_aot else "aot"


def observed_implementation(calls: dict[tuple[str, str], int], plugins: list[str], requested: str) -> str:
    """The implementation TensorRT used, from the calls it made into registration.py during the build: the AOT
    implementation is called while building (IPluginV3QuickAOTBuild.get_launch_params calls `aot_impl` and
    fills the kernel map get_kernel reads: tensorrt_bindings/plugin/_plugin_class.py:366-440 of the
    tensorrt_cu12_bindings 10.13.0.35 wheel), the JIT one only when the plugin runs (which a build may skip,
    so no JIT call is no evidence against JIT). A request TensorRT did not follow is a BuildError."""
    aot = {plugin for (plugin, kind), count in calls.items() if kind == "aot" and count}
    if requested == "aot" and set(plugins) - aot:
        raise BuildError(
            f"TensorRT was asked for the AOT plugins (aot=1) but did not call their AOT implementation for "
            f"{', '.join(sorted(set(plugins) - aot))}; the engine would need Python at run time. Rebuild with "
            f"--plugin-implementation jit, or report the TensorRT version"
        )
    if requested == "jit" and aot:
        raise BuildError(f"TensorRT was asked for JIT plugins (aot=0) but compiled AOT kernels for {', '.join(sorted(aot))}")
    return requested


def _inspect(trt: Any, engine_bytes: bytes, runtime: Any, profile: Profile) -> str | None:
    """The inspector's JSON of the built engine, at the first profile's opt shapes (so shapes are concrete)."""
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        return None
    context = engine.create_execution_context()
    if context is not None:
        for name, shape_range in profile.items():
            context.set_input_shape(name, shape_range.opt)
    inspector = engine.create_engine_inspector()
    if context is not None:
        inspector.execution_context = context
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(directory: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Build model.engine + engine.json in `directory` (an export directory). Needs TensorRT and a GPU."""
    from trt_runtime.backends.tensorrt.libs import (
        cuda_driver_version,
        format_version,
        gpu_properties,
        log_capture,
        require_tensorrt,
        tensorrt_logger,
    )

    options = options or BuildOptions()
    directory = Path(directory)
    try:  # everything that needs no TensorRT first: mistakes in the export or the options show at once
        inputs = parser_input(directory, options, aot=None)
    except PrecisionError as e:
        raise BuildError(str(e)) from None
    print(inputs.int8_share_line(), file=sys.stderr)
    prepared = inputs.prepared
    onnx_sha256 = inputs.export.onnx_sha256 or sha256_file(inputs.onnx_path)

    trt = require_tensorrt()
    supports_strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    try:
        precision = resolve_precision(options.fp16, options.strongly_typed, prepared.has_qdq, supports_strongly_typed)
    except PrecisionError as e:
        raise BuildError(str(e)) from None
    implementation = None
    calls_before: dict[tuple[str, str], int] = {}
    if prepared.plugins:
        from trt_runtime.backends.tensorrt.plugins import register_plugins, registration

        register_plugins()
        has_aot = hasattr(trt, "QuickPluginCreationRequest")  # tensorrt.plugin's own test (_export.py)
        implementation = plugin_implementation(options.plugin_implementation, has_aot)
        prepared.set_plugin_implementation((implementation == "aot") if has_aot else None)
        calls_before = dict(registration.CALLS)
    gpu_name, compute_capability = gpu_properties()
    driver = cuda_driver_version()

    logger = tensorrt_logger()
    with ExitStack() as stack:
        errors = stack.enter_context(log_capture(options.verbose))
        builder = trt.Builder(logger)
        flags = 0
        if precision.strongly_typed:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if implementation == "aot":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        print(f"parsing {inputs.onnx_path} ({inputs.form}: {', '.join(prepared.plugins) or 'no plugins'})",
              file=sys.stderr)
        if not parser.parse(prepared.model.SerializeToString(), path=str(inputs.onnx_path)):
            raise BuildError(f"TensorRT's ONNX parser rejected {inputs.onnx_path}:\n{parser_errors(parser)}")

        network_inputs, network_outputs = _network_io(network)
        missing = [name for name in network_inputs if name not in inputs.profiles[0]]
        if missing:
            raise BuildError(f"the network has inputs {missing} that export.json does not list; re-export the model")

        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the layer report
        if options.workspace_mb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        if precision.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if precision.int8_flag:
            config.set_flag(trt.BuilderFlag.INT8)
        if options.builder_optimization_level is not None:
            config.builder_optimization_level = options.builder_optimization_level
        for profile in inputs.profiles:
            trt_profile = builder.create_optimization_profile()
            for name in network_inputs:
                shape_range = profile[name]
                trt_profile.set_shape(name, *(trt.Dims(list(s)) for s in (shape_range.min, shape_range.opt, shape_range.max)))
            config.add_optimization_profile(trt_profile)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        if cache_path is not None:
            attach_timing_cache(config, cache_path)
        bars = PhaseBars(enabled=options.progress)
        monitor = _progress_monitor(bars)  # a local keeps it alive for the build: TensorRT does not own it
        config.progress_monitor = monitor

        print(f"building: {precision.describe()}; {len(inputs.profiles)} profile(s): " + "; ".join(
            f"min {format_shapes({n: r.min for n, r in p.items()})} opt {format_shapes({n: r.opt for n, r in p.items()})} "
            f"max {format_shapes({n: r.max for n, r in p.items()})}" for p in inputs.profiles), file=sys.stderr)
        started = time.monotonic()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            bars.close()
        if serialized is None:
            details = "\n".join(f"  {line}" for line in errors) or "  (TensorRT logged no error)"
            raise BuildError(f"TensorRT could not build the engine:\n{details}")
        seconds = time.monotonic() - started
        engine_bytes = bytes(serialized)

        ptx = min_driver = None
        if implementation is not None:
            from trt_runtime.backends.tensorrt.plugins import aot, registration

            calls = {key: count - calls_before.get(key, 0) for key, count in registration.CALLS.items()}
            implementation = observed_implementation(calls, prepared.plugins, implementation)
            if implementation == "aot":
                ptx = registration.ptx_version()
                min_driver = format_version(aot.min_cuda_driver_for_ptx(ptx))
        layers_json = layers = None
        try:
            layers_json = _inspect(trt, engine_bytes, trt.Runtime(logger), inputs.profiles[0])
        except Exception as e:  # the report is for people; an engine that built is kept without it
            _warn(f"could not read the engine's layer information ({e}); engine.json will have no layer report")
        if layers_json is not None:
            from trt_runtime.backends.tensorrt.layer_report import format_layer_report, summarize_layers

            layers = summarize_layers(layers_json, prepared.plugin_nodes())
            # what TensorRT made of it, per layer (the engine inspector; `python -m trt_runtime inspect DIR`)
            print("engine layers, as TensorRT reports them:\n  " + format_layer_report(layers).replace("\n", "\n  "),
                  file=sys.stderr)
            found = sum(layers["ibert_plugins"].values())
            if prepared.plugins and found != len(prepared.plugin_nodes()):
                _warn(f"the engine has {found} ibert plugin layers for {len(prepared.plugin_nodes())} ibert nodes")

    info = EngineInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        onnx_sha256=onnx_sha256,
        engine_sha256=sha256_bytes(engine_bytes),
        profiles=inputs.profiles,
        plugins=prepared.plugins,
        plugin_implementation=implementation,
        fp16=precision.float16,
        int8=prepared.has_qdq,
        strongly_typed=precision.strongly_typed,
        builder={
            "use_plugins": options.use_plugins,
            "form": inputs.form,
            "workspace_mb": options.workspace_mb,
            "timing_cache": str(cache_path) if cache_path else None,
            "builder_optimization_level": options.builder_optimization_level,
            "fp16_builder_flag": precision.fp16_flag,
            "int8_builder_flag": precision.int8_flag,
            "fp16_graph": inputs.float16.to_dict() if inputs.float16 else None,
            "sequence_buckets": options.sequence_buckets,
            "profiling_verbosity": "detailed",
            "onnx_parser_version": _parser_version(trt),
        },
        input_names=network_inputs,
        output_names=network_outputs,
        build_seconds=round(seconds, 2),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        cuda_driver_version=format_version(driver),
        plugin_ptx_version=ptx,
        min_cuda_driver_version=min_driver,
        layers=layers,
    )
    write_engine(directory, engine_bytes, info, layers_json)
    print(f"wrote {directory / ENGINE} ({len(engine_bytes) / 2**20:.1f} MiB) in {seconds:.0f} s", file=sys.stderr)
    if cache_path is not None:
        try:
            save_timing_cache(config, cache_path)
        except OSError as e:
            _warn(f"could not save the timing cache {cache_path} ({e}); the engine is written")
    return BuildResult(info, directory / ENGINE, inputs.profiles, prepared, layers_json)


def _parser_version(trt: Any) -> str | None:
    get_version = getattr(trt, "get_nv_onnx_parser_version", None)
    return str(get_version()) if get_version is not None else None
