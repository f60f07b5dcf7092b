"""Which graph of an export ONNX Runtime runs, and the derived CPU graphs as checked artefacts.

An export's model.onnx is laid out for TensorRT (Q/DQ pairs) or op by op (float). On the CPU execution
provider ONNX Runtime runs faster on a graph derived from it: the CPU INT8 graph of a qdq export
(`cpu_int8`), the fused float graph of a float BERT-style export (`cpu_float`) and the u8 x s8 form of an
integer export (`cpu_integer`). `choose_graph` is the one
place that decides which graph runs:

- graph="auto": on the CPU provider, "cpu-int8" for qdq exports, "cpu-float" for float exports of a
  fusable architecture, "cpu-integer" for integer exports where the CPU's u8 x s8 dot products add in int32
  (VNNI, AMX; `cpu_integer`: the same integers, faster GEMMs); model.onnx otherwise (other architectures,
  integer exports on AVX2-only CPUs, other providers).
- graph="exported": model.onnx as exported; "cpu-int8" / "cpu-float" / "cpu-integer": that graph, an error
  where it does not apply.

A derived graph is taken, in this order, from (1) the export itself, where `python -m trt_runtime build DIR
--target cpu-int8 | cpu-float` put it (`model.cpu-int8.onnx` with its record `model.cpu-int8.json`):
CacheStatus.PREBUILT; (2) the cache directory (REUSED); (3) derived now and written there (CREATED, or
REBUILT where a cached or prebuilt one did not match its record, with the reason); (4) derived now and kept
in memory where nothing can be written (IN_MEMORY: a read-only export, a `.cache` that is a link). Its record
(`artefacts.Expected`) holds the recipe, the onnxruntime version, for the INT8 graph whether this CPU's u8 x s8
dot products add in int32 (which picks 8- or 7-bit weights), and the sha256 of model.onnx and of itself; a
graph whose record does not match, or whose bytes are not the record's, is never used.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_runtime.backends.artefacts import CacheLocation, Expected, obtain, verify, write
from trt_runtime.backends.base import CacheStatus
from trt_runtime.backends.onnxruntime.options import GRAPHS, ProviderSpec
from trt_runtime.backends.onnxruntime.recipes import (
    FUSABLE_ARCHITECTURES,
    CpuFloatError,
    CpuInt8Error,
    CpuIntegerError,
    Recipe,
    check_float_applies,
    check_int8_applies,
    check_integer_applies,
    cpu_int8_features,
    float_recipe_record,
    int8_dot_products_are_exact,
    integer_recipe_record,
    recipe_record,
    u8s8_gemms_are_exact,
)
from trt_runtime.contract.export_dir import (
    CPU_FLOAT_ONNX,
    CPU_INT8_ONNX,
    CPU_INTEGER_ONNX,
    MODEL_ONNX,
    ExportInfo,
)
from trt_runtime.contract.files import sha256_bytes, sha256_file

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
DERIVATION_ERRORS = (CpuInt8Error, CpuFloatError, CpuIntegerError)


def _int8_made_with() -> dict[str, Any]:
    # the weights' bit width depends on the CPU (see recipes.int8_dot_products_are_exact): part of what must match
    return {"recipe": recipe_record(Recipe()), "int8_dot_products_exact": int8_dot_products_are_exact()}


def _float_made_with() -> dict[str, Any]:
    return {"recipe": float_recipe_record()}


def _integer_made_with() -> dict[str, Any]:
    # made only where this onnxruntime's u8 x s8 GEMMs add in int32 (measured: recipes.u8s8_gemms_are_exact)
    return {"recipe": integer_recipe_record(), "u8s8_gemms_exact": u8s8_gemms_are_exact()}


def _machine() -> dict[str, Any]:
    return {"machine": platform.machine().lower()}


@dataclass(frozen=True)
class CpuGraph:
    """One kind of derived CPU graph."""

    name: str  # the `graph` option's value
    what: str  # for messages
    prebuilt: str  # its file in the export, from `python -m trt_runtime build --target NAME`
    module: str  # the module whose `derive(export_dir, info)` makes it (imported when needed: it needs onnx)
    check_applies: Callable[[str | os.PathLike, ExportInfo], None]  # raises `error` where it does not apply
    error: type[ValueError]
    made_with: Callable[[], dict[str, Any]]  # besides the onnxruntime version: what else must match
    made_on: Callable[[], dict[str, Any]]  # recorded for the reader

    def expected(self, export_dir: Path, info: ExportInfo) -> Expected:
        """What this graph must be made from and with, for this export on this machine and onnxruntime."""
        import onnxruntime

        source_sha256 = info.onnx_sha256 or sha256_file(export_dir / MODEL_ONNX)
        made_with = {"onnxruntime_version": onnxruntime.__version__, **self.made_with()}
        return Expected(self.name, MODEL_ONNX, source_sha256, made_with, self.made_on())

    def cache_name(self, expected: Expected) -> str:
        """<name>-<onnxruntime version>-<recipe tag>.onnx (inside the export's cache directory)."""
        return f"{self.name}-{expected.made_with['onnxruntime_version']}-{expected.made_with['recipe']['tag']}.onnx"

    def derive(self, export_dir: Path, info: ExportInfo) -> bytes:
        module = importlib.import_module(f"trt_runtime.backends.onnxruntime.{self.module}")
        model = module.derive(export_dir, info)
        return bytes(model.SerializeToString())


CPU_GRAPHS = {
    "cpu-int8": CpuGraph(
        "cpu-int8", "the CPU INT8 graph", CPU_INT8_ONNX, "cpu_int8", check_int8_applies, CpuInt8Error,
        _int8_made_with, cpu_int8_features,
    ),
    "cpu-float": CpuGraph(
        "cpu-float", "the fused float graph", CPU_FLOAT_ONNX, "cpu_float", check_float_applies, CpuFloatError,
        _float_made_with, _machine,
    ),
    "cpu-integer": CpuGraph(
        "cpu-integer", "the CPU integer graph", CPU_INTEGER_ONNX, "cpu_integer", check_integer_applies,
        CpuIntegerError, _integer_made_with, cpu_int8_features,
    ),
}


@dataclass
class ChosenGraph:
    """The graph ONNX Runtime runs: from a file (`path`) or, where derived, its bytes (`data`)."""

    name: str  # "exported" | "cpu-int8" | "cpu-float" | "cpu-integer"
    reason: str
    sha256: str
    path: Path | None  # the file (model.onnx, the prebuilt or cached graph); None when it lives in memory
    data: bytes | None = None  # the derived graph's bytes, checked against its record
    cache: CacheStatus = CacheStatus.NOT_USED
    cache_detail: str = ""


def has_external_data(model_path: Path) -> bool:
    """Whether the model keeps weights in files beside it (the exporter's `<model>.data`, for models over 2 GB)."""
    return any(p.name.startswith(model_path.name + ".") for p in model_path.parent.iterdir())


def first_provider(providers: Sequence[ProviderSpec] | None) -> str:
    if not providers:
        return CPU
    first = providers[0]
    return first if isinstance(first, str) else first[0]


def auto_graph(info: ExportInfo, provider: str) -> tuple[str, str]:
    """The graph that graph="auto" runs for this export on `provider`, and why (for the exported graph)."""
    if provider != CPU:
        return "exported", f"the exported graph (the derived CPU graphs are for the {CPU})"
    if info.quantization == "qdq":
        return "cpu-int8", ""
    if info.quantization == "none" and info.architecture in FUSABLE_ARCHITECTURES:
        return "cpu-float", ""
    if info.quantization == "integer":
        if u8s8_gemms_are_exact():
            return "cpu-integer", ""
        return "exported", (
            "the exported graph (its u8 x u8 GEMMs are the exact ones here: this onnxruntime's u8 x s8 "
            "MatMulInteger does not add in int32 on this CPU, e.g. pairs in a saturating int16 without VNNI)"
        )
    return "exported", "the exported graph"


def exported_graph(export_dir: Path, info: ExportInfo, reason: str) -> ChosenGraph:
    path = export_dir / MODEL_ONNX
    return ChosenGraph("exported", reason, info.onnx_sha256 or sha256_file(path), path)


def choose_graph(
    export_dir: Path,
    info: ExportInfo,
    graph: str = "auto",
    providers: Sequence[ProviderSpec] | None = None,
    location: CacheLocation | None = None,
    no_cache_reason: str = "caching is off (cache=False)",
) -> ChosenGraph:
    """The graph ONNX Runtime runs for this export (see the module docstring); location: the cache (None: off)."""
    if graph not in GRAPHS:
        raise ValueError(f"graph={graph!r}; choose one of {', '.join(GRAPHS)}")
    if graph == "exported":
        return exported_graph(export_dir, info, "the exported graph (asked for)")
    name = graph
    if graph == "auto":
        name, why = auto_graph(info, first_provider(providers))
        if name == "exported":
            return exported_graph(export_dir, info, why)
    kind = CPU_GRAPHS[name]
    kind.check_applies(export_dir, info)
    explicit = graph != "auto"
    if has_external_data(export_dir / MODEL_ONNX):  # over protobuf's 2 GB: a derived graph could not be saved
        why = f"{MODEL_ONNX} keeps its weights in external data files (a model over 2 GB)"
        if explicit:
            raise kind.error(f"{kind.what} is not made where {why}")
        return exported_graph(export_dir, info, f"the exported graph ({why})")
    try:
        expected = kind.expected(export_dir, info)
        stale: list[str] = []
        prebuilt = export_dir / kind.prebuilt
        if os.path.lexists(prebuilt):
            data, stale = verify(prebuilt, expected)
            if data is not None:
                return ChosenGraph(
                    name,
                    f"{kind.what} built by `python -m trt_runtime build --target {name}`",
                    sha256_bytes(data),
                    prebuilt,
                    data,
                    CacheStatus.PREBUILT,
                    f"{prebuilt}, checked against its record",
                )
            logger.warning("not using %s: %s; deriving %s again", prebuilt, "; ".join(stale), kind.what)
        obtained = obtain(
            kind.cache_name(expected),
            expected,
            lambda: kind.derive(export_dir, info),
            location,
            what=f"{kind.what} of {export_dir}",
            no_cache_reason=no_cache_reason,
            stale=[f"{prebuilt.name}: {problem}" for problem in stale],
        )
    except ImportError as e:  # deriving needs onnx (and onnxruntime.transformers needs sympy); running does not
        problem = f"deriving {kind.what} needs the onnx and sympy packages ({e}): pip install onnx sympy"
        if explicit:
            raise ImportError(problem) from e
        logger.warning("%s; running the exported graph of %s instead", problem, export_dir)
        return exported_graph(export_dir, info, f"the exported graph ({problem})")
    except DERIVATION_ERRORS as e:
        if explicit:
            raise
        logger.warning("cannot make %s of %s (%s); running the exported graph", kind.what, export_dir, e)
        return exported_graph(export_dir, info, f"the exported graph (no {kind.what}: {e})")
    return ChosenGraph(
        name,
        f"{kind.what} derived from {MODEL_ONNX}",
        obtained.sha256,
        obtained.path,
        obtained.data,
        obtained.status,
        obtained.detail,
    )


def build(export_dir: str | os.PathLike, info: ExportInfo, graph: str) -> Path:
    """Derive the CPU graph `graph` ("cpu-int8" | "cpu-float" | "cpu-integer") and write it into the export with its record
    (`python -m trt_runtime build DIR --target GRAPH`); returns its path."""
    export_dir = Path(export_dir)
    if graph not in CPU_GRAPHS:
        raise ValueError(f"graph={graph!r}; the CPU graphs are {', '.join(CPU_GRAPHS)}")
    kind = CPU_GRAPHS[graph]
    kind.check_applies(export_dir, info)
    expected = kind.expected(export_dir, info)
    path = export_dir / kind.prebuilt
    write(path, kind.derive(export_dir, info), expected, root=export_dir)
    return path
