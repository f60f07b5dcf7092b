"""`trt_runtime.load(dir, backend)`: pick the backend for an export directory and open a runner on it.

"auto" takes TensorRT only where all three are present: a built engine (model.engine + engine.json,
from `python -m trt_runtime build DIR`), the TensorRT library with cuda-python, and a GPU; otherwise
ONNX Runtime. The choice and its reason are logged and kept on the runner as `choice`.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

from trt_runtime.backends.base import BaseRunner
from trt_runtime.contract.export_dir import ENGINE, ENGINE_JSON, read_export_info

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run here; the message says what is missing and what to do."""


def tensorrt_status() -> tuple[bool, str]:
    """Whether the TensorRT backend can run on this machine (library, cuda-python and a GPU), and why not."""
    try:
        from trt_runtime.backends.tensorrt.runner import tensorrt_available
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


def _runner_class(backend: str) -> type:
    if backend == "tensorrt":
        from trt_runtime.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner
    from trt_runtime.backends.onnxruntime.runner import OrtRunner

    return OrtRunner


def runner_options(backend: str) -> set[str]:
    """The keyword options that the runner class of `backend` accepts."""
    parameters = inspect.signature(_runner_class(backend)).parameters
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    internal = {"export_dir", "info", "reason", "verify_sha256"}
    return {name for name, p in parameters.items() if name not in internal and p.kind in keyword}


def _split_options(backend: str, options: dict[str, Any], explicit: bool) -> dict[str, Any]:
    accepted = runner_options(backend)
    unknown = sorted(set(options) - accepted)
    if unknown and explicit:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for the {backend} backend; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    if unknown:  # backend="auto": options meant for the backend that was not chosen
        logger.info("ignoring option(s) %s, which the %s backend does not take", ", ".join(unknown), backend)
    return {k: v for k, v in options.items() if k in accepted}


def choose_backend(directory: Path, backend: str = "auto") -> tuple[str, str]:
    """(backend, reason) for `directory`; BackendUnavailableError where an explicit choice cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        return backend, "asked for"
    has_engine, engine_reason = engine_status(directory)
    trt_ok, trt_reason = tensorrt_status() if has_engine or backend == "tensorrt" else (False, "not checked")
    if backend == "tensorrt":
        if not trt_ok:
            raise BackendUnavailableError(
                f"backend='tensorrt' cannot run here: {trt_reason}. Use backend='onnxruntime' (or 'auto'), "
                f"or install TensorRT and cuda-python on a machine with an NVIDIA GPU"
            )
        if not has_engine:
            raise BackendUnavailableError(f"backend='tensorrt': {engine_reason}")
        return backend, "asked for"
    if has_engine and trt_ok:
        return "tensorrt", f"{engine_reason} and TensorRT is available ({trt_reason})"
    why = engine_reason if not has_engine else f"TensorRT is not available: {trt_reason}"
    return "onnxruntime", f"ONNX Runtime fallback: {why}"


def load(directory: str | os.PathLike, backend: str = "auto", **options: Any) -> BaseRunner:
    """A runner for the export in `directory` on `backend` ("auto" | "onnxruntime" | "tensorrt").

    options go to the runner (OrtRunner: providers, intra_op_num_threads, graph_optimization_level,
    cache, ...). With backend="auto", options that the chosen backend does not take are ignored (logged).
    The runner's `choice` says which backend and why, which graph and what happened to its cache.
    """
    directory = Path(directory)
    verify = bool(options.pop("verify_sha256", True))
    info = read_export_info(directory, verify_sha256=verify)  # once; the runner gets it
    chosen, reason = choose_backend(directory, backend)
    kwargs = _split_options(chosen, options, explicit=backend != "auto")
    runner: BaseRunner = _runner_class(chosen)(directory, info=info, reason=reason, **kwargs)
    logger.info("trt_runtime.load(%s): %s backend (%s)", directory, chosen, runner.choice.describe())
    return runner
