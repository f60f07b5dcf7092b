"""Triton model configuration (config.pbtxt) as plain data, written in protobuf text format.

A config is a dict in the shape of Triton's `ModelConfig` message (model_config.proto): nested dicts are
messages, lists are repeated fields, `Enum("KIND_GPU")` is an enum value, `parameters` is a
{key: str} map (written as `parameters [ { key: "k", value: { string_value: "v" } } ]`). No protobuf
is needed to write one; tests parse the result with Triton's own schema (tritonclient's
model_config_pb2) and compare it with what a live server reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trt_runtime.contract.export_dir import TensorSpec

#: numpy dtype name (export.json) -> Triton data type
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
#: variable-length bytes (UTF-8 text); the wire datatype is "BYTES"
TYPE_STRING = "TYPE_STRING"


class Enum(str):
    """An enum value: written bare (KIND_GPU), not quoted."""


def triton_dtype(numpy_dtype: str) -> Enum:
    try:
        return Enum(TRITON_DTYPES[numpy_dtype])
    except KeyError:
        raise ValueError(
            f"dtype {numpy_dtype!r} has no Triton equivalent here; known: {', '.join(TRITON_DTYPES)}"
        ) from None


def tensor_dims(spec: TensorSpec) -> list[int]:
    """The dims Triton sees with `max_batch_size` > 0: the batch axis left out, named (dynamic) axes -1."""
    if not spec.shape:
        raise ValueError(f"{spec.name} has no batch axis; Triton batching needs [batch, ...] tensors")
    return [dim if isinstance(dim, int) else -1 for dim in spec.shape[1:]]


def tensor_config(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": triton_dtype(spec.dtype), "dims": tensor_dims(spec)}


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is; quotes, backslashes, controls escaped)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in a model config")


def _inline(message: Mapping[str, Any]) -> str | None:
    """`{ key: "k" value { string_value: "v" } }` for a small message of scalars and messages, else None."""
    parts = []
    for key, value in message.items():
        if isinstance(value, Mapping):
            inner = _inline(value)
            if inner is None:
                return None
            parts.append(f"{key} {inner}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            return None
        elif value is not None:
            parts.append(f"{key}: {_scalar(value)}")
    return "{ " + " ".join(parts) + " }"


def _lines(message: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if key == "parameters" and isinstance(value, Mapping):
            value = [{"key": k, "value": {"string_value": v}} for k, v in value.items()]
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *_lines(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if all(isinstance(item, Mapping) for item in value) and value:
                lines.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    comma = "," if i < len(value) - 1 else ""
                    inline = _inline(item) if key == "parameters" else None
                    if inline is not None:
                        lines.append(f"{pad}  {inline}{comma}")
                    else:
                        lines += [f"{pad}  {{", *_lines(item, indent + 2), f"{pad}  }}{comma}"]
                lines.append(f"{pad}]")
            elif value:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def to_pbtxt(config: Mapping[str, Any], header: str | None = None) -> str:
    """config.pbtxt text for `config`; `header` becomes leading `#` comment lines."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join([*comments, *_lines(config, 0)]) + "\n"
