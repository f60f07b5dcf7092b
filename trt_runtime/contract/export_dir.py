"""The export directory contract (DESIGN.md): file names and `export.json`, read and checked.

`python -m exporter` writes the directory; everything in `trt_runtime` reads it through this module.
It needs only the standard library, so the exporter (which has torch) and the runtime (which must
not) share one definition of the schema.

`read_export_info` is the one place a load reads export.json, and it checks what the export's files must
agree on before anything runs them (docs/runtime.md, "What a load checks"): the schema; no file that is a
symbolic link out of the directory; and, with `verify_sha256`, model.onnx's sha256, the copy of export.json
that the exporter stores in model.onnx's metadata, and the graph's quantization against the export's mode.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.files import sha256_file
from trt_runtime.contract.onnx_wire import OnnxSummary, OnnxWireError, summarize_file

MODEL_ONNX = "model.onnx"
EXPORT_JSON = "export.json"
CALIBRATION_JSON = "calibration.json"
CONFIG_JSON = "config.json"
ENGINE = "model.engine"
ENGINE_JSON = "engine.json"
#: the CPU graphs `python -m trt_runtime build DIR --target cpu-int8 | cpu-float | cpu-integer` adds, each with its record
#: (trt_runtime.backends.onnxruntime.graphs)
CPU_INT8_ONNX, CPU_INT8_JSON = "model.cpu-int8.onnx", "model.cpu-int8.json"
CPU_FLOAT_ONNX, CPU_FLOAT_JSON = "model.cpu-float.onnx", "model.cpu-float.json"
CPU_INTEGER_ONNX, CPU_INTEGER_JSON = "model.cpu-integer.onnx", "model.cpu-integer.json"
#: where the runtime caches what it derives, unless told another directory (`cache_dir`, QBERT_CACHE_DIR)
CACHE_DIR = ".cache"
#: key of the ONNX `metadata_props` entry that repeats export.json (without `onnx_sha256`, which
#: cannot be known before the file is written)
ONNX_METADATA_KEY = "export"
FORMAT_VERSION = 1

TASKS = (
    "feature-extraction",
    "fill-mask",
    "text-generation",
    "text-classification",
    "token-classification",
    "question-answering",
    "multiple-choice",
    "next-sentence-prediction",
)
QUANTIZATION_MODES = ("none", "qdq", "integer")


class ExportDirError(QbertError, ValueError):
    """An export directory is missing a file, or its files do not agree; the message says what to do."""

    code = "export-dir"


@dataclass(frozen=True)
class TensorSpec:
    """One ONNX input or output: dims are ints or named dynamic axes ("batch_size", "sequence_length", ...)."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        name, dtype, shape = data["name"], data["dtype"], data["shape"]
        if not isinstance(name, str) or not isinstance(dtype, str) or not isinstance(shape, list):
            raise TypeError(f"a tensor needs a string name and dtype and a list shape, got {data!r}")
        return cls(name, dtype, tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ExportInfo:
    """Everything a runtime needs to know about an export, as stored in export.json."""

    architecture: str  # our family: "bert" | "squeezebert"
    model_type: str  # config.json's model_type
    task: str
    quantization: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_sequence_length: int
    vocab_size: int
    type_vocab_size: int = 1
    pad_token_id: int = 0
    id2label: dict[str, str] | None = None
    problem_type: str | None = None
    force_dequant: str | None = None  # integer mode only
    calibration: dict[str, Any] | None = None  # {"method": ..., "data": ..., "num_samples": ..., ...}
    custom_ops: list[str] = field(default_factory=list)  # e.g. ["ibert::IntGELU"]
    #: the INT8 share of the graph's GEMM work (exporter.report; exports before 0.3 have none): {"rule",
    #: "linear" / "attention" / "heads": {"gemms", "int8_gemms", "split_gemms", "work", "int8_work",
    #: "split_work"}, "float_gemms": [{"node", "group", "work", "reason"}]}
    int8_share: dict[str, Any] | None = None
    onnx_sha256: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [spec.to_dict() for spec in self.inputs]
        data["outputs"] = [spec.to_dict() for spec in self.outputs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = EXPORT_JSON) -> ExportInfo:
        try:
            version = int(data.get("format_version", FORMAT_VERSION))
            if version > FORMAT_VERSION:
                raise ExportDirError(
                    f"{where}: format_version {version} is newer than this runtime understands "
                    f"({FORMAT_VERSION}); upgrade the runtime or re-export with this version"
                )
            known = set(cls.__dataclass_fields__)
            fields = {k: v for k, v in data.items() if k in known}
            fields["inputs"] = [TensorSpec.from_dict(d) for d in data["inputs"]]
            fields["outputs"] = [TensorSpec.from_dict(d) for d in data["outputs"]]
            info = cls(**fields)
        except ExportDirError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ExportDirError(f"{where} is incomplete or malformed ({e!r}); re-export the model") from None
        problems = _schema_problems(info)
        if problems:
            raise ExportDirError(f"{where} is malformed ({'; '.join(problems)}); re-export the model")
        if info.task not in TASKS:
            raise ExportDirError(f"{where}: unknown task {info.task!r}; expected one of {', '.join(TASKS)}")
        if info.quantization not in QUANTIZATION_MODES:
            raise ExportDirError(f"{where}: unknown quantization {info.quantization!r}")
        return info


def read_export_info(directory: str | os.PathLike, verify_sha256: bool = True) -> ExportInfo:
    """Read and check `export.json`; with verify_sha256, also that model.onnx is the file it describes.

    Always: the schema, and that no file of the directory is a symbolic link pointing out of it. With
    verify_sha256 (the default of every runner): model.onnx's sha256 against export.json's, export.json
    against the copy in model.onnx's metadata, and the graph's quantization against the export's mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportDirError(f"{directory} is not a directory; pass an export directory made by `python -m exporter`")
    path = directory / EXPORT_JSON
    if not path.exists():
        raise ExportDirError(f"{path} not found: {directory} is not an export directory; run `python -m exporter`")
    check_no_outside_links(directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportDirError(f"{path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(data, dict):
        raise ExportDirError(f"{path} must hold a JSON object; re-export the model")
    info = ExportInfo.from_dict(data, where=str(path))
    onnx_path = directory / MODEL_ONNX
    if not onnx_path.exists():
        raise ExportDirError(f"{onnx_path} not found; re-export the model")
    if verify_sha256 and not info.onnx_sha256:
        raise ExportDirError(
            f"{path} records no onnx_sha256, so {onnx_path} cannot be checked against it; re-export the model "
            f"(or pass verify_sha256=False to run it unchecked)"
        )
    if verify_sha256 and sha256_file(onnx_path) != info.onnx_sha256:
        raise ExportDirError(
            f"{onnx_path} does not match the sha256 recorded in {path}: the file was changed or damaged "
            f"after export; re-export the model"
        )
    if verify_sha256:
        try:
            summary = summarize_file(onnx_path)
        except OnnxWireError as e:
            raise ExportDirError(f"{onnx_path} is not a readable ONNX file ({e}); re-export the model") from None
        check_metadata_copy(data, summary, path, onnx_path)
        check_quantization(info, summary, onnx_path)
    return info


def check_no_outside_links(directory: str | os.PathLike) -> None:
    """Refuse an export whose files (model.onnx, export.json, tokenizer files, ...) are symbolic links to
    something outside the directory: the runtime would serve, and `triton-repo` copy, a file nobody exported.

    Links inside the directory are fine, and so is the directory itself being a link; the cache directory
    (`.cache`) is not looked into (the runtime never writes through a link there, and checks what it reads)."""
    directory = Path(directory)
    top = Path(os.path.realpath(directory))
    for parent, subdirectories, files in os.walk(directory):
        if Path(parent) == directory and CACHE_DIR in subdirectories:
            subdirectories.remove(CACHE_DIR)
        for name in [*subdirectories, *files]:
            entry = Path(parent) / name
            if not entry.is_symlink():
                continue
            target = Path(os.path.realpath(entry))
            if target != top and top not in target.parents:
                raise ExportDirError(
                    f"{entry} is a symbolic link to {target}, outside the export directory {directory}; the "
                    f"runtime only serves files of the export itself. Replace the link with the file "
                    f"(cp --remove-destination \"$(readlink -f {entry})\" {entry}) or re-export the model"
                )


def check_metadata_copy(
    export_json: dict[str, Any], summary: OnnxSummary, json_path: Path, onnx_path: Path
) -> None:
    """export.json must equal the copy of it that the exporter stored in model.onnx's metadata
    (`ONNX_METADATA_KEY`, everything but onnx_sha256): a hand-edited id2label would otherwise give wrong
    labels, and an export.json from another export would describe a model that is not there."""
    stored = summary.metadata.get(ONNX_METADATA_KEY)
    if stored is None:
        raise ExportDirError(
            f"{onnx_path} carries no copy of export.json (metadata_props {ONNX_METADATA_KEY!r}), so nothing "
            f"shows that {json_path} describes it: it was not written by `python -m exporter`; re-export the model"
        )
    try:
        copy = json.loads(stored)
    except json.JSONDecodeError:
        copy = None
    if not isinstance(copy, dict):
        raise ExportDirError(
            f"the copy of export.json in {onnx_path}'s metadata is not a JSON object; re-export the model"
        )
    fields = sorted((set(export_json) | set(copy)) - {"onnx_sha256"})
    differing = [name for name in fields if export_json.get(name) != copy.get(name)]
    if differing:
        first = differing[0]
        raise ExportDirError(
            f"{json_path} and the copy of it in {onnx_path}'s metadata disagree on {', '.join(differing)} "
            f"({first}: export.json has {_short(export_json.get(first))}, model.onnx has {_short(copy.get(first))}): "
            f"export.json was edited after export, or comes from another export; re-export the model"
        )


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: standard ops that only a quantized graph has (Q/DQ, integer GEMMs)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")


def check_quantization(info: ExportInfo, summary: OnnxSummary, onnx_path: Path) -> None:
    """The graph must be of the export's quantization mode: a qdq export has QuantizeLinear and
    DequantizeLinear nodes, an integer export the integer ops (the `ibert` nodes export.json lists), a float
    export neither; and the graph's custom ops are the ones export.json lists."""
    graph_ops = summary.custom_ops()
    if graph_ops != sorted(info.custom_ops):
        raise ExportDirError(
            f"{onnx_path} has the custom ops {graph_ops or 'none'}, but export.json lists "
            f"{sorted(info.custom_ops) or 'none'} (custom_ops): model.onnx is not the graph this export made; "
            f"re-export the model"
        )
    has_qdq = summary.has("QuantizeLinear") and summary.has("DequantizeLinear")
    quantized = summary.has(*QUANTIZED_OPS) or bool(graph_ops)
    problem = None
    if info.quantization == "qdq" and not has_qdq:
        problem = "has no QuantizeLinear/DequantizeLinear nodes"
    elif info.quantization == "integer" and not quantized:
        problem = "has no integer ops (no ibert nodes, no Q/DQ or integer GEMMs)"
    elif info.quantization == "none" and quantized:
        found = [op for op in QUANTIZED_OPS if summary.has(op)] + graph_ops
        problem = f"has quantization nodes ({', '.join(found)})"
    if problem:
        raise ExportDirError(
            f"export.json says quantization={info.quantization!r}, but {onnx_path} {problem}: the graph is not "
            f"of the export's mode (model.onnx replaced by another export's?); re-export the model"
        )


def _schema_problems(info: ExportInfo) -> list[str]:
    """Fields of the wrong type or out of range: each would fail later, far from export.json."""
    problems = []

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for name in ("architecture", "model_type", "task", "quantization"):
        if not isinstance(getattr(info, name), str):
            problems.append(f"{name} must be a string, got {getattr(info, name)!r}")
    for name, low in (
        ("opset", 1),
        ("max_sequence_length", 1),
        ("vocab_size", 1),
        ("type_vocab_size", 1),
        ("pad_token_id", 0),
    ):
        value = getattr(info, name)
        if not is_int(value) or value < low:
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
    if not info.inputs:
        problems.append("inputs is empty")
    if not info.outputs:
        problems.append("outputs is empty")
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            bad_dim = any(not isinstance(dim, str) and not (is_int(dim) and dim >= 0) for dim in spec.shape)
            if not spec.name or bad_dim:
                problems.append(f"{kind} {spec.name!r} has a bad name or shape {list(spec.shape)}")
    if info.int8_share is not None and not isinstance(info.int8_share, dict):
        problems.append(f"int8_share must be an object, got {type(info.int8_share).__name__}")
    if info.id2label is not None and not isinstance(info.id2label, dict):
        problems.append(f"id2label must be an object, got {type(info.id2label).__name__}")
    if info.onnx_sha256 is not None and not (
        isinstance(info.onnx_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", info.onnx_sha256)
    ):
        problems.append(f"onnx_sha256 must be 64 hex digits, got {info.onnx_sha256!r}")
    return problems
