"""What a load needs to know of an ONNX file without parsing it: its `metadata_props` and its nodes' op types.

`trt_runtime.load` cross-checks every export (export.json against the copy the exporter keeps in model.onnx's
metadata, the graph's quantization against the export's mode) before it runs it. Parsing the whole
`ModelProto` for that (onnx.load) copies every initializer: about 150 ms for a 100 MB model, on every load,
and it needs the `onnx` package, which a runtime-only install may lack. This module walks the protobuf wire
format instead and reads only the few fields it needs, skipping initializers by their length (about 15 ms for
a BERT-base-sized graph). It is tested against `onnx.load` on real exports (tests/trt_runtime/contract/).

Field numbers are those of onnx/onnx.proto (stable since IR version 3): ModelProto.graph = 7,
ModelProto.metadata_props = 14, GraphProto.node = 1, NodeProto.op_type = 4, NodeProto.domain = 7,
StringStringEntryProto.key = 1 / value = 2. Wire types: protobuf's encoding guide
(https://protobuf.dev/programming-guides/encoding/): 0 varint, 1 64-bit, 2 length-delimited, 5 32-bit.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from trt_runtime.contract.errors import QbertError

MODEL_GRAPH = 7
MODEL_METADATA_PROPS = 14
GRAPH_NODE = 1
NODE_OP_TYPE = 4
NODE_DOMAIN = 7
ENTRY_KEY, ENTRY_VALUE = 1, 2

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class OnnxWireError(QbertError, ValueError):
    """The file is not a well-formed protobuf (truncated, damaged, not ONNX)."""

    code = "onnx-unreadable"


@dataclass
class OnnxSummary:
    """The metadata and the node op types of an ONNX model's main graph (functions' bodies not included)."""

    metadata: dict[str, str] = field(default_factory=dict)
    #: (domain, op_type) -> number of nodes; the default domain is ""
    op_types: Counter[tuple[str, str]] = field(default_factory=Counter)

    def has(self, *op_types: str, domain: str = "") -> bool:
        """Whether the graph has a node of any of `op_types` in `domain` ("" and "ai.onnx" are one domain)."""
        domains = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
        return any((d, op) in self.op_types for d in domains for op in op_types)

    def domains(self) -> set[str]:
        return {domain for domain, _ in self.op_types}

    def custom_ops(self) -> list[str]:
        """`domain::op` of every node outside the standard domain, as export.json's `custom_ops` lists them."""
        return sorted({f"{d}::{op}" for d, op in self.op_types if d not in ("", "ai.onnx")})


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxWireError("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]; the
    other wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxWireError(f"field {number} runs past the end of its message")
            yield number, pos, pos + length
            pos += length
        elif wire_type == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise OnnxWireError(f"unexpected wire type {wire_type} in field {number}")
    if pos != end:
        raise OnnxWireError("a field runs past the end of its message")


def _text(buf: mmap.mmap | bytes, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


def summarize(buf: mmap.mmap | bytes) -> OnnxSummary:
    """The `OnnxSummary` of a serialized ModelProto."""
    summary = OnnxSummary()
    for number, start, end in _fields(buf, 0, len(buf)):
        if number == MODEL_METADATA_PROPS:
            entry = {n: _text(buf, s, e) for n, s, e in _fields(buf, start, end)}
            summary.metadata[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
        elif number == MODEL_GRAPH:
            for graph_field, node_start, node_end in _fields(buf, start, end):
                if graph_field != GRAPH_NODE:
                    continue  # initializers, inputs, outputs, value_info: skipped by length
                op_type = domain = ""
                for node_field, s, e in _fields(buf, node_start, node_end):
                    if node_field == NODE_OP_TYPE:
                        op_type = _text(buf, s, e)
                    elif node_field == NODE_DOMAIN:
                        domain = _text(buf, s, e)
                summary.op_types[(domain, op_type)] += 1
    return summary


def summarize_file(path: str | os.PathLike) -> OnnxSummary:
    """`summarize` of an ONNX file, read through a memory map (only the pages of the fields read are touched)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise OnnxWireError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return summarize(buf)
