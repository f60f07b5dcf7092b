"""`OrtOptions`: the ONNX Runtime backend's options, checked when they are made (no onnxruntime import here,
so `trt_runtime.load` and `trt_runtime.pipeline` can sort options by backend without loading any backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trt_runtime.backends.artefacts import CACHE_DIR_ENV
from trt_runtime.backends.base import RunnerOptions

__all__ = ["CACHE_DIR_ENV", "GRAPHS", "GRAPH_OPTIMIZATION_LEVELS", "OrtOptions", "ProviderSpec"]

#: graph_optimization_level names (ONNX Runtime's GraphOptimizationLevel, mapped in runner.py)
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: which graph of an export the runner loads (trt_runtime.backends.onnxruntime.graphs.choose_graph)
GRAPHS = ("auto", "exported", "cpu-int8", "cpu-float", "cpu-integer")

ProviderSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class OrtOptions(RunnerOptions):
    """providers: execution provider names (or (name, options) pairs); None picks CUDA where installed,
        else the CPU.
    intra_op_num_threads / inter_op_num_threads: ONNX Runtime's thread pools (None or 0: its defaults).
    graph_optimization_level: "disable" | "basic" | "extended" | "all".
    graph: which graph of the export runs: "auto" (on the CPU provider, the CPU INT8 graph for qdq exports,
        the fused float graph for float BERT-style exports and, on CPUs with VNNI or AMX, the CPU integer
        graph for integer exports; model.onnx otherwise), "exported" (model.onnx), "cpu-int8", "cpu-float",
        "cpu-integer" (docs/runtime.md, "Graphs").
    cache: keep what is derived (the CPU graphs, ONNX Runtime's optimized graph) in the cache directory and
        reuse it; False derives in memory on every load and writes nothing.
    cache_dir: the cache directory (one serves many exports: entries are keyed by model.onnx's sha256);
        None: $QBERT_CACHE_DIR if set, else <export>/.cache.
    log_severity_level: ONNX Runtime's log level (0 verbose ... 4 fatal).
    """

    providers: Sequence[ProviderSpec] | None = None
    intra_op_num_threads: int | None = None
    inter_op_num_threads: int | None = None
    graph_optimization_level: str = "all"
    graph: str = "auto"
    cache: bool = True
    cache_dir: str | os.PathLike | None = None
    log_severity_level: int = 3

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization_level={self.graph_optimization_level!r}; choose one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if self.graph not in GRAPHS:
            raise ValueError(f"graph={self.graph!r}; choose one of {', '.join(GRAPHS)}")
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int (0: onnxruntime's default), got {value!r}")
        if not isinstance(self.cache, bool):
            raise ValueError(f"cache must be True or False, got {self.cache!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"cache_dir must be a path (or None), got {type(self.cache_dir).__name__}")
        if self.cache_dir is not None and not str(self.cache_dir):
            raise ValueError("cache_dir is an empty string; pass a directory, or None for the default")
        level = self.log_severity_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 4:
            raise ValueError(f"log_severity_level must be an int from 0 (verbose) to 4 (fatal), got {level!r}")
        if self.providers is not None and (isinstance(self.providers, str) or not isinstance(self.providers, Sequence)):
            raise ValueError(
                f"providers must be a list of execution provider names, got {self.providers!r}; e.g. "
                f"providers=['CPUExecutionProvider']"
            )

