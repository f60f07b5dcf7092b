"""The `ibert` ONNX domain: model-local function bodies of its ops, integer tensors in and out.

Each body computes, in standard ONNX ops, exactly what `trt_runtime.contract.ibert` (the contract of
the domain) computes, on integers only: the integer constants of the nonlinearities, which the
reference derives from the float32 scales, are attributes of the node (INTEGER_CONSTANT_ATTRIBUTES,
written by the exporter), so no runtime's float arithmetic (ONNX Runtime rewrites `(1 / x) * y` into
`y / x`, for one) can move an integer. ONNX Runtime and onnx.reference run them as part of the model. The TensorRT builder derives the engine's form from the
graph (trt_runtime.backends.tensorrt.integer_form): GEMMs and requantizations become Q/DQ, and the
three nonlinearities keep these bodies inside a float wrapper for `--no-plugins`, so their bodies use
only what onnx-tensorrt's parser imports (its docs/operators.md, 10.1 GA: no BitShift, no Bitwise*, no
unsigned types but UINT8 at the network's edges, Clip / Floor / Round on floats only, Reduce* axes an
initializer or Constant; MatMulInteger is not supported, which is why the GEMMs are rewritten).

Integer building blocks, written once below and exact on every runtime:
- floor(a / 2**k) for signed a: Div(a + O, 2**k) - O / 2**k with O a multiple of 2**k above |a|, so
  that integer Div (which truncates) only ever divides non-negative numbers;
- round_half_even(n / d) for n >= 0: 2 * floor((2n + d) / 4d) + ((2n + d) mod 4d > 2d), one Div;
- 2**k for 0 <= k <= 62: Gather from a constant table (no shifts);
- bit_length(n): the number of table entries n reaches (a ReduceSum of comparisons);
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_runtime.contract import ibert as ref

FLOAT, INT64, INT32, INT8, UINT8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8
_ATTRIBUTE_TYPES = {
    "float": onnx.AttributeProto.FLOAT,
    "floats": onnx.AttributeProto.FLOATS,
    "int": onnx.AttributeProto.INT,
    "ints": onnx.AttributeProto.INTS,
}
_OFFSET_BITS = 40  # O = 2**40 for floors of values below 2**39 (LayerNorm deviations and products)


class _Body:
    """Accumulates the nodes of one function body; every method returns the name of the tensor it made."""

    def __init__(self, prefix: str, opset: int):
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._pow2_table: str | None = None

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        self._count += 1
        name = f"{self.prefix}_{op_type}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name

    def const(self, value: Any, dtype: np.dtype | type = np.int64) -> str:
        return self.op("Constant", value=helper.make_tensor("value", _onnx_type(dtype), [], [value]))

    def vector(self, values: list[int], dtype: np.dtype | type = np.int64) -> str:
        return self.op("Constant", value=helper.make_tensor("value", _onnx_type(dtype), [len(values)], values))

    def attribute(self, name: str, kind: str) -> str:
        """A Constant holding the node's attribute `name` (kind: "float", "floats", "int" or "ints")."""
        self._count += 1
        output = f"{self.prefix}_{name}_{self._count}"
        node = helper.make_node("Constant", [], [output], name=output)
        node.attribute.append(_ref_attribute(f"value_{kind}", name, _ATTRIBUTE_TYPES[kind]))
        self.nodes.append(node)
        return output

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    # -- integers -----------------------------------------------------------------------------------

    def pow2(self, k: str) -> str:
        """2**k as int64 for int64 0 <= k <= 62 (elementwise), from a constant table."""
        if self._pow2_table is None:
            self._pow2_table = self.vector([2**i for i in range(63)])
        return self.op("Gather", self._pow2_table, k, axis=0)

    def floor_div_pow2(self, a: str, divisor: str, offset_bits: int = _OFFSET_BITS) -> str:
        """floor(a / divisor) for a power-of-two divisor <= 2**offset_bits and |a| < 2**offset_bits."""
        offset = self.const(2**offset_bits)
        return self.op("Sub", self.op("Div", self.op("Add", a, offset), divisor), self.op("Div", offset, divisor))

    def round_div_half_even(self, n: str, d: str) -> str:
        """round_half_even(n / d) for int64 n >= 0 and d > 0 with 2n + d and 4d below 2**63: one Div."""
        numerator = self.op("Add", self.op("Mul", n, self.const(2)), d)
        denominator = self.op("Mul", d, self.const(4))
        quotient = self.op("Div", numerator, denominator)
        remainder = self.op("Sub", numerator, self.op("Mul", quotient, denominator))
        up = self.cast(self.op("Greater", remainder, self.op("Mul", d, self.const(2))), INT64)
        return self.op("Add", self.op("Mul", quotient, self.const(2)), up)

    def reduce(self, op_type: str, x: str) -> str:
        """Reduce over the last axis, keepdims; axes a Constant [-1] (an attribute before opset 18 for ReduceMax)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.vector([-1]), keepdims=1)
        return self.op(op_type, x, axes=[-1], keepdims=1)

    def bit_length(self, n: str) -> str:
        """Bits of each non-negative int64 (0 for 0): how many of 2**0 .. 2**62 are <= n (last axis of n is 1)."""
        if self._pow2_table is None:
            self._pow2_table = self.vector([2**i for i in range(63)])
        reached = self.op("Not", self.op("Less", n, self._pow2_table))  # [..., 1] against [63]: [..., 63]
        return self.reduce("ReduceSum", self.cast(reached, INT64))

    def isqrt(self, n: str) -> str:
        """floor(sqrt(n)) by the reference's Newton iteration, unrolled (it stops changing once done)."""
        x = self.pow2(self.op("Div", self.op("Add", self.bit_length(n), self.const(1)), self.const(2)))
        for _ in range(ref.ISQRT_ITERATIONS):
            divisor = self.op("Max", x, self.const(1))
            step = self.op("Div", self.op("Add", x, self.op("Div", n, divisor)), self.const(2))
            x = self.op("Min", x, step)
        return x



def _onnx_type(dtype: np.dtype | type) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# --------------------------------------------------------------------------------------------------
# the nonlinearities (parsable by TensorRT: they stay, wrapped, in an engine built with --no-plugins)


def _int_gelu(body: _Body) -> str:
    b_int, c_int = body.attribute("b_int", "ints"), body.attribute("c_int", "ints")
    shift_int = body.attribute("shift_int", "ints")
    # as the reference's int_gelu (|erf| < 2**62: gelu_constants checks it)
    x = body.cast("X", INT64)
    abs_int = body.op("Min", body.op("Abs", x), body.op("Neg", b_int))
    shifted = body.op("Add", abs_int, b_int)
    erf_int = body.op("Mul", body.op("Sign", x), body.op("Add", body.op("Mul", shifted, shifted), c_int))
    sigmoid_int = body.floor_div_pow2(erf_int, body.const(2**ref.GELU_SHIFT_BITS), 62)
    return body.op("Neg", body.op("Mul", x, body.op("Add", sigmoid_int, shift_int)))


def _int_softmax(body: _Body) -> str:
    x0_int, b_int, c_int = (body.attribute(name, "int") for name in ("x0_int", "b_int", "c_int"))
    mantissa, exponent = body.attribute("exp_mantissa", "int"), body.attribute("exp_exponent", "int")
    output_bits = body.attribute("output_bits", "int")
    # x - max(x) over the last axis, clamped at 30 x0 (exp < 2**-30)
    x = body.cast("X", INT64)
    x = body.op("Max", body.op("Sub", x, body.reduce("ReduceMax", x)), body.op("Mul", body.const(ref.EXP_MAX_Q), x0_int))
    # i-exp: x = -q ln2 + r, z = exp(r) as a polynomial (x <= 0 and x0 < 0: Div truncates = floors)
    q = body.op("Div", x, x0_int)
    r = body.op("Sub", x, body.op("Mul", x0_int, q))
    zero = body.const(0)
    z = body.op("Max", body.op("Add", body.op("Mul", body.op("Add", r, b_int), r), c_int), zero)
    # 16-bit requantization: round_half_even(z * 2**(30 - q) / (M * 2**E)), the powers of two on either side
    k = body.op("Sub", body.op("Sub", body.const(ref.EXP_SHIFT_BITS), q), exponent)
    numerator = body.op("Mul", z, body.pow2(body.op("Max", k, zero)))
    denominator = body.op("Mul", mantissa, body.pow2(body.op("Max", body.op("Neg", k), zero)))
    exp16 = body.op("Min", body.round_div_half_even(numerator, denominator), body.const(2 ** (ref.EXP_BITS - 1) - 1))
    total = body.op("Max", body.reduce("ReduceSum", exp16), body.const(1))
    factor = body.op("Div", body.const(2**ref.SOFTMAX_SUM_BITS), total)
    y = body.op("Div", body.op("Mul", exp16, factor), body.pow2(body.op("Sub", body.const(ref.SOFTMAX_SUM_BITS), output_bits)))
    return body.cast(y, INT32)


def _int_layernorm(body: _Body) -> str:
    shift = body.attribute("shift", "int")
    bias_int = body.attribute("bias_int", "ints")
    channels = body.op("Shape", "weight")
    # as the reference's int_layernorm
    x = body.cast("X", INT64)
    # mean = round_half_even(sum / C): sum + O (O = 2**41 C, an even multiple of C) is non-negative
    offset = body.op("Mul", channels, body.const(2**41))
    total = body.op("Add", body.reduce("ReduceSum", x), offset)
    mean = body.op("Sub", body.round_div_half_even(total, channels), body.const(2**41))
    y = body.op("Sub", x, mean)
    scale = body.pow2(shift)
    y_shifted = body.floor_div_pow2(y, scale)
    variance = body.reduce("ReduceSum", body.op("Mul", y_shifted, y_shifted))
    std = body.op("Mul", body.op("Max", body.isqrt(variance), body.const(1)), scale)
    factor = body.op("Div", body.const(2**ref.LAYERNORM_FACTOR_BITS), std)
    normalized = body.floor_div_pow2(body.op("Mul", y, factor), body.const(2))  # |y * factor| < 2**32
    return body.op("Add", normalized, bias_int)


# --------------------------------------------------------------------------------------------------
# GEMMs and requantization (ONNX Runtime and onnx.reference only: the TensorRT form rewrites them)


def _matmul_of(body: _Body, a: str, b8: str) -> str:
    """A @ B for int32 |A| <= 128 and int8 B: A = A+ - A- with A+-, in [0, 128], two u8 x s8 MatMulIntegers
    (exact on every x86 CPU: ONNX Runtime's AVX2 kernel adds pairs of u8 x s8 products in a saturating
    int16, and 2 x 128 x 127 and 2 x 128 x -128 fit)."""
    zero = body.const(0, np.int32)
    positive = body.cast(body.op("Max", a, zero), UINT8)
    negative = body.cast(body.op("Max", body.op("Neg", a), zero), UINT8)
    return body.op("Sub", body.op("MatMulInteger", positive, b8), body.op("MatMulInteger", negative, b8))


def _int_matmul(body: _Body) -> str:
    return _matmul_of(body, body.cast("A", INT32), body.cast("B", INT8))


def _int_matmul_wide(body: _Body) -> str:
    """A = 256 d1 + d0 with d0 = A - 256 floor((A + 128) / 256) in [-128, 127] and d1 in [-128, 128]."""
    a = body.cast("A", INT32)
    b8 = body.cast("B", INT8)
    high = body.op("Sub", body.op("Div", body.op("Add", a, body.const(128 + 2**16, np.int32)), body.const(256, np.int32)),
                   body.const(256, np.int32))
    low = body.op("Sub", a, body.op("Mul", high, body.const(256, np.int32)))
    high_product = body.cast(_matmul_of(body, high, b8), INT64)
    return body.op("Add", body.op("Mul", high_product, body.const(256)), body.cast(_matmul_of(body, low, b8), INT64))


def _rescale_small(body: _Body, x: str, multiplier: str, shift: str) -> str:
    """round_half_even(x * m / 2**e) for |x| < 3 * 2**30 (one int64 product): 2 floor(n / 2**(e+1)) +
    (n mod 2**(e+1) > 2**e) with n = |x| |m| + 2**(e-1), the sign of x m put back (m < 0: a LayerNorm
    channel with a negative weight)."""
    x = body.op("Mul", x, body.op("Sign", multiplier))
    n = body.op("Add", body.op("Mul", body.op("Abs", x), body.op("Abs", multiplier)), body.pow2(body.op("Sub", shift, body.const(1))))
    divisor = body.pow2(body.op("Add", shift, body.const(1)))
    quotient = body.op("Div", n, divisor)
    remainder = body.op("Sub", n, body.op("Mul", quotient, divisor))
    up = body.cast(body.op("Greater", remainder, body.pow2(shift)), INT64)
    return body.op("Mul", body.op("Sign", x), body.op("Add", body.op("Mul", quotient, body.const(2)), up))


def _rescale_wide(body: _Body, x: str, multiplier: str, shift: str) -> str:
    """round_half_even(x * m / 2**e) for |x| < 2**62 and e >= 30: |x| m = H 2**31 + L in two 31-bit limbs."""
    limb = body.const(2**31)
    x = body.op("Mul", x, body.op("Sign", multiplier))
    multiplier = body.op("Abs", multiplier)
    a = body.op("Abs", x)
    a_high = body.op("Div", a, limb)
    a_low = body.op("Sub", a, body.op("Mul", a_high, limb))
    product = body.op("Mul", a_low, multiplier)  # < 2**62
    p_high = body.op("Div", product, limb)
    high = body.op("Add", body.op("Mul", a_high, multiplier), p_high)
    low = body.op("Add", body.op("Sub", product, body.op("Mul", p_high, limb)), body.pow2(body.op("Sub", shift, body.const(1))))
    carry = body.op("Div", low, limb)
    high = body.op("Add", high, carry)
    low = body.op("Sub", low, body.op("Mul", carry, limb))
    # n = high 2**31 + low; floor(n / 2**(e+1)) = floor(high / 2**(e-30))
    high_divisor = body.pow2(body.op("Sub", shift, body.const(30)))
    quotient = body.op("Div", high, high_divisor)
    remainder = body.op("Add", body.op("Mul", body.op("Sub", high, body.op("Mul", quotient, high_divisor)), limb), low)
    up = body.cast(body.op("Greater", remainder, body.pow2(shift)), INT64)
    return body.op("Mul", body.op("Sign", x), body.op("Add", body.op("Mul", quotient, body.const(2)), up))


def _requantize_with(rescale: Callable[[_Body, str, str, str], str]) -> Callable[[_Body], str]:
    def build(body: _Body) -> str:
        output_bits = body.attribute("output_bits", "int")
        x = rescale(body, body.cast("X", INT64), body.attribute("multiplier", "ints"), body.attribute("shift", "ints"))
        identity = _rescale_small(
            body, body.cast("Identity", INT64), body.attribute("identity_multiplier", "int"),
            body.attribute("identity_shift", "int"),
        )
        half = body.pow2(body.op("Sub", output_bits, body.const(1)))
        low, high = body.op("Neg", half), body.op("Sub", half, body.const(1))
        return body.cast(body.op("Min", body.op("Max", body.op("Add", x, identity), low), high), INT32)

    return build


def _ref_attribute(name: str, refers_to: str, kind: onnx.AttributeProto.AttributeType) -> onnx.AttributeProto:
    """An attribute of a body node that takes the value of the function node's attribute `refers_to`."""
    attribute = onnx.AttributeProto()
    attribute.name, attribute.ref_attr_name, attribute.type = name, refers_to, kind
    return attribute


_REQUANTIZE_ATTRIBUTES = [
    "input_scale", "identity_scale", "output_scale", "output_bits", "multiplier", "shift", "identity_multiplier",
    "identity_shift",
]
# op type -> (inputs, attributes, defaults, builder)
_CONSTANTS = ref.INTEGER_CONSTANT_ATTRIBUTES
_OPS: dict[str, tuple[list[str], list[str], dict[str, int], Callable[[_Body], str]]] = {
    "IntGELU": (["X"], ["input_scale", "output_scale", *_CONSTANTS["IntGELU"]], {}, _int_gelu),
    "IntSoftmax": (
        ["X"], ["input_scale", "exp_scale", "output_scale", *_CONSTANTS["IntSoftmax"]], {"axis": -1, "output_bits": 8},
        _int_softmax,
    ),
    "IntLayerNorm": (
        ["X", "weight", "bias"], ["input_scale", "shift", "output_scale", *_CONSTANTS["IntLayerNorm"]], {"axis": -1},
        _int_layernorm,
    ),
    "IntMatMul": (["A", "B"], ["a_scale", "b_scale"], {}, _int_matmul),
    "IntMatMulWide": (["A", "B"], ["a_scale", "b_scale"], {}, _int_matmul_wide),
    "Requantize": (["X", "Identity"], _REQUANTIZE_ATTRIBUTES, {}, _requantize_with(_rescale_small)),
    "RequantizeWide": (["X", "Identity"], _REQUANTIZE_ATTRIBUTES, {}, _requantize_with(_rescale_wide)),
}
assert set(_OPS) == set(ref.INTEGER_OP_TYPES)
#: the ops whose bodies work on the last axis only (`axis` must be -1; the TensorRT plugins' restriction too)
LAST_AXIS_OPS = ("IntSoftmax", "IntLayerNorm")


def ibert_function(op_type: str, opset: int) -> onnx.FunctionProto:
    """The model-local function of one `ibert` op, integer tensors in and out, its body in the default
    domain at `opset`."""
    inputs, attributes, defaults, build = _OPS[op_type]
    body = _Body(op_type, opset)
    result = build(body)
    body.nodes.append(helper.make_node("Identity", [result], ["Y"], name=f"{op_type}_output"))
    return helper.make_function(
        ref.DOMAIN,
        op_type,
        inputs,
        ["Y"],
        body.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=attributes,
        attribute_protos=[helper.make_attribute(name, value) for name, value in defaults.items()],
        doc_string=f"I-BERT's integer {op_type}, exactly as trt_runtime.contract.ibert.integer_op computes it.",
    )


def add_ibert_functions(model: onnx.ModelProto) -> list[str]:
    """Attach the function of every `ibert` op the graph uses and import the domain; returns the op types."""
    nodes = [n for n in model.graph.node if n.domain == ref.DOMAIN]
    used = sorted({n.op_type for n in nodes})
    unknown = [op for op in used if op not in _OPS]
    if unknown:
        raise ValueError(f"the graph uses {ref.DOMAIN} ops without a function body: {', '.join(unknown)}")
    for node in nodes:
        if node.op_type in LAST_AXIS_OPS:
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
            if axis != -1:
                raise ValueError(f"{node.name}: {node.op_type} axis={axis}; the ibert ops work on the last axis (-1)")
    if not used:
        return used
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    existing = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(ibert_function(op, opset) for op in used if (ref.DOMAIN, op) not in existing)
    if not any(o.domain == ref.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ref.DOMAIN, ref.DOMAIN_VERSION))
    return used
