"""The INT8 share of a graph's GEMM work, read from its ONNX graph by the rule TensorRT applies: the one home
of the rule, used by the exporter (the export log, `--report`, export.json's "int8_share") and by
`python -m trt_runtime build` (for the graph it hands TensorRT: an integer export's TensorRT form).

TensorRT's explicit quantization (developer guide, "Explicit Quantization": "Q/DQ Layer-Placement
Recommendations" and "Q/DQ Propagation",
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html)
runs a weighted operation (Convolution, GEMM / MatMul) in INT8 only when *all* of its inputs are quantized
("Quantize all inputs of weighted-operations"): each comes from an INT8 DequantizeLinear, which TensorRT
fuses into the layer; DQ nodes are propagated forward through the layers that commute with them, of which
the data-movement ops (Reshape, Transpose/Shuffle, Squeeze, Unsqueeze, Flatten) are the ones a BERT graph
puts between a DQ and its GEMM. A GEMM with one float input (a kept-float site) runs in FP32/FP16. TensorRT
quantizes to signed INT8 with zero point 0 only, so a DequantizeLinear of uint8 does not count.

Integer exports compute their GEMMs in integers: `ibert::IntMatMul` (and a plain MatMulInteger) is one
8-bit GEMM; `ibert::IntMatMulWide` (a 16-bit input split into two 8-bit digits, two 8-bit GEMMs) counts as
INT8 too and is reported apart ("split"), because it is twice the GEMMs. In the TensorRT form of an
integer graph (trt_runtime/backends/tensorrt/integer_form.py) an IntMatMulWide is two MatMuls on int8 Q/DQ
inputs, which this rule counts as two INT8 GEMMs with no special case (each with its weight's work: the
work the engine does).

The GEMMs fall in three groups, reported separately:
- linear layers of the encoder (a constant weight; nodes under the encoder's scope): weighted by their
  work, weight elements x tokens; every encoder GEMM runs on every token, so the share is by weight size;
- attention matmuls (both inputs computed: scores and context); all have the same work (tokens^2 x hidden
  per layer), so they are counted;
- the heads and the pooler (constant weight, outside the encoder), which the quantized modes keep float
  by design (I-BERT, QDQBERT); counted, not weighted.

    report = int8_share(onnx.load("out/model.onnx", load_external_data=False))
    report.line()        # one line for the export log and `trt_runtime build`
    report.to_dict()     # what export.json records ("int8_share")
    print(format_report(report.to_dict()))

Like the rest of the contract this is standard library + NumPy: the graph is read through the fields of
onnx's protobuf classes (ModelProto.graph.node / .initializer, NodeProto, TensorProto.data_type / .dims),
without importing onnx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trt_runtime.contract import ibert

#: TensorProto.DataType INT8 (onnx/onnx.proto, stable since IR version 3)
TENSOR_INT8 = 3


#: the weighted operations of TensorRT's rule
GEMM_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
#: integer GEMMs: one 8-bit GEMM; a 16-bit input split into two 8-bit GEMMs
INTEGER_GEMMS = {(ibert.DOMAIN, "IntMatMul"): "int8", ("", "MatMulInteger"): "int8", (ibert.DOMAIN, "IntMatMulWide"): "split"}
#: data-movement ops that a DequantizeLinear propagates through to its GEMM (TensorRT's commuting layers)
SHAPE_ONLY_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
#: what export.json's "int8_share" states as the rule it was computed by
RULE = (
    "TensorRT explicit quantization: a GEMM (MatMul/Gemm/Conv) is INT8 when every data input comes from an int8 "
    "DequantizeLinear through shape-only ops; integer exports: IntMatMul/MatMulInteger INT8, IntMatMulWide "
    "(16-bit input as two 8-bit GEMMs) INT8 'split', two INT8 MatMuls in the TensorRT form"
)
GROUPS = ("linear", "attention", "heads")
_GROUP_TITLES = {"linear": "encoder linear layers", "attention": "attention matmuls", "heads": "heads and pooler"}


@dataclass(frozen=True)
class GemmPrecision:
    """One GEMM of the graph: its group, work, and whether it runs in INT8 (and if not, why)."""

    node: str
    group: str  # "linear" | "attention" | "heads"
    work: int  # weight elements (linear, heads: the work per token); 1 for an attention matmul
    precision: str  # "int8" | "split" (two 8-bit GEMMs) | "float"
    reason: str = ""  # float: the input that is not int8 Q/DQ

    @property
    def int8(self) -> bool:
        return self.precision != "float"


@dataclass(frozen=True)
class Int8Share:
    gemms: tuple[GemmPrecision, ...]

    def group(self, name: str) -> list[GemmPrecision]:
        return [g for g in self.gemms if g.group == name]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"rule": RULE}
        for name in GROUPS:
            members = self.group(name)
            data[name] = {
                "gemms": len(members),
                "int8_gemms": sum(g.int8 for g in members),
                "split_gemms": sum(g.precision == "split" for g in members),
                "work": sum(g.work for g in members),
                "int8_work": sum(g.work for g in members if g.int8),
                "split_work": sum(g.work for g in members if g.precision == "split"),
            }
        data["float_gemms"] = [
            {"node": g.node, "group": g.group, "work": g.work, "reason": g.reason} for g in self.gemms if not g.int8
        ]
        return data

    def line(self) -> str:
        return summary_line(self.to_dict())


# --- the rule ------------------------------------------------------------------------------------------


class _Graph:
    def __init__(self, model: Any):  # an onnx.ModelProto
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        # TensorProtos, read for their dtype and size only (external data is never loaded)
        self.constants: dict[str, Any] = {i.name: i for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = value.t

    def source(self, tensor: str, through: tuple[str, ...] = SHAPE_ONLY_OPS) -> tuple[str, Any]:
        """The tensor (and its producer) that `tensor` is, seen through `through` ops."""
        node = self.producer.get(tensor)
        while node is not None and node.domain in ("", "ai.onnx") and node.op_type in through and node.input:
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor, node

    def int8_dequantized(self, tensor: str) -> tuple[bool, str]:
        """Whether `tensor` is an int8 DequantizeLinear's output (through shape-only ops); else why not."""
        _, node = self.source(tensor)
        if node is None:
            return False, f"{tensor} is a float {'constant' if tensor in self.constants else 'graph input'}"
        if node.op_type != "DequantizeLinear":
            return False, f"reads {node.op_type} {node.name or tensor}, not an int8 DequantizeLinear"
        return (True, "") if self._is_int8(node.input[0]) else (False, f"{node.name}: DequantizeLinear of a non-int8 tensor")

    def _is_int8(self, tensor: str) -> bool:
        if tensor in self.constants:
            return bool(self.constants[tensor].data_type == TENSOR_INT8)
        quantize = self.producer.get(tensor)
        if quantize is None or quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3:
            return False  # no zero point: uint8 (ONNX's default), which TensorRT does not take
        zero_point = self.constants.get(quantize.input[2])
        return zero_point is not None and zero_point.data_type == TENSOR_INT8

    def weight(self, tensor: str) -> Any:
        """The constant weight behind a GEMM input (through shape-only ops, a DequantizeLinear, a Cast)."""
        tensor, node = self.source(tensor, SHAPE_ONLY_OPS + ("DequantizeLinear", "Cast"))
        return self.constants.get(tensor) if node is None else None


def _group(node: Any, has_weight: bool) -> str:
    if not has_weight:
        return "attention"
    return "linear" if "/encoder/" in f"/{node.name.strip('/')}/" else "heads"


def int8_share(model: Any) -> Int8Share:
    """Every GEMM of the main graph of `model` (an onnx.ModelProto; external data need not be loaded) with its
    precision under TensorRT's rule (see the module docstring)."""
    graph = _Graph(model)
    gemms = []
    for node in model.graph.node:
        integer = INTEGER_GEMMS.get((node.domain, node.op_type))
        if integer is None and (node.domain not in ("", "ai.onnx") or node.op_type not in GEMM_OPS):
            continue
        data_inputs = [name for name in node.input[:2] if name]
        weights = [w for w in (graph.weight(name) for name in data_inputs) if w is not None]
        group = _group(node, bool(weights))
        work = int(np.prod(weights[0].dims)) if weights else 1
        if integer is not None:
            gemms.append(GemmPrecision(node.name, group, work, integer))
            continue
        reasons = [why for ok, why in (graph.int8_dequantized(name) for name in data_inputs) if not ok]
        precision = "float" if reasons else "int8"
        gemms.append(GemmPrecision(node.name, group, work, precision, "; ".join(reasons)))
    return Int8Share(tuple(gemms))


# --- text ----------------------------------------------------------------------------------------------


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def summary_line(data: Mapping[str, Any]) -> str:
    """One line from export.json's "int8_share": the linear share by work, attention and heads counted."""
    linear, attention, heads = (data[name] for name in GROUPS)
    text = (
        f"INT8 share: encoder linear GEMM work {_percent(linear['int8_work'], linear['work'])} "
        f"({linear['int8_gemms']} of {linear['gemms']} GEMMs"
    )
    if linear["split_gemms"]:
        text += f", {linear['split_gemms']} as two 8-bit GEMMs: {_percent(linear['split_work'], linear['work'])} of the work"
    text += f"), attention matmuls {attention['int8_gemms']} of {attention['gemms']}"
    if attention["split_gemms"]:
        text += f" ({attention['split_gemms']} split)"
    if heads["gemms"]:
        text += f", heads and pooler {heads['int8_gemms']} of {heads['gemms']}"
    return text


def format_report(data: Mapping[str, Any]) -> str:
    """The report `--report` prints: the summary, a table per group, and every float GEMM with its reason."""
    lines = [summary_line(data), f"rule: {data['rule']}", ""]
    lines.append(f"{'group':<24} {'GEMMs':>6} {'INT8':>6} {'split':>6} {'INT8 work':>10}")
    for name in GROUPS:
        group = data[name]
        lines.append(
            f"{_GROUP_TITLES[name]:<24} {group['gemms']:>6} {group['int8_gemms']:>6} {group['split_gemms']:>6} "
            f"{_percent(group['int8_work'], group['work']):>10}"
        )
    floats = data["float_gemms"]
    if floats:
        lines += ["", f"float GEMMs ({len(floats)}):"]
        lines += [f"  [{g['group']}] {g['node']}: {g['reason']}" for g in floats]
    return "\n".join(lines)
