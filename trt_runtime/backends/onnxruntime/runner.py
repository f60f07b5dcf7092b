"""`OrtRunner`: an export directory run by ONNX Runtime (the CPU fallback; CUDA with onnxruntime-gpu).

Loading takes two steps, each with an artefact that is checked before use (`trt_runtime.backends.artefacts`):

1. Which graph runs (`graphs.choose_graph`): model.onnx as exported, or on the CPU execution provider the graph
   derived from it (the CPU INT8 graph of a qdq export, the fused float graph of a float BERT-style export),
   prebuilt into the export, cached, or derived in memory.
2. ONNX Runtime's optimized form of that graph. The graph optimizations that do not depend on the machine
   (ONNX Runtime's "extended" level: fusions, constant folding, Q/DQ fusion) are done once and the result is
   cached as `ort-<onnxruntime version>-<sha256[:16] of the graph>-<level>-<provider>.onnx` with its record
   (the graph's sha256 and its own); every load then starts from it and only adds the hardware-specific
   layout optimizations of the "all" level, which ONNX Runtime documents as unsafe to save for another
   machine. A cached file that does not match its record is made again; one that matches but that ONNX
   Runtime cannot load is set aside with an `.unusable` note and the graph itself is used.

The cache directory is the export's `.cache/`, or `cache_dir` / $QBERT_CACHE_DIR (`OrtOptions`); where it
cannot be written, both steps happen in memory at full speed (`choice` says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from trt_runtime.backends.artefacts import (
    CacheLocation,
    Expected,
    cache_location,
    cache_location_for,
    verify,
    write_record,
)
from trt_runtime.backends.base import BackendRunError, BaseRunner, CacheStatus
from trt_runtime.backends.onnxruntime.graphs import (
    ChosenGraph,
    choose_graph,
    first_provider,
    has_external_data,
)
from trt_runtime.backends.onnxruntime.options import OrtOptions, ProviderSpec
from trt_runtime.contract.export_dir import CACHE_DIR, ExportDirError, ExportInfo
from trt_runtime.contract.files import reserved_path, sha256_bytes, write_text_atomic

__all__ = ["CACHE_DIR", "OrtOptions", "OrtRunner", "choose_graph", "choose_providers", "ort_model_path"]

#: the exceptions ONNX Runtime raises from a run (its C++ status codes, registered by pybind11 as plain
#: Exception subclasses: onnxruntime/python/onnxruntime_pybind_exceptions.cc)
ONNXRUNTIME_ERRORS: tuple[type[Exception], ...] = tuple(
    error
    for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
                 "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if isinstance(error := getattr(ort_state, name, None), type) and issubclass(error, Exception)
)
logger = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: providers `OrtRunner` picks by itself, best first; others (TensorRT EP, ...) only when asked for by name.
#: The TensorRT execution provider is left out on purpose: TensorRT is served by trt_runtime's own backend.
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"

_ort_errors = ort.capi.onnxruntime_pybind11_state
#: what InferenceSession raises for a file it cannot read or a graph it cannot build
_ORT_LOAD_ERRORS = (
    _ort_errors.Fail,
    _ort_errors.InvalidProtobuf,
    _ort_errors.InvalidGraph,
    _ort_errors.NoSuchFile,
)


def choose_providers(requested: Sequence[ProviderSpec] | None) -> tuple[list[ProviderSpec], str]:
    """The execution providers to ask ONNX Runtime for, and why; the CPU provider always ends the list."""
    available = ort.get_available_providers()
    if requested:
        names = [p if isinstance(p, str) else p[0] for p in requested]
        missing = [name for name in names if name not in available]
        if missing:
            raise ValueError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"({ort.__version__}: {', '.join(available)}); install the onnxruntime build that has them "
                f"or leave providers unset"
            )
        chosen = list(requested)
        if CPU not in names:
            chosen.append(CPU)  # nodes a provider cannot take fall back to the CPU
        return chosen, f"providers as requested: {', '.join(names)}"
    auto = [name for name in AUTO_PROVIDERS if name in available]
    if auto[0] == CPU:
        return [CPU], "CPUExecutionProvider (no CUDA execution provider in this onnxruntime)"
    return list(auto), f"{auto[0]} (the best provider installed: {', '.join(available)})"


def ort_model_path(
    export_dir: str | os.PathLike,
    info: ExportInfo,
    graph: str = "auto",
    providers: Sequence[ProviderSpec] | None = None,
) -> Path | None:
    """Deprecated (removed in 0.3): `graphs.choose_graph(...).path`, the file of the graph ONNX Runtime runs."""
    warnings.warn(
        "ort_model_path is deprecated; use trt_runtime.backends.onnxruntime.graphs.choose_graph(...).path",
        DeprecationWarning,
        stacklevel=2,
    )
    export_dir = Path(export_dir)
    return choose_graph(export_dir, info, graph, providers, cache_location(export_dir, info, None)).path


class OrtRunner(BaseRunner):
    """Runs an export directory with ONNX Runtime (a `BaseRunner`; options: `OrtOptions`).

    OrtRunner(dir, OrtOptions(...)) or OrtRunner(dir, intra_op_num_threads=2, ...) (the same names).
    After loading: `choice` (which graph and why, what happened to both caches), `providers` (what the session
    uses), `graph_path` (the chosen graph's file; None where it lives in memory), `model_path` (the file the
    session was built from: the cached optimized graph, or the graph itself; None in memory), `session`.
    """

    backend = "onnxruntime"
    options_class = OrtOptions
    options: OrtOptions

    def __init__(
        self,
        export_dir: str | os.PathLike,
        options: OrtOptions | None = None,
        *,
        info: ExportInfo | None = None,
        reason: str = "asked for",
        verify_sha256: bool = True,
        **keywords: Any,
    ):
        self.options = OrtOptions.from_keywords(self.backend, keywords, base=options or OrtOptions())
        self._providers, providers_reason = choose_providers(self.options.providers)
        super().__init__(export_dir, info=info, reason=f"{reason}; {providers_reason}", verify_sha256=verify_sha256)
        self.graph_optimization_level = self.options.graph_optimization_level
        location = cache_location_for(self.export_dir, self.info, self.options.cache, self.options.cache_dir)
        graph = choose_graph(self.export_dir, self.info, self.options.graph, self._providers, location)
        self._set_choice(
            graph=graph.name, graph_reason=graph.reason, cache=graph.cache, cache_detail=graph.cache_detail
        )
        self.graph_path = graph.path
        self.session, self.model_path = self._open_session(graph, location)
        self._check_signature()
        self.providers: list[str] = list(self.session.get_providers())
        logger.debug(  # trt_runtime.load logs the choice at INFO
            "onnxruntime %s: %s with %s (%s)", ort.__version__, self.export_dir, ", ".join(self.providers),
            self.choice.describe(),
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self.output_names, feeds)
        except ONNXRUNTIME_ERRORS as e:  # pybind11 exceptions: neither ValueError nor RuntimeError
            shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())
            raise BackendRunError(
                f"ONNX Runtime could not run {self.export_dir / 'model.onnx'} on inputs that passed the checks "
                f"({shapes}): {' '.join(str(e).split())}. Its graph and export.json disagree (re-export the "
                f"model), or the machine is out of memory (run a smaller batch)"
            ) from e
        return dict(zip(self.output_names, outputs))

    def __repr__(self) -> str:
        return f"OrtRunner({str(self.export_dir)!r}, providers={self.providers}, task={self.info.task!r})"

    # --- sessions and ONNX Runtime's optimized-graph cache --------------------------------------------------

    def _session_options(self, level: str, optimized_path: Path | None = None) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[level]
        options.log_severity_level = self.options.log_severity_level
        if self.options.intra_op_num_threads is not None:
            options.intra_op_num_threads = self.options.intra_op_num_threads
        if self.options.inter_op_num_threads is not None:
            options.inter_op_num_threads = self.options.inter_op_num_threads
        if optimized_path is not None:
            options.optimized_model_filepath = str(optimized_path)
        return options

    def _session(
        self, source: bytes | Path, level: str, what: str, optimized_path: Path | None = None
    ) -> ort.InferenceSession:
        model = source if isinstance(source, bytes) else str(source)
        try:
            return ort.InferenceSession(
                model, sess_options=self._session_options(level, optimized_path), providers=self._providers
            )
        except _ORT_LOAD_ERRORS as e:
            # a damaged or foreign file, not a bug of ours: say which file and what to do
            raise ExportDirError(f"{what} cannot be loaded by ONNX Runtime ({e}); re-export the model") from e

    @property
    def _cached_level(self) -> str:
        """The optimization level of the cached graph: the requested one, capped at portable "extended"."""
        return "extended" if self.graph_optimization_level == "all" else self.graph_optimization_level

    def cache_key(self, graph_sha256: str) -> str:
        """ort-<onnxruntime version>-<sha256[:16] of the graph>-<optimization level>-<provider>."""
        provider = first_provider(self._providers).removesuffix("ExecutionProvider").lower()
        return f"ort-{ort.__version__}-{graph_sha256[:16]}-{self._cached_level}-{provider}"

    def _open_session(
        self, graph: ChosenGraph, location: CacheLocation | None
    ) -> tuple[ort.InferenceSession, Path | None]:
        """A session on the cached optimized form of `graph` where there is (or can be) one, else on `graph`."""
        source: bytes | Path
        if graph.data is not None:
            source = graph.data
        else:
            assert graph.path is not None, "a graph is a file or bytes"
            source = graph.path
        what = str(graph.path) if graph.path is not None else f"{graph.name} graph of {self.export_dir}"
        level = self.graph_optimization_level

        def direct(status: CacheStatus, detail: str) -> tuple[ort.InferenceSession, Path | None]:
            self._set_choice(session_cache=status, session_cache_detail=detail)
            return self._session(source, level, what), graph.path

        if location is None:
            return direct(CacheStatus.NOT_USED, "caching is off (cache=False)")
        if level == "disable":
            return direct(CacheStatus.NOT_USED, "graph optimizations disabled")
        if graph.data is None and graph.path is not None and has_external_data(graph.path):
            return direct(CacheStatus.NOT_USED, "the model keeps its weights in external data files")
        key = self.cache_key(graph.sha256)
        cached, unusable = location.path(f"{key}.onnx"), location.path(f"{key}.unusable")
        expected = Expected(
            "ort-optimized",
            graph.path.name if graph.path is not None else f"the {graph.name} graph",
            graph.sha256,
            {"onnxruntime_version": ort.__version__, "graph_optimization_level": self._cached_level,
             "providers": [first_provider(self._providers)]},
        )
        try:
            location.check()
            if os.path.lexists(unusable):
                return direct(CacheStatus.NOT_USED, f"{unusable} records why the cached graph is not used")
            data, problems = verify(cached, expected)
            status = CacheStatus.REUSED
            if data is None:
                with location.lock():
                    data, problems = verify(cached, expected)  # another writer may have made it meanwhile
                    if data is None:
                        data = self._write_cache(source, what, cached, expected, location)
                        status = CacheStatus.CREATED if problems == [f"{cached} not found"] else CacheStatus.REBUILT
        except OSError as e:  # read-only, a link in the way (UnsafePathError), full disk
            logger.info("ONNX Runtime optimizes %s in memory: the cache in %s cannot be used (%s)", what,
                        location.origin, e)
            return direct(CacheStatus.IN_MEMORY, f"the cache in {location.origin} cannot be used: {e}")
        detail = str(cached) if status is not CacheStatus.REBUILT else f"{cached}: {'; '.join(problems)}"
        if status is CacheStatus.REBUILT:
            logger.warning("made ONNX Runtime's optimized graph again in %s: %s", cached, "; ".join(problems))
        # the cached graph has the portable optimizations already; "all" adds the machine-specific ones
        try:
            session = self._session(data, "all" if level == "all" else "disable", str(cached))
        except Exception as e:  # noted, so that later loads do not try again
            logger.warning("the cached optimized graph %s does not load (%s); using %s", cached, e, what)
            with contextlib.suppress(OSError):
                write_text_atomic(
                    unusable, f"onnxruntime {ort.__version__} cannot load {cached.name}: {e}\n", root=location.root
                )
            return direct(CacheStatus.NOT_USED, f"the cached optimized graph did not load: {e}")
        self._set_choice(session_cache=status, session_cache_detail=detail)
        return session, cached

    def _write_cache(
        self, source: bytes | Path, what: str, cached: Path, expected: Expected, location: CacheLocation
    ) -> bytes:
        """Have ONNX Runtime write the optimized graph (to a fresh, exclusively created temporary, renamed into
        place), then its record; returns the bytes written."""
        with reserved_path(cached, root=location.root) as tmp:
            self._session(source, self._cached_level, what, optimized_path=tmp)
            data = tmp.read_bytes()
        write_record(cached, sha256_bytes(data), expected, root=location.root)
        return data

    def _check_signature(self) -> None:
        """export.json and the ONNX graph must agree on names, or every call would fail later."""
        graph_inputs = [i.name for i in self.session.get_inputs()]
        graph_outputs = [o.name for o in self.session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.info.input_names) or not set(self.info.output_names) <= set(
            graph_outputs
        ):
            where = self.model_path or f"the {self.choice.graph} graph of {self.export_dir}"
            raise ExportDirError(
                f"{where} has inputs {graph_inputs} and outputs {graph_outputs}, but export.json "
                f"describes {self.info.input_names} -> {self.info.output_names}; re-export the model"
            )
