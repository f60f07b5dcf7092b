"""`OrtRunner`: an export directory run by ONNX Runtime (the CPU fallback; CUDA with onnxruntime-gpu).

Loading: `ort_model_path` says which ONNX file of the export ONNX Runtime runs. For a `qdq` export on
the CPU execution provider that is not model.onnx (laid out for TensorRT, slower than float on a CPU)
but the CPU INT8 graph derived from it by `trt_runtime.backends.onnxruntime.cpu_int8` (fused attention and LayerNorm, u8 x
s8 GEMMs), cached in `<dir>/.cache/cpu-int8-*.onnx`; `graph="exported"` runs model.onnx as exported.
The graph optimizations that do not depend on
the machine (ONNX Runtime's "extended" level: fusions, constant folding, Q/DQ fusion) are done once and
the result is cached next to the export, in `<dir>/.cache/ort-<onnxruntime version>-<sha256[:16] of the
ONNX>-<level>-<provider>.onnx` (written to a temporary sibling, then renamed). Every load then starts
from that file and only adds the hardware-specific layout optimizations of the "all" level, which ONNX
Runtime documents as unsafe to save for another machine. A new onnxruntime, a changed ONNX file or
another provider gives another key. A cached file that ONNX Runtime cannot load is set aside with an
`.unusable` note and the original file is used, so a bad cache never stops a runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trt_runtime.backends.base import BaseRunner
from trt_runtime.contract.export_dir import (
    MODEL_ONNX,
    ExportDirError,
    ExportInfo,
    read_export_info,
)
from trt_runtime.contract.files import reserved_path, sha256_file

logger = logging.getLogger(__name__)

CACHE_DIR = ".cache"
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
#: which graph of an export the runner loads: see `ort_model_path`
GRAPHS = ("auto", "exported", "cpu-int8")

ProviderSpec = str | tuple[str, dict[str, Any]]

_ort_errors = ort.capi.onnxruntime_pybind11_state
#: what InferenceSession raises for a file it cannot read or a graph it cannot build
_ORT_LOAD_ERRORS = (
    _ort_errors.Fail,
    _ort_errors.InvalidProtobuf,
    _ort_errors.InvalidGraph,
    _ort_errors.NoSuchFile,
)


def ort_model_path(
    export_dir: Path, info: ExportInfo, graph: str = "auto", providers: Sequence[ProviderSpec] | None = None
) -> Path:
    """The ONNX file that the ONNX Runtime backend loads for this export (see `choose_graph`)."""
    return choose_graph(export_dir, info, graph, providers)[0]


def choose_graph(
    export_dir: Path, info: ExportInfo, graph: str = "auto", providers: Sequence[ProviderSpec] | None = None
) -> tuple[Path, str]:
    """(ONNX file, why) that ONNX Runtime runs for this export; the one place that decides it.

    graph="auto": for a qdq export whose first provider is the CPU (`providers`; None: the CPU), the
    CPU INT8 graph derived from model.onnx (`trt_runtime.backends.onnxruntime.cpu_int8`, made once and cached in <dir>/.cache;
    where it cannot be made or written, model.onnx with a warning); otherwise model.onnx as exported
    (float, `integer` with its `ibert` function bodies, and Q/DQ on other providers).
    graph="exported": model.onnx. graph="cpu-int8": the derived graph, an error for a non-qdq export.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph={graph!r}; choose one of {', '.join(GRAPHS)}")
    exported = export_dir / MODEL_ONNX
    first = (providers[0] if isinstance(providers[0], str) else providers[0][0]) if providers else CPU
    if graph == "exported":
        return exported, "the exported graph (asked for)"
    if graph == "auto" and (info.quantization != "qdq" or first != CPU):
        return exported, "the exported graph"
    try:
        from trt_runtime.backends.onnxruntime import cpu_int8  # needs onnx

        path, status = cpu_int8.cached_model(export_dir, info)  # onnxruntime.transformers needs sympy
    except ImportError as e:  # deriving the graph needs onnx and sympy; running an export does not
        problem = (
            f"deriving the CPU INT8 graph needs the onnx and sympy packages ({e}): pip install onnx sympy"
        )
        if graph == "cpu-int8":
            raise ImportError(problem) from e
        logger.warning(
            "%s; running the exported Q/DQ graph of %s, slower than float on a CPU", problem, export_dir
        )
        return exported, f"the exported graph ({problem})"
    except Exception as e:
        if graph == "cpu-int8" or not isinstance(e, (cpu_int8.CpuInt8Error, OSError)):
            raise
        logger.warning(
            "cannot make the CPU INT8 graph of %s (%s); running the exported Q/DQ graph", export_dir, e
        )
        return exported, f"the exported graph (no CPU INT8 graph: {e})"
    return path, f"the CPU INT8 graph derived from {MODEL_ONNX} ({status})"


def _has_external_data(model_path: Path) -> bool:
    # The exporter keeps weights of models over 2 GB in <model>.data next to the model.
    return any(p.name.startswith(model_path.name + ".") for p in model_path.parent.iterdir())


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


def _provider_tag(providers: Sequence[ProviderSpec]) -> str:
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    return first.removesuffix("ExecutionProvider").lower()


class OrtRunner(BaseRunner):
    """Runs an export directory with ONNX Runtime (a `BaseRunner`).

    providers: execution provider names (or (name, options) pairs); None picks CUDA where installed,
        else the CPU. intra_op_num_threads / inter_op_num_threads: ONNX Runtime's thread pools (None:
        its defaults, one thread per physical core). graph_optimization_level: "disable" | "basic" |
        "extended" | "all". cache: keep the optimized graph in <dir>/.cache (see the module doc).
        graph: "auto" | "exported" | "cpu-int8", which graph of the export runs (`choose_graph`):
        "auto" runs qdq exports on the CPU as the derived CPU INT8 graph, "exported" forces model.onnx.
    After loading, `providers` lists the providers the session uses, `model_path` the ONNX file it was
    built from, `graph_path` the chosen graph (model.onnx or the derived one) and `graph_reason` why, `cache_status` what happened to the cache and
    `backend_reason` why these providers.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        export_dir: str | os.PathLike,
        providers: Sequence[ProviderSpec] | None = None,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        graph_optimization_level: str = "all",
        cache: bool = True,
        verify_sha256: bool = True,
        log_severity_level: int = 3,
        graph: str = "auto",
        *,
        info: ExportInfo | None = None,
        reason: str = "asked for",
    ):
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization_level={graph_optimization_level!r}; choose one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        for name, value in (
            ("intra_op_num_threads", intra_op_num_threads),
            ("inter_op_num_threads", inter_op_num_threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(
                    f"{name} must be a non-negative int (0: onnxruntime's default), got {value!r}"
                )
        if info is None:
            info = read_export_info(export_dir, verify_sha256=verify_sha256)
        self._providers, providers_reason = choose_providers(providers)
        super().__init__(export_dir, info=info, reason=f"{reason}; {providers_reason}")
        self._threads = (intra_op_num_threads, inter_op_num_threads)
        self._log_severity_level = log_severity_level
        self.graph_optimization_level = graph_optimization_level
        source, graph_reason = choose_graph(self.export_dir, self.info, graph, self._providers)
        self._set_choice(graph="exported" if source == self.export_dir / MODEL_ONNX else "cpu-int8", graph_reason=graph_reason)
        self.graph_path = source  # the chosen graph, before ONNX Runtime's optimized-graph cache
        cached, self.cache_status = self._cached_model(source) if cache else (None, "disabled")
        self.session, self.model_path = self._load(source, cached)
        self._check_signature()
        self.providers: list[str] = list(self.session.get_providers())
        logger.info(
            "onnxruntime %s: %s with %s (%s; %s; optimized graph cache: %s)",
            ort.__version__,
            self.export_dir,
            ", ".join(self.providers),
            self.backend_reason,
            self.graph_reason,
            self.cache_status,
        )

    @property
    def graph_reason(self) -> str:
        return self.choice.graph_reason

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def __repr__(self) -> str:
        return f"OrtRunner({str(self.export_dir)!r}, providers={self.providers}, task={self.info.task!r})"

    # --- sessions and the optimized-graph cache ----------------------------------------------------

    def _session_options(self, level: str, optimized_path: Path | None = None) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[level]
        options.log_severity_level = self._log_severity_level
        intra, inter = self._threads
        if intra is not None:
            options.intra_op_num_threads = intra
        if inter is not None:
            options.inter_op_num_threads = inter
        if optimized_path is not None:
            options.optimized_model_filepath = str(optimized_path)
        return options

    def _session(self, path: Path, level: str, optimized_path: Path | None = None) -> ort.InferenceSession:
        options = self._session_options(level, optimized_path)
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=self._providers)
        except _ORT_LOAD_ERRORS as e:
            # a damaged or foreign file, not a bug of ours: say which file and what to do
            raise ExportDirError(f"{path} cannot be loaded by ONNX Runtime ({e}); re-export the model") from e

    def cache_key(self, source: Path) -> str:
        """ort-<onnxruntime version>-<sha256[:16] of the ONNX file>-<optimization level>-<provider>."""
        if source == self.export_dir / MODEL_ONNX and self.info.onnx_sha256:
            digest = self.info.onnx_sha256  # checked against the file when export.json was read
        else:
            digest = sha256_file(source)
        return f"ort-{ort.__version__}-{digest[:16]}-{self._cached_level}-{_provider_tag(self._providers)}"

    @property
    def _cached_level(self) -> str:
        """The optimization level of the cached graph: the requested one, capped at portable "extended"."""
        return "extended" if self.graph_optimization_level == "all" else self.graph_optimization_level

    def _cached_model(self, source: Path) -> tuple[Path | None, str]:
        """The cached optimized graph for `source`, made now if missing; None (and why) where none."""
        if self.graph_optimization_level == "disable":
            return None, "not used (graph optimizations disabled)"
        if _has_external_data(source):
            return None, "not used (the model keeps its weights in external data files)"
        cache_dir = self.export_dir / CACHE_DIR
        key = self.cache_key(source)
        cached, unusable = cache_dir / f"{key}.onnx", cache_dir / f"{key}.unusable"
        if unusable.exists():
            return None, f"not used ({unusable} records why)"
        if cached.exists():
            return cached, f"reused {cached}"
        try:
            self._write_cache(source, cached)
        except OSError as e:
            logger.warning(
                "cannot write the optimized-graph cache in %s (%s); running without it", cache_dir, e
            )
            return None, f"not written ({e})"
        return cached, f"created {cached}"

    def _load(self, source: Path, cached: Path | None) -> tuple[ort.InferenceSession, Path]:
        """A session on the cached graph where there is one that loads, else on `source`."""
        if cached is not None:
            # the cached graph has the portable optimizations already; "all" adds the machine-specific ones
            level = "all" if self.graph_optimization_level == "all" else "disable"
            try:
                return self._session(cached, level), cached
            except Exception as e:  # note why, so that later loads do not try again
                logger.warning(
                    "the cached optimized graph %s does not load (%s); using %s", cached, e, source.name
                )
                try:
                    cached.with_suffix(".unusable").write_text(
                        f"onnxruntime {ort.__version__} cannot load {cached.name}: {e}\n", encoding="utf-8"
                    )
                    cached.unlink(missing_ok=True)
                except OSError:
                    pass
                self.cache_status = f"not used (the cached graph did not load: {e})"
        return self._session(source, self.graph_optimization_level), source

    def _write_cache(self, source: Path, cached: Path) -> None:
        # ONNX Runtime writes the optimized graph by name: to a fresh, exclusively created temporary
        with reserved_path(cached, root=self.export_dir) as tmp:
            self._session(source, self._cached_level, optimized_path=tmp)

    def _check_signature(self) -> None:
        """export.json and the ONNX graph must agree on names, or every call would fail later."""
        graph_inputs = [i.name for i in self.session.get_inputs()]
        graph_outputs = [o.name for o in self.session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.info.input_names) or not set(self.info.output_names) <= set(
            graph_outputs
        ):
            raise ExportDirError(
                f"{self.model_path} has inputs {graph_inputs} and outputs {graph_outputs}, but export.json "
                f"describes {self.info.input_names} -> {self.info.output_names}; re-export the model"
            )
