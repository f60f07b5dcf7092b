"""Q/DQ laid out as TensorRT's explicit quantization expects it.

torch.onnx.export turns each fake quantizer into a QuantizeLinear -> DequantizeLinear pair, weights
included (float weight -> Q -> DQ). This pass, on the folded graph:

- checks every Q/DQ is INT8 with zero point 0 (TensorRT supports only symmetric signed INT8) and a
  positive constant scale: per-tensor for activations, per-channel on the output-channel axis for weights;
- stores each quantized weight as an INT8 initializer followed by DequantizeLinear (no QuantizeLinear):
  a quarter of the float weight's bytes on disk, and the form TensorRT 10 and ONNX Runtime both take
  for constant weights. The int8 values are QuantizeLinear's own definition, round-half-to-even(w / scale)
  clamped to [-128, 127], so the graph computes exactly what the float -> Q -> DQ graph did;
- folds the Transpose that `F.linear` puts between a weight and its MatMul into the int8 initializer and
  moves the DQ axis with it (axis 0 of the [out, in] weight becomes axis 1 of the [in, out] MatMul
  operand), so TensorRT sees DQ -> MatMul with per-channel scales on the output-channel (column) axis;
- merges the smoothing divisions (SmoothQuant, a per-channel Div before the QuantizeLinear) of one tensor
  by equal scales, then Q/DQ pairs that quantize the same tensor with the same scale (the query, key and value
  projections read one tensor through three equal quantizers): one pair lets TensorRT fuse the three
  GEMMs horizontally.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from trt_runtime.contract.errors import VALIDATION_FAILED, QbertError

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
#: consumers into which TensorRT fuses a DequantizeLinear (and the residual Add it fuses into a GEMM/conv)
FUSIBLE_CONSUMERS = ("MatMul", "Gemm", "Conv", "Add")


class QdqLayoutError(QbertError, RuntimeError):
    """The fake-quantized model exported Q/DQ that TensorRT's explicit quantization cannot take."""

    code = "qdq-layout"
    exit_code = VALIDATION_FAILED


@dataclass(frozen=True)
class QdqSummary:
    weights: int  # weight tensors stored as int8 + DequantizeLinear
    transposes_folded: int
    activation_pairs: int  # after merging
    merged_pairs: int  # activation Q/DQ pairs that repeated another one (same tensor, same scale)
    unfused: tuple[str, ...]  # DequantizeLinear nodes none of whose consumers TensorRT fuses


def _constant(tensor: gs.Tensor, what: str, node: gs.Node) -> np.ndarray:
    if not isinstance(tensor, gs.Constant):
        raise QdqLayoutError(f"{node.name}: {what} must be a constant for TensorRT, got a computed tensor {tensor.name}")
    return np.asarray(tensor.values)


def _scale_and_zero_point(node: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    if len(node.inputs) < 3:
        raise QdqLayoutError(f"{node.name}: no zero point, so ONNX makes it uint8; TensorRT needs int8 zero point 0")
    scale = _constant(node.inputs[1], "the scale", node)
    zero_point = _constant(node.inputs[2], "the zero point", node)
    if zero_point.dtype != np.int8 or np.any(zero_point != 0):
        raise QdqLayoutError(
            f"{node.name}: zero point {zero_point.dtype} {zero_point.ravel()[:4]}...; TensorRT's explicit "
            "quantization needs symmetric int8 (zero point 0): use signed quantizers"
        )
    if not np.all(scale > 0) or not np.all(np.isfinite(scale)):
        raise QdqLayoutError(f"{node.name}: scales must be positive and finite; calibrate every enabled quantizer")
    return scale, zero_point


def quantize_like_onnx(values: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """QuantizeLinear with int8 zero point 0: saturate(round_half_even(x / scale)) (the ONNX definition)."""
    if scale.size > 1:  # per channel along `axis`
        assert axis is not None
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
    return np.clip(np.rint(values.astype(np.float32) / scale.astype(np.float32)), -128, 127).astype(np.int8)


def _is_matmul_weight_transpose(node: gs.Node) -> bool:
    return (
        node.op == "Transpose"
        and list(node.attrs.get("perm", [1, 0])) == [1, 0]
        and bool(node.outputs[0].outputs)
        and all(c.op == "MatMul" for c in node.outputs[0].outputs)
    )


def _fold_weight_transposes(graph: gs.Graph, dq: gs.Node, quantized: np.ndarray, axis: int | None) -> int:
    """DQ(w[out, in], axis 0) -> Transpose -> MatMul  becomes  DQ(w.T[in, out], axis 1) -> MatMul."""
    if quantized.ndim != 2:
        return 0
    folded = 0
    for transpose in [c for c in dq.outputs[0].outputs if _is_matmul_weight_transpose(c)]:
        weight_name = dq.inputs[0].name.removesuffix(".int8")
        transposed = gs.Constant(f"{weight_name}.T.int8", np.ascontiguousarray(quantized.T))
        moved = gs.Variable(f"{weight_name}.T.dequantized", dtype=np.float32)
        attrs = {"axis": 1} if axis is not None else {}
        graph.nodes.append(
            gs.Node(DEQUANTIZE, dq.name, attrs, [transposed, *dq.inputs[1:]], [moved])
        )
        out = transpose.outputs[0]
        for consumer in list(out.outputs):
            consumer.inputs[consumer.inputs.index(out)] = moved
        transpose.outputs.clear()
        folded += 1
    return folded


def _weight_name(weight: gs.Constant, q: gs.Node) -> str:
    """The parameter's checkpoint name, also when folding (narrow-range clamp) renamed the constant."""
    if not _generated(weight.name):
        return weight.name
    scope = q.name.rpartition("/")[0].strip("/").replace("/", ".")
    return scope.removesuffix("._weight_quantizer") + ".weight" if scope else weight.name


def _store_weights_as_int8(graph: gs.Graph) -> tuple[int, int]:
    weights = folded = 0
    for q in [n for n in graph.nodes if n.op == QUANTIZE and isinstance(n.inputs[0], gs.Constant)]:
        weight = q.inputs[0]
        scale, zero_point = _scale_and_zero_point(q)
        axis = q.attrs.get("axis", 1) if scale.size > 1 else None
        if scale.size > 1 and axis not in (0, -weight.values.ndim):
            raise QdqLayoutError(f"{q.name}: weight {weight.name} is quantized on axis {axis}; TensorRT needs axis 0")
        dequantizers = list(q.outputs[0].outputs)
        if not dequantizers or any(d.op != DEQUANTIZE for d in dequantizers):
            raise QdqLayoutError(f"{q.name}: a weight QuantizeLinear must feed only DequantizeLinear nodes")
        quantized = quantize_like_onnx(np.asarray(weight.values), scale, axis)
        int8_weight = gs.Constant(f"{_weight_name(weight, q)}.int8", quantized)
        for dq in dequantizers:
            dq.inputs[0] = int8_weight
            folded += _fold_weight_transposes(graph, dq, quantized, axis)
        q.outputs.clear()
        weights += 1
    graph.cleanup()
    return weights, folded


def _key(node: gs.Node) -> tuple:
    scale, zero_point = _scale_and_zero_point(node)
    return (id(node.inputs[0]), scale.tobytes(), zero_point.tobytes(), node.attrs.get("axis", 1))


def _merge_duplicates(graph: gs.Graph, op: str) -> int:
    groups: dict[tuple, list[gs.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == op and not isinstance(node.inputs[0], gs.Constant):
            groups[_key(node)].append(node)
    merged = 0
    for nodes in groups.values():
        keep = nodes[0]
        for duplicate in nodes[1:]:
            out = duplicate.outputs[0]
            if out in graph.outputs:
                continue
            for consumer in list(out.outputs):
                consumer.inputs[consumer.inputs.index(out)] = keep.outputs[0]
            duplicate.outputs.clear()
            merged += 1
    graph.cleanup()
    return merged


def _merge_smoothing_divisions(graph: gs.Graph) -> int:
    """Merge the Div nodes that divide one tensor by equal constants (SmoothQuant's per-channel scale, shared
    by the query, key and value projections: models.quantization.smoothing), so their Q/DQ pairs merge too."""
    groups: dict[tuple, list[gs.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "Div" and len(node.inputs) == 2 and isinstance(node.inputs[1], gs.Constant):
            divisor = np.asarray(node.inputs[1].values)
            groups[(id(node.inputs[0]), divisor.dtype.str, divisor.shape, divisor.tobytes())].append(node)
    merged = 0
    for nodes in groups.values():
        for duplicate in nodes[1:]:
            out = duplicate.outputs[0]
            if out in graph.outputs:
                continue
            for consumer in list(out.outputs):
                consumer.inputs[consumer.inputs.index(out)] = nodes[0].outputs[0]
            duplicate.outputs.clear()
            merged += 1
    graph.cleanup()
    return merged


def _check_activation_pairs(graph: gs.Graph) -> tuple[int, tuple[str, ...]]:
    pairs, unfused = 0, []
    for node in graph.nodes:
        if node.op == QUANTIZE:
            _scale_and_zero_point(node)
            if node.attrs.get("axis") is not None and np.asarray(node.inputs[1].values).size > 1:
                raise QdqLayoutError(f"{node.name}: activations must be quantized per tensor for TensorRT")
            if not node.outputs[0].outputs or any(c.op != DEQUANTIZE for c in node.outputs[0].outputs):
                raise QdqLayoutError(f"{node.name}: QuantizeLinear must be followed by DequantizeLinear (a Q/DQ pair)")
            pairs += 1
        elif node.op == DEQUANTIZE:
            _scale_and_zero_point(node)
            source = node.inputs[0]
            if not isinstance(source, gs.Constant) and not (source.inputs and source.inputs[0].op == QUANTIZE):
                raise QdqLayoutError(f"{node.name}: DequantizeLinear of a computed tensor must follow a QuantizeLinear")
            if not any(c.op in FUSIBLE_CONSUMERS for c in node.outputs[0].outputs):
                unfused.append(node.name)
    return pairs, tuple(unfused)


def _generated(name: str) -> bool:
    return name.startswith(("onnx::", "/")) or name.isdigit()


def name_quantization_constants(graph: gs.Graph) -> None:
    """`/Div_output_0` -> `bert.encoder.layer.0.attention.self.query.weight.scale`, and so on for zero points."""
    taken = set(graph.tensors())
    for node in graph.nodes:
        if node.op not in (QUANTIZE, DEQUANTIZE):
            continue
        source = node.inputs[0]
        if isinstance(source, gs.Constant):
            base = source.name.removesuffix(".int8")
        else:
            base = node.name.rpartition("/")[0].strip("/").replace("/", ".") or source.name
        for tensor, role in zip(node.inputs[1:3], ("scale", "zero_point")):
            name = f"{base}.{role}"
            if isinstance(tensor, gs.Constant) and _generated(tensor.name) and name not in taken:
                taken.add(name)
                tensor.name = name


def check_counts(summary: QdqSummary, weight_quantizers: int, activation_quantizers: int) -> None:
    """Every enabled quantizer of the module became exactly one Q/DQ pair (or merged into an equal one)."""
    pairs = summary.activation_pairs + summary.merged_pairs
    if summary.weights != weight_quantizers or pairs != activation_quantizers:
        raise QdqLayoutError(
            f"the graph has {summary.weights} quantized weights and {pairs} activation Q/DQ pairs, but the "
            f"model has {weight_quantizers} enabled weight and {activation_quantizers} activation quantizers: "
            "a bug in the export (a quantizer traced away or duplicated)"
        )


def layout_for_tensorrt(graph: gs.Graph) -> QdqSummary:
    """Rewrite the Q/DQ of a folded, fake-quantized graph in place (see the module docstring)."""
    weights, folded = _store_weights_as_int8(graph)
    _merge_smoothing_divisions(graph)
    merged = _merge_duplicates(graph, QUANTIZE)
    merged_dq = _merge_duplicates(graph, DEQUANTIZE)
    pairs, unfused = _check_activation_pairs(graph)
    name_quantization_constants(graph)
    graph.toposort()
    del merged_dq  # a DequantizeLinear duplicate only ever hangs off a merged QuantizeLinear
    return QdqSummary(weights, folded, pairs, merged, unfused)
