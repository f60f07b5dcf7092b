"""Lazy access to TensorRT and the CUDA runtime, with the errors a user can act on.

Nothing here imports `tensorrt` or `cuda` at module load. `require_tensorrt()` / `require_cudart()`
import them when a TensorRT code path is actually taken and raise `TensorRTUnavailable` saying what
to install (or to use ONNX Runtime) otherwise. Note that `import tensorrt` alone proves nothing:
the `tensorrt-stubs` typing package leaves an empty `tensorrt` namespace package behind.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from trt_runtime.contract.errors import QbertError

MIN_TENSORRT = (10, 0)
INSTALL_HINT = (
    "install tensorrt>=10 (and cuda-python) on a machine with an NVIDIA GPU, or use backend='onnxruntime'"
)


class TensorRTUnavailable(QbertError, RuntimeError):
    """TensorRT, cuda-python or a CUDA GPU is missing; the message says which and what to do."""

    code = "tensorrt-unavailable"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def require_tensorrt() -> ModuleType:
    """Import TensorRT (>= 10) or raise TensorRTUnavailable with the fix."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed ({e}): {INSTALL_HINT}") from None
    except OSError as e:  # the wheel is there but libnvinfer or the CUDA driver libraries are not
        raise TensorRTUnavailable(f"TensorRT is installed but its libraries cannot load ({e}): {INSTALL_HINT}") from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        raise TensorRTUnavailable(
            f"TensorRT is not installed (only type stubs or a download placeholder are): {INSTALL_HINT}"
        )
    if _version_tuple(trt.__version__) < MIN_TENSORRT:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: this project needs TensorRT >= 10")
    return trt


def tensorrt_version() -> str:
    return str(require_tensorrt().__version__)


def require_cudart() -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable(f"cuda-python is not installed: pip install cuda-python; or {INSTALL_HINT}")


def cuda_call(result: Any) -> Any:
    """Unpack a cuda-python call's (error, *values) result, raising on an error code."""
    if isinstance(result, tuple):
        error, values = result[0], result[1:]
    else:
        error, values = result, ()
    if int(error) != 0:
        cudart = require_cudart()
        name = cudart.cudaGetErrorName(error)[1]
        text = cudart.cudaGetErrorString(error)[1]
        raise RuntimeError(f"CUDA error {int(error)} {_decode(name)}: {_decode(text)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_properties(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of `device`, via cuda-python."""
    cudart = require_cudart()
    count = cuda_call(cudart.cudaGetDeviceCount())
    if not count:
        raise TensorRTUnavailable(f"no CUDA GPU found: {INSTALL_HINT}")
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    return _decode(props.name).rstrip("\x00"), f"{props.major}.{props.minor}"


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason): TensorRT importable, cuda-python importable and a CUDA GPU present.

    Never raises; `trt_runtime.load(backend="auto")` uses it to choose, and shows the reason.
    """
    try:
        version = tensorrt_version()
        name, capability = gpu_properties()
    except TensorRTUnavailable as e:
        return False, str(e)
    except Exception as e:  # a broken driver raises from deep inside cuda-python
        return False, f"the CUDA runtime does not work here ({e}): {INSTALL_HINT}"
    return True, f"TensorRT {version} on {name} (compute capability {capability})"


def cuda_driver_version() -> tuple[int, int]:
    """(major, minor) of the CUDA version the installed driver supports (cudaDriverGetVersion: 12040 -> (12, 4))."""
    version = int(cuda_call(require_cudart().cudaDriverGetVersion()))
    return version // 1000, (version % 1000) // 10


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


class _LogSink:
    """Where the process-wide TensorRT logger sends messages while one build or load runs."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.errors: list[str] = []


_LOGGER: Any = None
_SINKS: list[_LogSink] = []
_LOGGER_LOCK = threading.Lock()


def tensorrt_logger() -> Any:
    """The one trt.ILogger of this process (TensorRT keeps a single global logger and warns when another one
    is passed in; its Python object must outlive every builder, runtime and engine made with it). It prints
    warnings and errors, everything while a `log_capture(verbose=True)` is active, and hands errors to the
    active captures."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            trt = require_tensorrt()
            errors = {int(trt.ILogger.Severity.ERROR), int(trt.ILogger.Severity.INTERNAL_ERROR)}
            warning = int(trt.ILogger.Severity.WARNING)
            verbose = int(trt.ILogger.Severity.VERBOSE)

            class ProcessLogger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    level = int(severity)
                    with _LOGGER_LOCK:
                        sinks = list(_SINKS)
                    for sink in sinks:
                        if level in errors:
                            sink.errors.append(msg)
                    shown = verbose if any(s.verbose for s in sinks) else warning
                    if level <= shown:
                        from tqdm import tqdm

                        tqdm.write(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

            _LOGGER = ProcessLogger()
        return _LOGGER


@contextlib.contextmanager
def log_capture(verbose: bool = False) -> Iterator[list[str]]:
    """Collect the errors TensorRT logs while the block runs (for BuildError's message); verbose shows all."""
    sink = _LogSink(verbose)
    with _LOGGER_LOCK:
        _SINKS.append(sink)
    try:
        yield sink.errors
    finally:
        with _LOGGER_LOCK:
            _SINKS.remove(sink)
