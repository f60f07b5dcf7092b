"""The export directory contract (DESIGN.md): file names and `export.json`, read and checked.

`python -m exporter` writes the directory; everything in `trt_runtime` reads it through this module.
It needs only the standard library, so the exporter (which has torch) and the runtime (which must
not) share one definition of the schema.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_ONNX = "model.onnx"
EXPORT_JSON = "export.json"
CALIBRATION_JSON = "calibration.json"
CONFIG_JSON = "config.json"
ENGINE = "model.engine"
ENGINE_JSON = "engine.json"
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
#: The custom-op domain of I-BERT's integer nonlinearities (DESIGN.md), its version and op names.
IBERT_DOMAIN = "ibert"
IBERT_DOMAIN_VERSION = 1
IBERT_OPS = ("IntGELU", "IntSoftmax", "IntLayerNorm")


class ExportDirError(ValueError):
    """An export directory is missing a file, or its files do not agree; the message says what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One ONNX input or output: dims are ints or named dynamic axes ("batch_size", "sequence_length", ...)."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))

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
        except (KeyError, TypeError, ValueError) as e:
            raise ExportDirError(f"{where} is incomplete or malformed ({e!r}); re-export the model") from None
        if info.task not in TASKS:
            raise ExportDirError(f"{where}: unknown task {info.task!r}; expected one of {', '.join(TASKS)}")
        if info.quantization not in QUANTIZATION_MODES:
            raise ExportDirError(f"{where}: unknown quantization {info.quantization!r}")
        return info


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def read_export_info(directory: str | os.PathLike, verify_sha256: bool = True) -> ExportInfo:
    """Read and check `export.json`; with verify_sha256, also that model.onnx is the file it describes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportDirError(f"{directory} is not a directory; pass an export directory made by `python -m exporter`")
    path = directory / EXPORT_JSON
    if not path.exists():
        raise ExportDirError(f"{path} not found: {directory} is not an export directory; run `python -m exporter`")
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
    if verify_sha256 and info.onnx_sha256 and sha256_file(onnx_path) != info.onnx_sha256:
        raise ExportDirError(
            f"{onnx_path} does not match the sha256 recorded in {path}: the file was changed or damaged "
            f"after export; re-export the model"
        )
    return info


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary sibling, then rename: readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
