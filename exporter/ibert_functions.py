"""The `ibert` ONNX domain: model-local function bodies of IntGELU, IntSoftmax and IntLayerNorm.

Each body computes, in standard ONNX ops, exactly what `trt_runtime.contract.ibert` (the
contract of the domain) computes: the float32 constants with the same float32 operations in the same
order, the data path in int64. ONNX Runtime and onnx.reference run them as part of the model; the
TensorRT builder strips them so its parser takes the plugins of the same name instead.

Integer building blocks, written once below and exact in int64 on every runtime:
- floor(a / b) = (a - Mod(a, b)) / b: ONNX Mod (fmod=0) takes the divisor's sign, so the numerator is an
  exact multiple of b and integer Div (which truncates) is exact;
- 2**k for 0 <= k <= 62: BitShift on uint64 (ONNX has no signed shifts);
- numpy's float floor_divide (IntGELU's `1.0 // sigmoid_scale`): its fmod-based algorithm, step by step;
- frexp of a float32 scale (IntSoftmax): exponent by log2, corrected with exact powers of two.
The rank, axis and channel count come from the tensors at run time, so one body serves every node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_runtime.contract import ibert
from trt_runtime.contract import ibert as ref

FLOAT, INT64, UINT64 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT64
_ATTRIBUTE_TYPES = {
    "float": onnx.AttributeProto.FLOAT,
    "floats": onnx.AttributeProto.FLOATS,
    "int": onnx.AttributeProto.INT,
}


class _Body:
    """Accumulates the nodes of one function body; every method returns the name of the tensor it made."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        return self.ops(op_type, 1, *inputs, **attributes)[0]

    def ops(self, op_type: str, count: int, *inputs: str, **attributes: Any) -> list[str]:
        """A node with `count` outputs."""
        self._count += 1
        name = f"{self.prefix}_{op_type}_{self._count}"
        outputs = [name] + [f"{name}_{i}" for i in range(1, count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attributes))
        return outputs

    def const(self, value: Any, dtype: np.dtype | type = np.int64) -> str:
        return self.op("Constant", value=helper.make_tensor("value", _onnx_type(dtype), [], [value]))

    def vector(self, values: list[int]) -> str:
        return self.op("Constant", value=helper.make_tensor("value", INT64, [len(values)], values))

    def attribute(self, name: str, kind: str) -> str:
        """A Constant holding the node's attribute `name` (kind: "float", "floats" or "int")."""
        self._count += 1
        output = f"{self.prefix}_{name}_{self._count}"
        node = helper.make_node("Constant", [], [output], name=output)
        node.attribute.append(_ref_attribute(f"value_{kind}", name, _ATTRIBUTE_TYPES[kind]))
        self.nodes.append(node)
        return output

    # -- arithmetic on int64 ----------------------------------------------------------------------

    def floor_div(self, a: str, b: str) -> str:
        return self.op("Div", self.op("Sub", a, self.op("Mod", a, b)), b)

    def pow2(self, k: str) -> str:
        """2**k as int64 for int64 0 <= k <= 62."""
        one = self.const(1, np.uint64)
        return self.op("Cast", self.op("BitShift", one, self.op("Cast", k, to=UINT64), direction="LEFT"), to=INT64)

    def round_div_half_even(self, numerator: str, denominator: str) -> str:
        """round_half_to_even(n / d) for int64 n and positive int64 d, as integer_reference does it."""
        quotient = self.floor_div(numerator, denominator)
        twice_remainder = self.op("Mul", self.const(2), self.op("Sub", numerator, self.op("Mul", quotient, denominator)))
        odd = self.op("Equal", self.op("Mod", quotient, self.const(2)), self.const(1))
        tie = self.op("And", self.op("Equal", twice_remainder, denominator), odd)
        up = self.op("Or", self.op("Greater", twice_remainder, denominator), tie)
        return self.op("Add", quotient, self.op("Cast", up, to=INT64))

    def bit_length(self, n: str) -> str:
        """Bits of each non-negative int64 (0 for 0), by the reference's binary search on shifts."""
        unsigned = self.op("Cast", n, to=UINT64)
        floor_log2 = self.op("Mul", n, self.const(0))
        for step in (32, 16, 8, 4, 2, 1):
            shift = self.op("Cast", self.op("Add", floor_log2, self.const(step)), to=UINT64)
            shifted = self.op("BitShift", unsigned, shift, direction="RIGHT")
            nonzero = self.op("Cast", self.op("Greater", shifted, self.const(0, np.uint64)), to=INT64)
            floor_log2 = self.op("Add", floor_log2, self.op("Mul", nonzero, self.const(step)))
        positive = self.op("Greater", n, self.const(0))
        return self.op("Where", positive, self.op("Add", floor_log2, self.const(1)), self.const(0))

    def isqrt(self, n: str) -> str:
        """floor(sqrt(n)) by the reference's Newton iteration, unrolled (it stops changing once done)."""
        x = self.pow2(self.floor_div(self.op("Add", self.bit_length(n), self.const(1)), self.const(2)))
        for _ in range(ref.ISQRT_ITERATIONS):
            divisor = self.op("Max", x, self.const(1))
            step = self.floor_div(self.op("Add", x, self.floor_div(n, divisor)), self.const(2))
            x = self.op("Min", x, step)
        return x

    # -- float32 ----------------------------------------------------------------------------------

    def quantize_input(self, x: str, scale: str) -> str:
        """int64(clip(round_half_even(X / scale), int32 range)), the division in float32."""
        rounded = self.op("Round", self.op("Div", x, scale))
        clipped = self.op(
            "Clip", rounded, self.const(float(ref.INT32_MIN), np.float32), self.const(float(ref.INT32_MAX), np.float32)
        )
        return self.op("Cast", clipped, to=INT64)

    def floor_to_int(self, x: str) -> str:
        return self.op("Cast", self.op("Floor", x), to=INT64)

    def numpy_float_floor_divide(self, a: str, b: str) -> str:
        """numpy's floor_divide for floats (npy_divmod): fmod, exact correction of the sign, then floor."""
        mod = self.op("Mod", a, b, fmod=1)
        div = self.op("Div", self.op("Sub", a, mod), b)
        signs_differ = self.op("Xor", self.op("Less", b, self.const(0.0, np.float32)), self.op("Less", mod, self.const(0.0, np.float32)))
        adjust = self.op("And", self.op("Not", self.op("Equal", mod, self.const(0.0, np.float32))), signs_differ)
        div = self.op("Sub", div, self.op("Cast", adjust, to=FLOAT))
        floor = self.op("Floor", div)
        up = self.op("Greater", self.op("Sub", div, floor), self.const(0.5, np.float32))
        return self.op("Add", floor, self.op("Cast", up, to=FLOAT))

    def exact_power_of_two(self, exponent: str) -> str:
        """float32 2**e for int64 |e| <= 62, built exactly (no pow())."""
        magnitude = self.op("Cast", self.pow2(self.op("Abs", exponent)), to=FLOAT)
        negative = self.op("Less", exponent, self.const(0))
        return self.op("Where", negative, self.op("Div", self.const(1.0, np.float32), magnitude), magnitude)

    def channel_shape(self, x: str, axis: str) -> str:
        """A shape of ones of x's rank with -1 at `axis`: reshapes a per-channel vector to broadcast over x."""
        rank = self.op("Shape", self.op("Shape", x))
        ones = self.op("ConstantOfShape", rank, value=helper.make_tensor("value", INT64, [1], [1]))
        axes = self.op("Reshape", axis, self.vector([1]))
        return self.op("ScatterElements", ones, axes, self.vector([-1]), axis=0)


def _onnx_type(dtype: np.dtype | type) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _int_gelu(body: _Body) -> list[str]:
    s = body.attribute("input_scale", "floats")
    output_scale = body.attribute("output_scale", "floats")
    f32 = np.float32
    # constants, as integer_reference.gelu_constants computes them in float32
    s_k = body.op("Div", s, body.const(ref.GELU_K, f32))
    b_int = body.floor_to_int(body.op("Mul", body.op("Div", body.const(1.0, f32), s_k), body.const(ref.GELU_B, f32)))
    s_k2 = body.op("Mul", s_k, s_k)
    c_int = body.floor_to_int(body.op("Mul", body.op("Div", body.const(1.0, f32), s_k2), body.const(ref.GELU_C, f32)))
    sigmoid_scale = body.op("Mul", body.op("Mul", s_k2, body.const(ref.GELU_A, f32)), body.const(2.0**ref.GELU_SHIFT_BITS, f32))
    shift_int = body.op("Cast", body.numpy_float_floor_divide(body.const(1.0, f32), sigmoid_scale), to=INT64)
    # data path, as integer_reference.int_gelu
    x = body.quantize_input("X", s)
    abs_int = body.op("Min", body.op("Abs", x), body.op("Neg", b_int))
    shifted = body.op("Add", abs_int, b_int)
    erf_int = body.op("Mul", body.op("Sign", x), body.op("Add", body.op("Mul", shifted, shifted), c_int))
    sigmoid_int = body.floor_div(erf_int, body.const(2**ref.GELU_SHIFT_BITS))
    y_int = body.op("Neg", body.op("Mul", x, body.op("Add", sigmoid_int, shift_int)))
    return [body.op("Mul", body.op("Cast", y_int, to=FLOAT), output_scale)]


def _frexp24(body: _Body, value: str) -> tuple[str, str]:
    """(mantissa, exponent) int64 with value == mantissa * 2**exponent, mantissa < 2**24 (float32 positive)."""
    f32 = np.float32
    estimate = body.floor_to_int(body.op("Div", body.op("Log", value), body.const(float(np.log(2.0)), f32)))
    for _ in range(2):  # log2 by logarithms can be off by one at powers of two: correct it exactly
        normalized = body.op("Mul", value, body.exact_power_of_two(body.op("Neg", estimate)))  # in [1, 2) when right
        too_small = body.op("Cast", body.op("Less", normalized, body.const(1.0, f32)), to=INT64)
        too_big = body.op("Cast", body.op("Not", body.op("Less", normalized, body.const(2.0, f32))), to=INT64)
        estimate = body.op("Sub", body.op("Add", estimate, too_big), too_small)
    exponent = body.op("Sub", estimate, body.const(23))  # value = m * 2**(e - 23), 2**23 <= m < 2**24
    mantissa = body.op("Cast", body.op("Mul", value, body.exact_power_of_two(body.op("Neg", exponent))), to=INT64)
    return mantissa, exponent


def _int_softmax(body: _Body) -> list[str]:
    f32 = np.float32
    s = body.attribute("input_scale", "float")
    exp_scale = body.attribute("exp_scale", "float")
    output_scale = body.attribute("output_scale", "float")
    output_bits = body.attribute("output_bits", "int")
    axis = body.attribute("axis", "int")
    axes = body.op("Reshape", axis, body.vector([1]))
    # constants, as integer_reference.softmax_constants
    inv_s = body.op("Div", body.const(1.0, f32), s)
    x0_int = body.floor_to_int(body.op("Mul", inv_s, body.const(ref.EXP_X0, f32)))
    b_int = body.floor_to_int(body.op("Mul", inv_s, body.const(ref.EXP_B, f32)))
    c_int = body.floor_to_int(body.op("Mul", body.op("Div", body.const(1.0, f32), body.op("Mul", s, s)), body.const(ref.EXP_C, f32)))
    mantissa, exponent = _frexp24(body, exp_scale)
    # x - max(x): max(round(X / s)) = round(max(X) / s), rounding being monotonic. TopK takes `axis` as an
    # attribute at every opset (ReduceMax takes it as an input only from opset 18).
    x = body.quantize_input("X", s)
    top, _ = body.ops("TopK", 2, "X", body.vector([1]))
    body.nodes[-1].attribute.append(_ref_attribute("axis", "axis", onnx.AttributeProto.INT))
    maximum = body.quantize_input(top, s)
    x = body.op("Max", body.op("Sub", x, maximum), body.op("Mul", body.const(ref.EXP_MAX_Q), x0_int))
    # i-exp: x = -q ln2 + r, z = exp(r) as a polynomial (x and x0_int are <= 0: Div truncates = floors)
    q = body.op("Div", x, x0_int)
    r = body.op("Sub", x, body.op("Mul", x0_int, q))
    z = body.op("Max", body.op("Add", body.op("Mul", body.op("Add", r, b_int), r), c_int), body.const(0))
    # 16-bit requantization: round_half_even(z * 2**(30 - q) / (M * 2**E)), powers of two on either side
    k = body.op("Sub", body.op("Sub", body.const(ref.EXP_SHIFT_BITS), q), exponent)
    zero = body.const(0)
    numerator = body.op("Mul", z, body.pow2(body.op("Max", k, zero)))
    denominator = body.op("Mul", mantissa, body.pow2(body.op("Max", body.op("Neg", k), zero)))
    exp16 = body.op(
        "Clip", body.round_div_half_even(numerator, denominator), zero, body.const(2 ** (ref.EXP_BITS - 1) - 1)
    )
    total = body.op("Max", body.op("ReduceSum", exp16, axes, keepdims=1), body.const(1))
    factor = body.op("Div", body.const(2**ref.SOFTMAX_SUM_BITS), total)
    y_int = body.floor_div(
        body.op("Mul", exp16, factor), body.pow2(body.op("Sub", body.const(ref.SOFTMAX_SUM_BITS), output_bits))
    )
    return [body.op("Mul", body.op("Cast", y_int, to=FLOAT), output_scale)]


def _int_layernorm(body: _Body) -> list[str]:
    f32 = np.float32
    s = body.attribute("input_scale", "float")
    shift = body.attribute("shift", "int")
    output_scale = body.attribute("output_scale", "floats")
    axis = body.attribute("axis", "int")
    axes = body.op("Reshape", axis, body.vector([1]))
    per_channel = body.channel_shape("X", axis)
    # constants, as integer_reference.layernorm_constants (C from the weight's length)
    channels = body.op("Shape", "weight")
    unit = body.op("Div", body.op("Sqrt", body.op("Cast", channels, to=FLOAT)), body.const(2.0**ref.LAYERNORM_SCALE_BITS, f32))
    bias_int = body.floor_to_int(body.op("Div", body.op("Div", "bias", "weight"), unit))
    # data path, as integer_reference.int_layernorm
    x = body.quantize_input("X", s)
    count = body.op("Reshape", channels, body.vector([]))
    mean = body.round_div_half_even(body.op("ReduceSum", x, axes, keepdims=1), count)
    y = body.op("Sub", x, mean)
    y_shifted = body.floor_div(y, body.pow2(shift))
    variance = body.op("ReduceSum", body.op("Mul", y_shifted, y_shifted), axes, keepdims=1)
    std = body.op("Max", body.op("Mul", body.isqrt(variance), body.pow2(shift)), body.const(1))
    factor = body.op("Div", body.const(2**ref.LAYERNORM_FACTOR_BITS), std)
    y_int = body.op(
        "Add", body.floor_div(body.op("Mul", y, factor), body.const(2)), body.op("Reshape", bias_int, per_channel)
    )
    return [body.op("Mul", body.op("Cast", y_int, to=FLOAT), body.op("Reshape", output_scale, per_channel))]


def _ref_attribute(name: str, refers_to: str, kind: onnx.AttributeProto.AttributeType) -> onnx.AttributeProto:
    """An attribute of a body node that takes the value of the function node's attribute `refers_to`."""
    attribute = onnx.AttributeProto()
    attribute.name, attribute.ref_attr_name, attribute.type = name, refers_to, kind
    return attribute


# op type -> (inputs, attributes, defaults, builder)
_OPS: dict[str, tuple[list[str], list[str], dict[str, int], Callable[[_Body], list[str]]]] = {
    "IntGELU": (["X"], ["input_scale", "output_scale"], {}, _int_gelu),
    "IntSoftmax": (
        ["X"], ["input_scale", "exp_scale", "output_scale"], {"axis": -1, "output_bits": 8}, _int_softmax
    ),
    "IntLayerNorm": (["X", "weight", "bias"], ["input_scale", "shift", "output_scale"], {"axis": -1}, _int_layernorm),
}


def ibert_function(op_type: str, opset: int) -> onnx.FunctionProto:
    """The model-local function of one `ibert` op, its body in the default domain at `opset`."""
    inputs, attributes, defaults, build = _OPS[op_type]
    body = _Body(op_type)
    (result,) = build(body)
    body.nodes.append(helper.make_node("Identity", [result], ["Y"], name=f"{op_type}_output"))
    function = helper.make_function(
        ibert.DOMAIN,
        op_type,
        inputs,
        ["Y"],
        body.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=attributes,
        attribute_protos=[helper.make_attribute(name, value) for name, value in defaults.items()],
        doc_string=f"I-BERT's integer {op_type[3:]}, exactly as trt_runtime.contract.ibert computes it.",
    )
    return function


def add_ibert_functions(model: onnx.ModelProto) -> list[str]:
    """Attach the function of every `ibert` op the graph uses and import the domain; returns the op types."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == ibert.DOMAIN})
    unknown = [op for op in used if op not in _OPS]
    if unknown:
        raise ValueError(f"the graph uses {ibert.DOMAIN} ops without a function body: {', '.join(unknown)}")
    if not used:
        return used
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    existing = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(ibert_function(op, opset) for op in used if (ibert.DOMAIN, op) not in existing)
    if not any(o.domain == ibert.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ibert.DOMAIN, ibert.DOMAIN_VERSION))
    return used
