"""INT8 with FP16 the TensorRT 10 way: an ONNX whose float parts are FP16, built strongly typed.

In a strongly typed network TensorRT takes every tensor's type from the ONNX and refuses precision
flags (NvInfer.h v10.13: kFP16/kINT8 "Deprecated in TensorRT 10.12. Superseded by strong typing"; from
TensorRT 11.0 every network is strongly typed, NvInfer.h v11.1 `kSTRONGLY_TYPED` "Strongly typed mode
is always enabled", and trtexec 11.1 has no --fp16). So FP16 outside the INT8 GEMMs means FP16 tensors
in the graph: what ModelOpt's `quantize(..., high_precision_dtype="fp16")` produces for
`trtexec --stronglyTyped` (modelopt 0.47 onnx/quantization/precision_utils.py calls
`autocast.convert.convert_to_f16`). ModelOpt itself does not fit here: it requires torch and its
`[onnx]` extra (onnxruntime-gpu, cupy, onnx~=1.21), and trt_runtime must not need torch. This is the
same conversion, as one pass over the graph the builder prepared (`to_float16`):

- every float32 tensor of the main graph becomes float16: initializers and Constant values (clamped to
  +-65504 like ModelOpt's `init_max`, so HF's `finfo(float32).min` attention-mask constant stays finite
  and `0 * min` stays 0), Casts to float, ConstantOfShape values;
- Q/DQ scales become float16, so DequantizeLinear outputs float16 (ONNX opset 19 is the first whose
  Q/DQ take float16 scales; ModelOpt's convert_to_f16 raises the opset to 19 for the same reason). The
  opset is raised from 17/18 to 19 where Q/DQ nodes exist; between 17 and 19 only the Reduce* ops other
  than ReduceSum changed incompatibly (opset 18 moved `axes` from attribute to input), and those are
  rewritten; every other 18/19 change adds types or attributes whose defaults keep the old behaviour
  (onnx docs/Changelog.md);
- nodes that stay float32, behind Casts: `FLOAT32_OPS` (LayerNormalization: in a strongly typed network
  its compute precision follows its input type, NvInfer.h v10.13 `INormalizationLayer::setComputePrecision`,
  and the variance of a residual stream overflows FP16 easily) and any custom-domain node;
- the graph's inputs and outputs keep their types (Casts at the boundary), so export.json's I/O and
  the runner stay the same.

Not for integer (I-BERT) exports, which are refused: between their ibert ops the float32 tensors carry
integers times a scale, exact in float32 up to 2**24 but not in float16's 11 bits (measured on a tiny
I-BERT export: outputs off by 11 % of their range). Graphs with control flow or local functions are
refused too (BERT-family float and Q/DQ exports have neither). How far the FP16 form moves float and
Q/DQ outputs: docs/tensorrt.md ("FP16"), measured with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import heapq
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from trt_runtime.backends.tensorrt.onnx_prep import (
    QDQ_OPS,
    STANDARD_DOMAINS,
    OnnxForTensorRTError,
    iter_nodes,
    value_types,
)
from trt_runtime.contract import ibert

#: ops kept in float32 (see the module docstring)
FLOAT32_OPS = frozenset({"LayerNormalization"})
#: the first opset whose QuantizeLinear/DequantizeLinear take float16 scales
QDQ_FLOAT16_OPSET = 19
FP16_MAX = float(np.finfo(np.float16).max)
#: ops whose `axes` attribute became an input in opset 18 (ReduceSum did at 13)
_REDUCE_AXES_TO_INPUT = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSumSquare",
})
#: ops with an 18/19 version that only adds types or attributes whose defaults are the old behaviour
_COMPATIBLE_18_19 = frozenset({
    "AveragePool", "Cast", "CastLike", "Constant", "DequantizeLinear", "Equal", "Identity", "If", "Loop",
    "LpPool", "Pad", "QuantizeLinear", "Reshape", "Resize", "Scan", "ScatterElements", "ScatterND", "Shape",
    "Size", "Split",
})
#: ops that make a float tensor from an attribute, which would need converting too
_FLOAT_MAKERS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli"})


@dataclass
class Float16Summary:
    """What `to_float16` did, for engine.json and the build log."""

    float32_nodes: list[str]  # nodes kept in float32 behind Casts
    casts: int  # Casts inserted
    clamped: int  # initializer/constant values clamped to +-65504
    opset: int

    def to_dict(self) -> dict[str, object]:
        return {"float32_nodes": len(self.float32_nodes), "casts": self.casts, "clamped": self.clamped,
                "opset": self.opset}


def _default_opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def _set_default_opset(model: ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in STANDARD_DOMAINS:
            opset.version = version


def _fresh(names: set[str], stem: str) -> str:
    name, index = stem, 1
    while name in names:
        index += 1
        name = f"{stem}_{index}"
    names.add(name)
    return name


def _raise_opset(model: ModelProto, target: int, names: set[str]) -> None:
    """Raise the default-domain opset to `target` (>= the current one, <= 19), rewriting what changed."""
    current = _default_opset(model)
    if current >= target:
        return
    if current < 17:
        raise OnnxForTensorRTError(
            f"the FP16 form of a Q/DQ model needs ONNX opset {target} (float16 Q/DQ scales), and this model has "
            f"opset {current}, too old to raise here; re-export with opset 17 or later, or build without --fp16"
        )
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            continue
        if node.op_type in _REDUCE_AXES_TO_INPUT and current < 18:
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if axes is not None:
                name = _fresh(names, f"{node.name or node.output[0]}.axes")
                model.graph.initializer.append(numpy_helper.from_array(np.array(list(axes.ints), np.int64), name))
                kept = [a for a in node.attribute if a.name != "axes"]
                del node.attribute[:]
                node.attribute.extend(kept)
                node.input.append(name)
            continue
        before = onnx.defs.get_schema(node.op_type, current, "").since_version
        after = onnx.defs.get_schema(node.op_type, target, "").since_version
        if before != after and node.op_type not in _COMPATIBLE_18_19:
            raise OnnxForTensorRTError(
                f"node {node.name!r} ({node.op_type}) changed between ONNX opset {current} and {target}, which the "
                f"FP16 form of a Q/DQ model needs; re-export with opset {target}, or build without --fp16"
            )
    _set_default_opset(model, target)


def _keeps_float32(node: NodeProto, float32_ops: frozenset[str]) -> bool:
    return node.domain not in STANDARD_DOMAINS or node.op_type in float32_ops  # custom ops: float32 interfaces


def _to_float16_array(array: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 -> float16, finite values clamped to +-65504; returns (array, how many were clamped)."""
    finite = np.isfinite(array)
    clamped = int(np.count_nonzero(finite & (np.abs(array) > FP16_MAX)))
    return np.where(finite, np.clip(array, -FP16_MAX, FP16_MAX), array).astype(np.float16), clamped


def _check_scale(name: str, original: np.ndarray, converted: np.ndarray) -> None:
    bad = (converted == 0) & (original != 0) | ~np.isfinite(converted.astype(np.float32))
    if bad.any():
        raise OnnxForTensorRTError(
            f"Q/DQ scale {name!r} has values ({original[bad].ravel()[:3].tolist()}) that float16 cannot hold; "
            f"build without --fp16 (float32), or recalibrate"
        )


def to_float16(
    model: ModelProto, base_dir: str | os.PathLike | None = None, float32_ops: frozenset[str] = FLOAT32_OPS
) -> tuple[ModelProto, Float16Summary]:
    """A copy of `model` with its float parts in FP16 (see the module docstring) and a summary of the edit.

    base_dir: the model's directory, for weights stored as external data (converted weights are stored
    inline). Raises OnnxForTensorRTError for a graph this pass cannot convert, saying what to do.
    """
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        raise OnnxForTensorRTError(
            "--fp16 does not convert graphs with control flow (If/Loop/Scan); build without --fp16 (float32)"
        )
    makers = sorted({n.op_type for n in model.graph.node if n.op_type in _FLOAT_MAKERS})
    if makers:
        raise OnnxForTensorRTError(f"--fp16 does not convert {', '.join(makers)} nodes; build without --fp16 (float32)")

    if any(node.domain == ibert.DOMAIN for node in iter_nodes(model.graph)):
        raise OnnxForTensorRTError(
            "--fp16 does not apply to integer (I-BERT) exports: their float32 tensors between the ibert ops carry "
            "integers times a scale, exact in float32 (to 2**24) but rounded to 11 bits in float16, which breaks "
            "the integer arithmetic (docs/tensorrt.md, FP16). Build without --fp16"
        )
    if model.functions:
        raise OnnxForTensorRTError(
            f"--fp16 does not convert graphs with local functions ({', '.join(f.name for f in model.functions)}); "
            f"build without --fp16 (float32)"
        )
    types = value_types(model)
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    names |= {o for n in iter_nodes(graph) for o in n.output} | {n.name for n in graph.node}
    if any(n.op_type in QDQ_OPS for n in graph.node):
        _raise_opset(out, QDQ_FLOAT16_OPSET, names)

    float32_nodes = [n for n in graph.node if _keeps_float32(n, float32_ops)]
    float32_ids = {id(n) for n in float32_nodes}
    is_float = {name for name, kind in types.items() if kind == TensorProto.FLOAT}
    base = str(base_dir) if base_dir is not None else ""

    # who needs each float tensor in which precision
    needs: dict[str, set[int]] = defaultdict(set)
    for node in graph.node:
        for name in node.input:
            if name in is_float:
                needs[name].add(TensorProto.FLOAT if id(node) in float32_ids else TensorProto.FLOAT16)
    outputs = {o.name for o in graph.output}
    for name in outputs & is_float:
        needs[name].add(TensorProto.FLOAT)

    # float constants: converted in place when only FP16 nodes read them, copied when both kinds do
    renamed: dict[tuple[str, int], str] = {}
    clamped = 0
    scale_names = {n.input[i] for n in graph.node if n.op_type in QDQ_OPS for i in (1,) if len(n.input) > 1}
    initializers = {t.name: t for t in graph.initializer}
    for name, tensor in list(initializers.items()):
        if tensor.data_type != TensorProto.FLOAT or TensorProto.FLOAT16 not in needs.get(name, ()):
            continue
        array = numpy_helper.to_array(tensor, base_dir=base)
        half, count = _to_float16_array(array)
        clamped += count
        if name in scale_names:
            _check_scale(name, array, half)
        if TensorProto.FLOAT in needs[name] or name in outputs:
            copy = _fresh(names, f"{name}.fp16")
            graph.initializer.append(numpy_helper.from_array(half, copy))
            renamed[(name, TensorProto.FLOAT16)] = copy
        else:
            tensor.CopyFrom(numpy_helper.from_array(half, name))
    for node in list(graph.node):
        if node.op_type != "Constant" or node.domain not in STANDARD_DOMAINS or node.output[0] not in is_float:
            continue
        name = node.output[0]
        if TensorProto.FLOAT16 not in needs.get(name, ()):
            continue
        value = next(a for a in node.attribute if a.name.startswith("value"))
        array = (numpy_helper.to_array(value.t) if value.type == AttributeProto.TENSOR
                 else np.asarray(helper.get_attribute_value(value), np.float32))
        half, count = _to_float16_array(array)
        clamped += count
        target = name
        if TensorProto.FLOAT in needs[name] or name in outputs:
            target = _fresh(names, f"{name}.fp16")
            renamed[(name, TensorProto.FLOAT16)] = target
            graph.node.append(helper.make_node("Constant", [], [target], name=_fresh(names, f"{node.name}.fp16")))
            node = graph.node[-1]
        kept = [a for a in node.attribute if not a.name.startswith("value")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("value", numpy_helper.from_array(half, target))])

    # the ops that make float tensors make float16 ones
    for node in graph.node:
        if id(node) in float32_ids:
            continue
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
        elif node.op_type == "ConstantOfShape":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    half, count = _to_float16_array(numpy_helper.to_array(attribute.t))
                    clamped += count
                    attribute.t.CopyFrom(numpy_helper.from_array(half, attribute.t.name))

    # Casts where a producer's precision differs from a reader's
    constants = set(initializers) | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    producer_precision: dict[str, int] = {}
    for node in graph.node:
        for name in node.output:
            if name in is_float and name not in constants:
                producer_precision[name] = TensorProto.FLOAT if id(node) in float32_ids else TensorProto.FLOAT16
    for tensor in graph.input:
        if tensor.name in is_float:
            producer_precision[tensor.name] = TensorProto.FLOAT
    casts: list[NodeProto] = []

    def cast_of(name: str, to: int) -> str:
        key = (name, to)
        if key not in renamed:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            renamed[key] = _fresh(names, f"{name}.{suffix}")
            casts.append(helper.make_node("Cast", [name], [renamed[key]], to=to, name=_fresh(names, f"{name}.cast_{suffix}")))
        return renamed[key]

    for node in graph.node:
        want = TensorProto.FLOAT if id(node) in float32_ids else TensorProto.FLOAT16
        for index, name in enumerate(node.input):
            if name not in is_float:
                continue
            if name in constants:
                if want == TensorProto.FLOAT16 and (name, want) in renamed:
                    node.input[index] = renamed[(name, want)]
            elif producer_precision.get(name) != want:
                node.input[index] = cast_of(name, want)
    # graph outputs keep float32: an FP16 producer writes <name>.fp16, a Cast gives the output its name
    for output in graph.output:
        if producer_precision.get(output.name) == TensorProto.FLOAT16:
            producer = next(n for n in graph.node if output.name in n.output)
            inner = _fresh(names, f"{output.name}.fp16")
            producer.output[list(producer.output).index(output.name)] = inner
            for node in graph.node:
                for index, name in enumerate(node.input):
                    if name == output.name:
                        node.input[index] = inner
            casts.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                          name=_fresh(names, f"{output.name}.cast_fp32")))
    graph.node.extend(casts)
    del graph.value_info[:]  # stale types; TensorRT and ONNX infer them again
    _toposort(graph)
    return out, Float16Summary([n.name for n in float32_nodes], len(casts), clamped, _default_opset(out))


def _toposort(graph: onnx.GraphProto) -> None:
    """Order the nodes so that every input is produced before it is read (the Casts were appended);
    Kahn's algorithm, keeping the original order among nodes that are ready together."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        sources = {producer[name] for name in node.input if name in producer}
        waiting[index] = len(sources)
        for source in sources:
            readers[source].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(nodes):
        raise OnnxForTensorRTError("the FP16 form has a cycle; report this as a bug")
    ordered = [NodeProto() for _ in order]
    for copy, index in zip(ordered, order):
        copy.CopyFrom(nodes[index])
    del graph.node[:]
    graph.node.extend(ordered)
