"""`trt_runtime.load(dir, backend, **options)`: pick the backend for an export directory and open a runner on it.

"auto" takes TensorRT where all three are present: a built engine (model.engine + engine.json, from `python -m
trt_runtime build DIR`), the TensorRT library with cuda-python, and a GPU. Otherwise, and where the engine
turns out to be unusable here (stale, built for another GPU or TensorRT, JIT plugins that cannot load), the
CPU backends of `CPU_BACKENDS` for the export's mode, the first one installed that opens, ending with ONNX
Runtime, which is always there. The choice and its reason are logged and kept on the runner as `choice`.

export.json is read (and checked) once per load, here, and handed to the runner.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_runtime.backends.base import BackendUnavailableError, BaseRunner, RunnerOptions
from trt_runtime.contract.export_dir import ENGINE, ENGINE_JSON, ExportInfo, read_export_info

__all__ = ["BACKENDS", "CPU_BACKENDS", "BackendUnavailableError", "load", "open_runner", "runner_options"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """How to reach one backend without importing it: "module:attribute" paths, imported when used."""

    runner: str  # its BaseRunner subclass
    options: str  # its RunnerOptions dataclass (a light module: no backend library imported)
    requires: tuple[str, ...] = ()  # top-level packages it needs installed
    #: errors its runner raises when it cannot serve this export here, on which "auto" falls back
    fallback_errors: tuple[str, ...] = ()
    title: str = ""  # its name in messages ("OpenVINO")
    install_hint: str = ""  # how to install what `requires` names

    def missing(self) -> str:
        """What is not installed, and how to install it (for messages)."""
        packages = ", ".join(name for name in self.requires if importlib.util.find_spec(name) is None)
        return f"{packages} is not installed" + (f" ({self.install_hint})" if self.install_hint else "")

    def installed(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in self.requires)

    def options_class(self) -> type[RunnerOptions]:
        cls: type[RunnerOptions] = _attribute(self.options)
        return cls

    def runner_class(self) -> type[BaseRunner]:
        cls: type[BaseRunner] = _attribute(self.runner)
        return cls


def _attribute(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


#: the backends, by name; a new backend is one line here (and its row in CPU_BACKENDS)
BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend(
        "trt_runtime.backends.onnxruntime.runner:OrtRunner",
        "trt_runtime.backends.onnxruntime.options:OrtOptions",
        ("onnxruntime",),
    ),
    "tensorrt": Backend(
        "trt_runtime.backends.tensorrt.runner:TensorRTRunner",
        "trt_runtime.backends.tensorrt.options:TensorRTOptions",
        fallback_errors=(
            "trt_runtime.backends.tensorrt.engine_info:EngineMismatchError",
            "trt_runtime.backends.tensorrt.plugins:PluginsUnavailable",
            "trt_runtime.backends.tensorrt.libs:TensorRTUnavailable",
        ),
    ),
    "openvino": Backend(
        "trt_runtime.backends.openvino.runner:OpenVinoRunner",
        "trt_runtime.backends.openvino.options:OpenVinoOptions",
        ("openvino",),
        # an export OpenVINO's ONNX frontend cannot convert (the ibert ops): "auto" runs it on ONNX Runtime
        fallback_errors=("trt_runtime.backends.openvino.runner:OpenVinoUnavailable",),
        title="OpenVINO",
        install_hint="pip install qbert-deploy[openvino]",
    ),
}
#: what backend="auto" runs on the CPU, per export mode, fastest first, chosen by measurement side by side
#: (`make bench`; docs/benchmarks.md, "Which CPU backend backend="auto" picks", says on which CPUs), never
#: guessed at load time; "onnxruntime" ends every row: it is always installed and runs every export
CPU_BACKENDS: dict[str, tuple[str, ...]] = {
    "none": ("openvino", "onnxruntime"),  # OpenVINO f32 on model.onnx
    "qdq": ("openvino", "onnxruntime"),  # OpenVINO on the Q/DQ model.onnx; ONNX Runtime: the CPU INT8 graph
    "integer": ("onnxruntime",),  # OpenVINO 2026.4 cannot convert the ibert ops
}
AUTO = "auto"


def backend_names() -> tuple[str, ...]:
    return (AUTO, *BACKENDS)


def runner_options(backend: str) -> set[str]:
    """The keyword options that the runner of `backend` takes (without importing the backend)."""
    return set(BACKENDS[backend].options_class().names())


def all_runner_options() -> set[str]:
    """Every keyword option some backend takes."""
    return {name for backend in BACKENDS for name in runner_options(backend)}


def tensorrt_status() -> tuple[bool, str]:
    """Whether the TensorRT backend can run on this machine (library, cuda-python and a GPU), and why not."""
    try:
        from trt_runtime.backends.tensorrt.libs import tensorrt_available
    except ImportError as e:
        return False, f"the TensorRT backend cannot be imported ({e})"
    return tensorrt_available()


def engine_status(directory: Path) -> tuple[bool, str]:
    missing = [name for name in (ENGINE, ENGINE_JSON) if not (directory / name).exists()]
    if missing:
        return (
            False,
            f"no TensorRT engine in {directory} ({', '.join(missing)} missing; build one with "
            f"`python -m trt_runtime build {directory}`)",
        )
    return True, f"engine {directory / ENGINE}"


def _check_backend(backend: str) -> None:
    if backend not in backend_names():
        raise ValueError(f"backend={backend!r}; choose one of {', '.join(backend_names())}")


def candidates(directory: Path, info: ExportInfo, backend: str = AUTO) -> list[tuple[str, str]]:
    """The backends to try, in order, each with why: one for an explicit backend (BackendUnavailableError
    where it cannot run here), the preference list for "auto"."""
    _check_backend(backend)
    if backend == "tensorrt":
        has_engine, engine_reason = engine_status(directory)
        trt_ok, trt_reason = tensorrt_status()
        if not trt_ok:
            raise BackendUnavailableError(
                f"backend='tensorrt' cannot run here: {trt_reason}. Use backend='onnxruntime' (or 'auto'), "
                f"or install TensorRT and cuda-python on a machine with an NVIDIA GPU"
            )
        if not has_engine:
            raise BackendUnavailableError(f"backend='tensorrt': {engine_reason}")
        return [(backend, "asked for")]
    if backend != AUTO:
        if not BACKENDS[backend].installed():
            raise BackendUnavailableError(
                f"backend={backend!r} cannot run here: {BACKENDS[backend].missing()}; install it, or use "
                f"backend='auto'"
            )
        return [(backend, "asked for")]
    found: list[tuple[str, str]] = []
    has_engine, engine_reason = engine_status(directory)
    if has_engine:
        trt_ok, trt_reason = tensorrt_status()
        if trt_ok:
            found.append(("tensorrt", f"{engine_reason} and TensorRT is available ({trt_reason})"))
        why_not_tensorrt = f"TensorRT is not available: {trt_reason}" if not trt_ok else ""
    else:
        why_not_tensorrt = engine_reason
    installed = cpu_backends(info.quantization)
    skipped = [
        f"{BACKENDS[name].title or name}, measured faster for {info.quantization!r} exports, is not usable: "
        f"{BACKENDS[name].missing()}"
        for name in CPU_BACKENDS.get(info.quantization, ())
        if name not in installed
    ]
    for name in installed:
        if name == "onnxruntime":
            reasons = [f"ONNX Runtime fallback: {why_not_tensorrt}" if why_not_tensorrt else "ONNX Runtime fallback"]
        else:
            reasons = [
                f"the fastest CPU backend installed for {info.quantization!r} exports (loader.CPU_BACKENDS, "
                f"measured in docs/benchmarks.md)",
                *([why_not_tensorrt] if why_not_tensorrt else []),
            ]
        found.append((name, "; ".join([*reasons, *skipped])))
    if not any(name == "onnxruntime" for name, _ in found):  # the fallback that is always there
        found.append(("onnxruntime", f"ONNX Runtime fallback: {why_not_tensorrt or 'no other backend'}"))
    return found


def cpu_backends(quantization: str) -> list[str]:
    """The CPU backends "auto" tries for an export of this mode here, in order: CPU_BACKENDS' row, installed."""
    return [name for name in CPU_BACKENDS.get(quantization, ("onnxruntime",)) if BACKENDS[name].installed()]


def choose_backend(directory: Path, backend: str = AUTO, info: ExportInfo | None = None) -> tuple[str, str]:
    """(backend, reason) that `load` tries first for `directory`."""
    info = info if info is not None else read_export_info(directory, verify_sha256=False)
    return candidates(Path(directory), info, backend)[0]


def _fallback_errors(backend: str) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [BackendUnavailableError]
    for path in BACKENDS[backend].fallback_errors:
        try:
            errors.append(_attribute(path))
        except ImportError:
            continue
    return tuple(errors)


def _split_options(backend: str, options: dict[str, Any], explicit: bool) -> dict[str, Any]:
    accepted = runner_options(backend)
    unknown = sorted(set(options) - accepted)
    if unknown and explicit:
        BACKENDS[backend].options_class().check_names(backend, options)  # the TypeError naming its options
    if unknown:  # backend="auto": options meant for a backend that was not chosen
        logger.info("ignoring option(s) %s, which the %s backend does not take", ", ".join(unknown), backend)
    return {k: v for k, v in options.items() if k in accepted}


def open_runner(directory: Path, info: ExportInfo, backend: str = AUTO, **options: Any) -> BaseRunner:
    """A runner on the export `directory` whose export.json `info` the caller read (and checked)."""
    _check_backend(backend)
    explicit = backend != AUTO
    if not explicit:
        everywhere = all_runner_options()
        unknown = sorted(set(options) - everywhere)
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)}: no backend takes them; the options are "
                f"{', '.join(sorted(everywhere))}"
            )
    fell_back: list[str] = []
    tried = candidates(directory, info, backend)
    if not explicit and options:
        # options only some backends take say which one the caller means (graph="cpu-int8" is ONNX Runtime's)
        fitting = [(name, f"{reason}; it takes the options given ({', '.join(sorted(options))})")
                   for name, reason in tried if set(options) <= runner_options(name)]  # fmt: skip
        tried = fitting or tried
    for position, (name, reason) in enumerate(tried):
        kwargs = _split_options(name, options, explicit)
        if fell_back:
            reason = f"{reason}; {'; '.join(fell_back)}"
        cls = BACKENDS[name].runner_class()
        last = position == len(tried) - 1
        try:
            runner = cls(directory, info=info, reason=reason, **kwargs)
        except _fallback_errors(name) as e:
            if explicit or last:
                raise
            logger.warning("cannot run %s with %s (%s); trying %s", directory, name, e, tried[position + 1][0])
            fell_back.append(f"{name} cannot run it here: {e}")
            continue
        logger.info("trt_runtime.load(%s): %s backend (%s)", directory, name, runner.choice.describe())
        return runner
    raise AssertionError("unreachable: the last candidate either returns or raises")


def load(
    directory: str | os.PathLike, backend: str = AUTO, *, verify_sha256: bool = True, **options: Any
) -> BaseRunner:
    """A runner for the export in `directory` on `backend` ("auto" | one of BACKENDS).

    options go to the runner (onnxruntime: `OrtOptions`, e.g. intra_op_num_threads, graph, cache_dir;
    tensorrt: `TensorRTOptions`, device). With an explicit backend an option it does not take is a TypeError
    naming those it takes; with backend="auto", options of a backend that was not chosen are ignored (logged),
    and options no backend takes are a TypeError. The runner's `choice` says which backend and why, which
    graph, and what happened to its caches. verify_sha256=False skips checking model.onnx against export.json.
    """
    directory = Path(directory)
    _check_backend(backend)
    info = read_export_info(directory, verify_sha256=verify_sha256)  # once; the runner gets it
    return open_runner(directory, info, backend, **options)
