"""The TensorRT form of an integer export, derived from model.onnx at `trt_runtime build` time.

An integer export is one exact integer arithmetic (trt_runtime.contract.ibert): integer tensors between
`ibert` nodes, GEMMs as `IntMatMul` / `IntMatMulWide`, requantizations as `Requantize` /
`RequantizeWide`. TensorRT takes INT8 GEMMs only through Q/DQ (onnx-tensorrt's docs/operators.md, 10.1
GA: MatMulInteger is not supported, INT8 "through quantization from a floating-point type"), so the
builder rewrites the graph into the float form TensorRT builds from, with the same weights:

- every quantized integer tensor T (a value on a grid s: the graph's ibert nodes declare the grids of
  their inputs and outputs) gets a float twin T x s;
- `IntMatMul(A, B)` becomes MatMul(A x a_scale, DequantizeLinear(B int8, b_scale)): with A coming from an
  8-bit requantization (a Q/DQ pair), TensorRT fuses it into an INT8 GEMM; `IntMatMulWide` (16-bit A)
  becomes two INT8 GEMMs on A's high and low 8-bit digits (`_Form.wide_matmul`), exact while the sums
  stay below 2**24, so every GEMM of an integer export runs in INT8 in the engine;
- `Requantize` to 8 bits becomes QuantizeLinear / DequantizeLinear with the output scale, other widths
  Div / Round / Clip / Mul, each input rounded on its own as FixedPointMul does: TensorRT's float-scale
  requantization instead of the dyadic one (how far that moves an engine: docs/integer.md, "The
  TensorRT form", measured by `emulate`);
- IntGELU / IntSoftmax / IntLayerNorm keep their node, with the float interface of the TensorRT plugins
  (X = integer x input_scale in, integer x output_scale out; trt_runtime.contract.ibert.ibert_op); for
  --no-plugins they get model-local functions that wrap the export's own integer bodies between a
  quantization of X and a dequantization of Y, and their integer constants as attributes, so that
  TensorRT builds them from standard layers of the types its parser supports;
- bias adds, the attention mask, reshapes and the dequantization before the float heads act on the
  twins; integer tensors that are not quantized values (token ids, positions, shapes) stay as they are.

Graphs without integer ibert ops (float and qdq exports, plugin-form test models) pass unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from trt_runtime.backends.tensorrt.plugins.specs import PLUGINS
from trt_runtime.contract import ibert

#: the ops of the exported integer graph that the TensorRT form rewrites away
INTEGER_ONLY_OPS = ("IntMatMul", "IntMatMulWide", "Requantize", "RequantizeWide")
NONLINEAR_OPS = ("IntGELU", "IntSoftmax", "IntLayerNorm")
#: ops that move integers without changing them: they act on the twins unchanged (first input = data)
_DATA_MOVEMENT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Slice")
_INTEGER_TYPES = (TensorProto.INT8, TensorProto.INT32, TensorProto.INT64)
_F32 = np.float32


class IntegerFormError(ValueError):
    """An integer export the TensorRT form cannot be derived from; the message names the node."""


def is_integer_graph(model: ModelProto) -> bool:
    """Whether the graph is an exported integer graph (integer GEMMs or requantizations in the main graph)."""
    return any(node.domain == ibert.DOMAIN and node.op_type in INTEGER_ONLY_OPS for node in model.graph.node)


def _constant_names(op_type: str) -> tuple[str, ...]:
    return ibert.INTEGER_CONSTANT_ATTRIBUTES.get(op_type, ())


def _attrs(node: NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _describe(node: NodeProto) -> str:
    return f"node {node.name!r} ({node.domain or 'ai.onnx'}::{node.op_type})"


def _scale(values: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(values, _F32))


class _Form:
    """The rewrite of one graph: twins of quantized tensors, their grids, the new nodes and initializers."""

    def __init__(self, model: ModelProto, use_plugins: bool):
        self.model = model
        self.graph = model.graph
        self.use_plugins = use_plugins
        self.initializers = {t.name: t for t in self.graph.initializer}
        for node in self.graph.node:  # Constant nodes hold constants too
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.initializers[node.output[0]] = value
        self.producers = {o: n for n in self.graph.node for o in n.output}
        self.grid: dict[str, np.ndarray] = {}
        self.twin: dict[str, str] = {}
        self.float_of: dict[str, str] = {}  # Cast(int -> float) output -> the integer tensor it holds
        self.nodes: list[NodeProto] = []
        self.new_initializers: list[TensorProto] = []
        self.names = {o for n in self.graph.node for o in n.output} | set(self.initializers) | {i.name for i in self.graph.input}
        self.count = 0

    # -- helpers ------------------------------------------------------------------------------------

    def fresh(self, stem: str) -> str:
        self.count += 1
        name = f"{stem}.tensorrt_{self.count}"
        while name in self.names:
            self.count += 1
            name = f"{stem}.tensorrt_{self.count}"
        self.names.add(name)
        return name

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.new_initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def add(self, op_type: str, inputs: Sequence[str], stem: str, domain: str = "", **attributes: Any) -> str:
        output = self.fresh(stem)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, domain=domain, **attributes))
        return output

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def channel_scale(self, scale: np.ndarray, stem: str) -> str:
        return self.constant(stem, scale.reshape(-1) if scale.size > 1 else scale.reshape(()))

    # -- grids: declared by the ibert nodes, carried through data movement ---------------------------

    def declare(self, name: str, scale: np.ndarray) -> None:
        if name and name not in self.grid:
            self.grid[name] = _scale(scale)
            producer = self.producers.get(name)
            if producer is not None and (producer.op_type in ("Cast", "Gather") or producer.op_type in _DATA_MOVEMENT):
                if producer.op_type != "Cast" or self._integer_cast(producer):
                    self.declare(producer.input[0], scale)
            elif producer is not None and producer.op_type == "Add" and producer.domain in ("", "ai.onnx"):
                for operand in producer.input:
                    self.declare(operand, scale)
            elif producer is not None and producer.op_type == "Where" and producer.domain in ("", "ai.onnx"):
                self.declare(producer.input[2], scale)

    def _integer_cast(self, node: NodeProto) -> bool:
        return _attrs(node)["to"] in _INTEGER_TYPES and self._type(node.input[0]) in _INTEGER_TYPES

    def _type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        return self.types.get(name)

    def collect_grids(self) -> None:
        inferred = onnx.shape_inference.infer_shapes(self.model)
        self.types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        self.types.update({i.name: i.type.tensor_type.elem_type for i in self.graph.input})
        for node in self.graph.node:
            if node.domain != ibert.DOMAIN:
                continue
            a = _attrs(node)
            if node.op_type in ("Requantize", "RequantizeWide"):
                self.declare(node.input[0], a["input_scale"])
                if a["identity_scale"]:
                    self.declare(node.input[1], a["identity_scale"])
                self.declare(node.output[0], a["output_scale"])
            elif node.op_type in ("IntMatMul", "IntMatMulWide"):
                self.declare(node.input[0], a["a_scale"])
                self.declare(node.input[1], a["b_scale"])
                self.declare(node.output[0], (_scale(a["a_scale"]) * _scale(a["b_scale"])).astype(_F32))
            elif node.op_type in NONLINEAR_OPS:
                self.declare(node.input[0], a["input_scale"])
                self.declare(node.output[0], a["output_scale"])

    # -- the rewrite ----------------------------------------------------------------------------------

    def twin_of(self, name: str, scale: np.ndarray | None = None, stem: str = "") -> str:
        """The float twin of integer tensor `name` (x its grid), rescaled to `scale` if given and different."""
        if name not in self.twin:
            if not self.is_constant(name):
                producer = self.producers.get(name)
                raise IntegerFormError(
                    f"{_describe(producer) if producer else name}: its integer output {name!r} has no TensorRT "
                    f"form (no float twin); re-export the model with this version"
                )
            integers = self.value(name).astype(np.float64)
            grid = self.grid[name]
            shape = [1] * integers.ndim
            if grid.size > 1:
                shape[-1] = -1
            self.twin[name] = self.constant(f"{name}.float", (integers * grid.reshape(shape)).astype(_F32))
        twin = self.twin[name]
        if scale is not None and not np.array_equal(np.broadcast_to(_scale(scale), self.grid[name].shape), self.grid[name]):
            ratio = (_scale(scale).astype(np.float64) / self.grid[name].astype(np.float64)).astype(_F32)
            twin = self.add("Mul", [twin, self.channel_scale(ratio, f"{stem or name}.grid")], f"{stem or name}.rescaled")
        return twin

    def rewrite(self, node: NodeProto) -> None:
        quantized_inputs = [i for i in node.input if i in self.grid]
        quantized_outputs = [o for o in node.output if o in self.grid]
        if node.domain == ibert.DOMAIN:
            {
                "IntMatMul": self.matmul, "IntMatMulWide": self.matmul, "Requantize": self.requantize,
                "RequantizeWide": self.requantize, "IntGELU": self.nonlinear, "IntSoftmax": self.nonlinear,
                "IntLayerNorm": self.nonlinear,
            }[node.op_type](node)
            return
        if node.op_type == "Cast" and node.input[0] in self.float_of:
            raise IntegerFormError(f"{_describe(node)}: a cast of dequantized integers; no TensorRT form")
        if node.op_type == "Cast" and node.input[0] in self.grid and _attrs(node)["to"] == TensorProto.FLOAT:
            self.float_of[node.output[0]] = node.input[0]  # dequantization: Cast, then Mul by the scale
            return
        if node.op_type == "Mul" and any(i in self.float_of for i in node.input):
            self.dequantize(node)
            return
        if not quantized_inputs and not quantized_outputs:
            if any(i in self.float_of for i in node.input):
                raise IntegerFormError(f"{_describe(node)} reads dequantized integers other than through a scale; no TensorRT form")
            self.nodes.append(node)
            return
        if node.op_type == "Cast" and quantized_outputs and not quantized_inputs:
            # floats rounded onto a grid (a force_dequant site's quantization): the twin is them x the grid
            output = node.output[0]
            self.twin[output] = self.add("Mul", [node.input[0], self.channel_scale(self.grid[output], f"{output}.scale")], output)
            return
        output = node.output[0]
        if node.op_type in ("Shape", "Size") and not quantized_outputs:  # shapes read off the twin
            self.nodes.append(helper.make_node(node.op_type, [self.twin_of(node.input[0])], [output], name=node.name, **_attrs(node)))
            return
        if node.op_type == "Cast" or (node.op_type in _DATA_MOVEMENT and node.input[0] in self.grid):
            moved = self.twin_of(node.input[0])
            if node.op_type == "Cast":
                self.twin[output] = moved
            else:
                self.twin[output] = self.add(node.op_type, [moved, *node.input[1:]], output, **_attrs(node))
            return
        if node.op_type == "Gather" and node.input[0] in self.grid:
            self.twin[output] = self.add("Gather", [self.twin_of(node.input[0]), node.input[1]], output, **_attrs(node))
            return
        if node.op_type == "Add" and all(i in self.grid for i in node.input):
            grid = self.grid[output]
            self.twin[output] = self.add("Add", [self.twin_of(i, grid) for i in node.input], output)
            return
        if node.op_type == "Where" and node.input[2] in self.grid and self.is_constant(node.input[1]):
            grid = self.grid[output]
            masked = self.value(node.input[1]).astype(np.float64) * grid.astype(np.float64)
            value = self.constant(f"{output}.masked", np.asarray(masked, _F32))
            self.twin[output] = self.add("Where", [node.input[0], value, self.twin_of(node.input[2], grid, output)], output)
            return
        raise IntegerFormError(f"{_describe(node)} computes on quantized integers; it has no TensorRT form")

    def dequantize(self, node: NodeProto) -> None:
        held = next(i for i in node.input if i in self.float_of)
        other = next((i for i in node.input if i != held), None)
        integers = self.float_of[held]
        if other is None or not self.is_constant(other):
            raise IntegerFormError(f"{_describe(node)}: dequantized integers times a computed tensor; no TensorRT form")
        # x * c with x = integers: the twin (integers x grid) times c / grid
        ratio = (self.value(other).astype(np.float64) / np.broadcast_to(self.grid[integers], np.shape(self.value(other)) or (1,)).astype(np.float64))
        if np.allclose(ratio, 1.0, rtol=0, atol=0):
            self.nodes.append(helper.make_node("Identity", [self.twin_of(integers)], [node.output[0]], name=node.name))
        else:
            factor = self.constant(f"{node.output[0]}.factor", ratio.astype(_F32).reshape(np.shape(self.value(other))))
            self.nodes.append(helper.make_node("Mul", [self.twin_of(integers), factor], [node.output[0]], name=node.name))

    def matmul(self, node: NodeProto) -> None:
        if node.op_type == "IntMatMulWide":
            self.wide_matmul(node)
            return
        a = _attrs(node)
        stem = node.output[0]
        left = self.twin_of(node.input[0], a["a_scale"], stem)
        right_name = node.input[1]
        if self.is_constant(right_name):
            weights = self.value(right_name)
            if weights.dtype != np.int8 or weights.ndim != 2:
                raise IntegerFormError(f"{_describe(node)}: constant B must be int8 [K, N] for TensorRT's INT8 GEMM")
            scale = _scale(a["b_scale"])
            zero = np.zeros(scale.shape, np.int8) if scale.size > 1 else np.zeros((), np.int8)
            inputs = [right_name, self.channel_scale(scale, f"{right_name}.scale"), self.constant(f"{right_name}.zero_point", zero)]
            axis: dict[str, Any] = {"axis": 1} if scale.size > 1 else {}
            right = self.add("DequantizeLinear", inputs, f"{right_name}.dequantized", **axis)
        else:
            right = self.twin_of(right_name, a["b_scale"], stem)
        self.twin[node.output[0]] = self.add("MatMul", [left, right], stem)

    def int8(self, integers: str, stem: str) -> str:
        """An integer-valued float tensor in [-128, 127] through an int8 Q/DQ pair of scale 1: a GEMM input
        TensorRT fuses into an INT8 GEMM (the values pass unchanged)."""
        one = self.constant(f"{stem}.unit_scale", np.ones((), _F32))
        zero = self.constant(f"{stem}.zero_point", np.zeros((), np.int8))
        return self.add("DequantizeLinear", [self.add("QuantizeLinear", [integers, one, zero], f"{stem}.quantized"), one, zero], stem)

    def wide_matmul(self, node: NodeProto) -> None:
        """IntMatMulWide(A, B), A in [-2**15, 2**15 - 1], as two INT8 GEMMs on A's digits, exact while the
        sums stay below 2**24 (float32's integers):

            A = 256 h + l + 128,   h = floor((A + 2**15) / 256) - 128,   l = A + 2**15 - 256 (h + 128) - 128,
            A @ B = 256 (h @ B) + l @ B + 128 colsum(B),                   h, l in [-128, 127]

        A is read off its twin (Div by its grid, Round); h, l, B enter the GEMMs as int8 Q/DQ of scale 1, so
        each GEMM yields the integer sum itself (TensorRT: the exact int32 accumulator); the grid a_scale x
        b_scale is applied once, at the end. colsum(B) is a constant for a weight, a ReduceSum over B's rows
        for an activation (the context matmul: probabilities x V). The ops on floats (Div, Round, Floor, Sub,
        Add, Mul, ReduceSum with constant axes, QuantizeLinear / DequantizeLinear int8 with zero point 0) are
        all in onnx-tensorrt's operator matrix (docs/operators.md, 10.1 GA, commit 96e7811)."""
        a = _attrs(node)
        stem = node.output[0]

        offset, base, half = (self.constant(f"{stem}.{name}", np.asarray(v, _F32)) for name, v in
                              (("offset", 2**15), ("base", 256), ("half", 128)))
        a_grid = self.channel_scale(_scale(a["a_scale"]), f"{stem}.a_scale")
        x = self.twin_of(node.input[0], a["a_scale"], stem)
        integers = self.add("Round", [self.add("Div", [x, a_grid], f"{stem}.a")], f"{stem}.a_integers")
        shifted = self.add("Add", [integers, offset], f"{stem}.shifted")  # in [0, 2**16)
        high_digit = self.add("Floor", [self.add("Div", [shifted, base], f"{stem}.digits")], f"{stem}.high_digit")
        high = self.add("Sub", [high_digit, half], f"{stem}.high_integers")
        low_digit = self.add("Sub", [shifted, self.add("Mul", [high_digit, base], f"{stem}.high_part")], f"{stem}.low_digit")
        low = self.add("Sub", [low_digit, half], f"{stem}.low_integers")
        right_name = node.input[1]
        if self.is_constant(right_name):
            weights = self.value(right_name)
            if weights.dtype != np.int8 or weights.ndim != 2:
                raise IntegerFormError(f"{_describe(node)}: constant B must be int8 [K, N] for TensorRT's INT8 GEMM")
            one = self.constant(f"{right_name}.unit_scale", np.ones((), _F32))
            zero = self.constant(f"{right_name}.zero_point", np.zeros((), np.int8))
            right = self.add("DequantizeLinear", [right_name, one, zero], f"{right_name}.integers")
            column_sums = self.constant(f"{stem}.column_sums", (128 * weights.astype(np.int64).sum(axis=0)).astype(_F32))
        else:
            b_grid = self.channel_scale(_scale(a["b_scale"]), f"{stem}.b_scale")
            b = self.twin_of(right_name, a["b_scale"], stem)
            b_integers = self.add("Round", [self.add("Div", [b, b_grid], f"{stem}.b")], f"{stem}.b_integers")
            right = self.int8(b_integers, f"{stem}.b_int8")
            # summed before the Q/DQ, so that the DequantizeLinear feeds only the GEMMs it is fused into
            axes = self.constant(f"{stem}.rows", np.asarray([-2], np.int64))
            sums = self.add("ReduceSum", [b_integers, axes], f"{stem}.column_sums", keepdims=1)
            column_sums = self.add("Mul", [sums, half], f"{stem}.column_sums")
        high_gemm = self.add("MatMul", [self.int8(high, f"{stem}.high"), right], f"{stem}.high_gemm")
        low_gemm = self.add("MatMul", [self.int8(low, f"{stem}.low"), right], f"{stem}.low_gemm")
        total = self.add("Add", [self.add("Mul", [high_gemm, base], f"{stem}.high_sum"), low_gemm], f"{stem}.digit_sum")
        total = self.add("Add", [total, column_sums], f"{stem}.integers")
        self.twin[stem] = self.add("Mul", [total, self.channel_scale(self.grid[stem], f"{stem}.grid")], stem)

    def requantize(self, node: NodeProto) -> None:
        a = _attrs(node)
        output = node.output[0]
        out_scale = _scale(a["output_scale"])
        bits = int(a["output_bits"])
        x = self.twin_of(node.input[0], a["input_scale"], output)
        scale = self.channel_scale(out_scale, f"{output}.scale")
        if bits == 8 and not a["identity_scale"] and out_scale.size == 1:
            zero = self.constant(f"{output}.zero_point", np.zeros((), np.int8))
            quantized = self.add("QuantizeLinear", [x, scale, zero], f"{output}.quantized")
            self.twin[output] = self.add("DequantizeLinear", [quantized, scale, zero], output)
            return
        rounded = self.add("Round", [self.add("Div", [x, scale], f"{output}.scaled")], f"{output}.rounded")
        if a["identity_scale"]:
            identity = self.twin_of(node.input[1], a["identity_scale"], output)
            identity = self.add("Round", [self.add("Div", [identity, scale], f"{output}.identity")], f"{output}.identity")
            rounded = self.add("Add", [rounded, identity], f"{output}.sum")
        if bits < 32:
            low, high = ibert.signed_range(bits)
            rounded = self.add(
                "Clip", [rounded, self.constant(f"{output}.low", np.asarray(low, _F32)), self.constant(f"{output}.high", np.asarray(high, _F32))],
                f"{output}.clipped",
            )
        self.twin[output] = self.add("Mul", [rounded, scale], output)

    def nonlinear(self, node: NodeProto) -> None:
        a = _attrs(node)
        x = self.twin_of(node.input[0], a["input_scale"], node.output[0])
        # the attributes of the op's TensorRT plugin (its float interface: trt_runtime.contract.ibert.ibert_op)
        keep = {name: a[name] for name, _ in PLUGINS[node.op_type].attributes if name in a}
        if not self.use_plugins:
            keep.update({name: a[name] for name in _constant_names(node.op_type)})
        output = self.fresh(node.output[0])
        self.nodes.append(
            helper.make_node(node.op_type, [x, *node.input[1:]], [output], name=node.name, domain=ibert.DOMAIN, **keep)
        )
        self.twin[node.output[0]] = output


def _remove_dead(nodes: list[NodeProto], outputs: set[str]) -> list[NodeProto]:
    needed = set(outputs)
    kept: list[NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def plugin_form_function(function: FunctionProto) -> FunctionProto:
    """The float-interface function of an ibert nonlinearity, wrapping its integer function `function`:

        X_int = int64(clip(round_half_even(X / input_scale), -2**31, 2**31 - 1))    (float32 division)
        Y = float32(integer body(X_int)) * output_scale

    exactly the TensorRT plugins' contract (trt_runtime.contract.ibert.ibert_op), with the ops of
    onnx-tensorrt's parser: Div / Round / Clip on floats, Cast to INT64 / FLOAT, Mul.
    """
    prefix = f"{function.name}_float"

    def reference(name: str, kind: AttributeProto.AttributeType) -> AttributeProto:
        attribute = AttributeProto()
        attribute.name = "value_floats" if kind == AttributeProto.FLOATS else "value_float"
        attribute.ref_attr_name, attribute.type = name, kind
        return attribute

    kinds = {"IntGELU": AttributeProto.FLOATS, "IntSoftmax": AttributeProto.FLOAT, "IntLayerNorm": AttributeProto.FLOAT}
    out_kinds = {"IntGELU": AttributeProto.FLOATS, "IntSoftmax": AttributeProto.FLOAT, "IntLayerNorm": AttributeProto.FLOATS}
    nodes = []
    for name, attribute_name, kind in (
        (f"{prefix}_input_scale", "input_scale", kinds[function.name]),
        (f"{prefix}_output_scale", "output_scale", out_kinds[function.name]),
    ):
        node = helper.make_node("Constant", [], [name], name=name)
        node.attribute.append(reference(attribute_name, kind))
        nodes.append(node)
    low = helper.make_node("Constant", [], [f"{prefix}_low"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [float(ibert.INT32_MIN)]))
    high = helper.make_node("Constant", [], [f"{prefix}_high"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [2.0**31]))
    top = helper.make_node("Constant", [], [f"{prefix}_top"], value=helper.make_tensor("v", TensorProto.INT64, [], [ibert.INT32_MAX]))
    nodes += [
        low, high, top,
        helper.make_node("Div", ["X", f"{prefix}_input_scale"], [f"{prefix}_scaled"]),
        helper.make_node("Round", [f"{prefix}_scaled"], [f"{prefix}_rounded"]),
        helper.make_node("Clip", [f"{prefix}_rounded", f"{prefix}_low", f"{prefix}_high"], [f"{prefix}_clipped"]),
        helper.make_node("Cast", [f"{prefix}_clipped"], [f"{prefix}_wide"], to=TensorProto.INT64),
        helper.make_node("Min", [f"{prefix}_wide", f"{prefix}_top"], [f"{prefix}_integers"]),
    ]
    renames = {"X": f"{prefix}_integers", "Y": f"{prefix}_result"}
    for body_node in function.node:
        copy = NodeProto()
        copy.CopyFrom(body_node)
        copy.input[:] = [renames.get(i, i) for i in copy.input]
        copy.output[:] = [renames.get(o, o) for o in copy.output]
        nodes.append(copy)
    nodes += [
        helper.make_node("Cast", [f"{prefix}_result"], [f"{prefix}_result_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{prefix}_result_float", f"{prefix}_output_scale"], ["Y"]),
    ]
    wrapped = FunctionProto()
    wrapped.CopyFrom(function)
    del wrapped.node[:]
    wrapped.node.extend(nodes)
    wrapped.doc_string = f"I-BERT's {function.name} with the TensorRT plugin's float interface (integer x scale)."
    return wrapped


def tensorrt_form(model: ModelProto, use_plugins: bool = True) -> ModelProto:
    """The float form TensorRT builds from (see the module docstring); `model` itself when it has no integer ops.

    use_plugins: the nonlinearities' nodes carry the plugins' attributes only; otherwise they also carry
    their integer constants and the model gets their float-interface functions (for --no-plugins).
    Raises IntegerFormError for an integer graph it cannot rewrite.
    """
    if not is_integer_graph(model):
        return _nonlinear_attributes(model, use_plugins)
    for node in model.graph.node:
        if node.domain == ibert.DOMAIN and node.op_type not in INTEGER_ONLY_OPS + NONLINEAR_OPS:
            raise IntegerFormError(f"{_describe(node)}: unknown ibert op; re-export the model")
    form = _Form(model, use_plugins)
    form.collect_grids()
    for node in model.graph.node:
        form.rewrite(node)
    result = ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    outputs = {o.name for o in graph.output}
    nodes = _remove_dead(form.nodes, outputs)
    used = {i for n in nodes for i in n.input}
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [t for t in graph.initializer if t.name in used] + [t for t in form.new_initializers if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]
    functions = {f.name: f for f in model.functions if f.domain == ibert.DOMAIN}
    del result.functions[:]
    if not use_plugins:
        for op in sorted({n.op_type for n in nodes if n.domain == ibert.DOMAIN}):
            if op not in functions:
                raise IntegerFormError(f"the model has no function body for ibert::{op}; re-export the model")
            result.functions.append(plugin_form_function(functions[op]))
    result.functions.extend(f for f in model.functions if f.domain != ibert.DOMAIN)
    return result


def _referenced_attributes(function: FunctionProto) -> set[str]:
    return {a.ref_attr_name for node in function.node for a in node.attribute if a.ref_attr_name}


def _nonlinear_attributes(model: ModelProto, use_plugins: bool) -> ModelProto:
    """A plugin-form graph (float-interface nonlinearities) as the builder needs it: with plugins, the nodes
    carry the plugins' attributes only; without, the integer constants their functions read, derived
    here from the scales (and IntLayerNorm's weight and bias). `model` itself when nothing changes."""
    functions = {f.name: f for f in model.functions if f.domain == ibert.DOMAIN}
    initializers = {t.name: t for t in model.graph.initializer}
    changes: dict[int, dict[str, Any]] = {}
    for index, node in enumerate(model.graph.node):
        if node.domain != ibert.DOMAIN or node.op_type not in NONLINEAR_OPS:
            continue
        a = _attrs(node)
        constants = _constant_names(node.op_type)
        if use_plugins:
            if any(name in a for name in constants):
                changes[index] = {name: value for name, value in a.items() if name not in constants}
            continue
        needed = [n for n in constants if n in _referenced_attributes(functions.get(node.op_type, FunctionProto()))]
        if needed and any(n not in a for n in needed):
            weight = bias = None
            if node.op_type == "IntLayerNorm":
                if node.input[1] not in initializers or node.input[2] not in initializers:
                    raise IntegerFormError(f"{_describe(node)}: weight and bias must be initializers")
                weight, bias = (numpy_helper.to_array(initializers[i]) for i in node.input[1:3])
            changes[index] = {**a, **ibert.integer_constant_attributes(node.op_type, a, weight, bias)}
    if not changes:
        return model
    result = ModelProto()
    result.CopyFrom(model)
    for index, attributes in changes.items():
        node = result.graph.node[index]
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(name, value) for name, value in attributes.items())
    return result


# --------------------------------------------------------------------------------------------------
# how far an engine may drift: the TensorRT form evaluated in NumPy


def emulate(model: ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the TensorRT form of `model` on the CPU as TensorRT's arithmetic has it, in NumPy (onnx.reference):
    Q/DQ with float32 scales, INT8 GEMMs as exact int32 accumulations times the two scales in float32, the
    other GEMMs and elementwise ops in float32, the nonlinearities as the plugins compute them (bit-exact
    kernels: trt_runtime.contract.ibert.ibert_op). Returns the outputs by name.
    """
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    form = _emulated_int8_gemms(tensorrt_form(model, use_plugins=True))
    for opset in form.opset_import:  # onnx.reference has Q/DQ from opset 19 (the same definition as 13's)
        if opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19

    def plugin(op_type: str) -> type:
        def run(self, x, weight=None, bias=None, **attributes):
            attributes = {k: v for k, v in attributes.items() if v is not None}
            with np.errstate(over="ignore", invalid="ignore"):
                return (ibert.ibert_op(op_type, x, weight, bias, **attributes),)

        names = [name for name, _ in PLUGINS[op_type].attributes]
        signature = ", ".join(["self", "x", "weight=None", "bias=None", *[f"{n}=None" for n in names]])
        namespace: dict[str, Any] = {"impl": run}
        exec(f"def _run({signature}):\n    return impl(self, x, weight, bias, " + ", ".join(f"{n}={n}" for n in names) + ")", namespace)
        return type(op_type, (OpRun,), {"op_domain": ibert.DOMAIN, "_run": namespace["_run"]})

    def int8_gemm(self, a, a_scale, b, b_scale):
        acc = np.matmul(a.astype(np.int64), b.astype(np.int64))  # TensorRT's int32 accumulator, exact
        return ((acc.astype(_F32) * (np.asarray(a_scale, _F32) * np.asarray(b_scale, _F32))).astype(_F32),)

    gemm = type("Int8Gemm", (OpRun,), {"op_domain": _EMULATION_DOMAIN, "_run": int8_gemm})
    evaluator = ReferenceEvaluator(form, new_ops=[plugin(op) for op in NONLINEAR_OPS] + [gemm])
    names = [o.name for o in form.graph.output]
    return dict(zip(names, evaluator.run(None, dict(feeds))))


_EMULATION_DOMAIN = "tensorrt_emulation"


def _emulated_int8_gemms(model: ModelProto) -> ModelProto:
    """MatMul(DQ(Q(x)), DQ(W)) -> Int8Gemm(int8 x, scale, int8 W, scale): what TensorRT fuses, evaluated
    as its INT8 kernels compute (exact int32 accumulation, then the scales)."""
    result = ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    producers = {o: n for n in graph.node for o in n.output}

    def dequantized(name: str) -> NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    nodes = []
    for node in graph.node:
        left, right = (dequantized(i) for i in node.input[:2]) if node.op_type == "MatMul" else (None, None)
        if left is None or right is None:
            nodes.append(node)
            continue
        nodes.append(helper.make_node(
            "Int8Gemm", [left.input[0], left.input[1], right.input[0], right.input[1]], list(node.output),
            name=node.name, domain=_EMULATION_DOMAIN,
        ))
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == _EMULATION_DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(_EMULATION_DOMAIN, 1))
    return result
