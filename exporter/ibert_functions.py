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
- the GEMM and requantization bodies, which only ONNX Runtime and onnx.reference run, divide by powers of
  two with uint64 shifts instead: floor(n / 2**k) = ((uint64(n) + 2**63) >> k) - 2**(63 - k), an ONNX
  cast wrapping modulo 2**64 (the Cast spec: "discard higher bits and reinterpret");
- bit_length(n): the number of table entries n reaches (a ReduceSum of comparisons);
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_runtime.contract import ibert as ref

INT64, INT32, INT8, UINT8, UINT64 = TensorProto.INT64, TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT64
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

    # -- uint64 shifts (the GEMM and requantization bodies only: ONNX Runtime and onnx.reference) -----

    def u64(self, value: int) -> str:
        return self.const(value, np.uint64)

    def floor_shift(self, n: str, k: str) -> tuple[str, str]:
        """(floor(n / 2**k) + 2**(63-k), n mod 2**k), both uint64, for int64 n and 1 <= k <= 62 per element, by
        an unsigned shift: uint64(n) + 2**63 maps int64 onto uint64 keeping the order (ONNX casts integers
        modulo 2**64), and 2**63 is a multiple of 2**k."""
        unsigned = self.op("Add", self.cast(n, UINT64), self.u64(2**63))
        quotient = self.op("BitShift", unsigned, k, direction="RIGHT")
        return quotient, self.op("Sub", unsigned, self.op("BitShift", quotient, k, direction="LEFT"))

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
    floor = body.op("Mul", body.const(ref.EXP_MAX_Q), x0_int)
    x = body.op("Max", body.op("Sub", x, body.reduce("ReduceMax", x)), floor)
    # i-exp: x = -q ln2 + r, z = exp(r) as a polynomial; x in [30 x0, 0] is an int32 (softmax_constants checks
    # 30 |x0| < 2**31), x <= 0 and x0 < 0: Div truncates = floors
    x32, x0_32 = body.cast(x, INT32), body.cast(x0_int, INT32)
    q = body.op("Div", x32, x0_32)
    r = body.cast(body.op("Sub", x32, body.op("Mul", x0_32, q)), INT64)
    zero = body.const(0)
    z = body.op("Max", body.op("Add", body.op("Mul", body.op("Add", r, b_int), r), c_int), zero)
    # 16-bit requantization: round_half_even(z * 2**(30 - q) / (M * 2**E)), the power of two on either side
    k = body.op("Sub", body.op("Sub", body.const(ref.EXP_SHIFT_BITS), body.cast(q, INT64)), exponent)
    power = body.pow2(body.op("Abs", k))
    up = body.op("Less", zero, k)
    numerator = body.op("Where", up, body.op("Mul", z, power), z)
    denominator = body.op("Where", up, mantissa, body.op("Mul", mantissa, power))
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


def _uint8_b(body: _Body) -> str:
    """B + 128 as uint8 (B int8, or int32 in [-128, 127]): the zero point 128 gives B back."""
    return body.cast(body.op("Add", body.cast("B", INT32), body.const(128, np.int32)), UINT8)


def _int_matmul(body: _Body) -> str:
    """A @ B for |A| <= 128 as one u8 x u8 MatMulInteger with zero points 128: (A + 128 - 128)(B + 128 - 128).

    Exact on every x86 CPU: ONNX Runtime's u8 x u8 kernels widen both operands to int16 and add pairs in
    int32 (MLAS's U8U8 dispatch: vpmaddwd on AVX2 / AVX512, vpdpbuud with AVX-VNNI-INT8), unlike its u8 x s8
    kernels on AVX2, which add pairs of products in a saturating int16 (vpmaddubsw)."""
    zero_point = body.const(128, np.uint8)
    a = body.cast(body.op("Add", body.cast("A", INT32), body.const(128, np.int32)), UINT8)
    return body.op("MatMulInteger", a, _uint8_b(body), zero_point, zero_point)


def _int_matmul_wide(body: _Body) -> str:
    """A @ B for A in [-2**15, 2**15 - 1]: A + 2**15 = 256 hi + lo (hi, lo in [0, 255]), so A = 256 (hi - 128) + lo:
    two u8 x u8 MatMulIntegers, hi's with zero point 128, added exactly in int64."""
    shifted = body.op("Add", body.cast("A", INT32), body.const(2**15, np.int32))  # non-negative: Div floors
    high = body.op("Div", shifted, body.const(256, np.int32))
    low = body.op("Sub", shifted, body.op("Mul", high, body.const(256, np.int32)))
    b = _uint8_b(body)
    zero_point = body.const(128, np.uint8)
    high_product = body.op("MatMulInteger", body.cast(high, UINT8), b, zero_point, zero_point)
    low_product = body.op("MatMulInteger", body.cast(low, UINT8), b, body.const(0, np.uint8), zero_point)
    return body.op("Add", body.op("Mul", body.cast(high_product, INT64), body.const(256)), body.cast(low_product, INT64))


def _rescale_small(body: _Body, x: str, multiplier: str, shift: str) -> str:
    """round_half_even(x * m / 2**e) for |x| < 3 * 2**30 (one int64 product n = x m + 2**(e-1), |n| < 2**63):
    2 floor(n / 2**(e+1)) + (n mod 2**(e+1) > 2**e), for either sign of x and m (a LayerNorm channel with a
    negative weight has m < 0), the floor by an unsigned shift."""
    n = body.op("Add", body.op("Mul", x, multiplier), body.pow2(body.op("Sub", shift, body.const(1))))
    k = body.cast(body.op("Add", shift, body.const(1)), UINT64)
    quotient, remainder = body.floor_shift(n, k)  # remainder in [0, 2**(e+1))
    up = body.cast(body.op("Greater", remainder, body.cast(body.pow2(shift), UINT64)), UINT64)
    doubled = body.op("Add", body.op("BitShift", quotient, body.u64(1), direction="LEFT"), up)
    # quotient carries the offset 2**63 / 2**(e+1): twice it is 2**(63 - e)
    return body.op("Sub", body.cast(doubled, INT64), body.pow2(body.op("Sub", body.const(63), shift)))


def _rescale_wide(body: _Body, x: str, multiplier: str, shift: str) -> str:
    """round_half_even(x * m / 2**e) for |x| < 2**62 and e >= 30, in uint64 on |x| and |m|: |x| |m| = H 2**31 + L
    in two 31-bit limbs, then 2 floor(n / 2**(e+1)) + (n mod 2**(e+1) > 2**e) with n = H 2**31 + L + 2**(e-1)."""
    sign = body.op("Mul", body.op("Sign", x), body.op("Sign", multiplier))
    m = body.cast(body.op("Abs", multiplier), UINT64)
    a = body.cast(body.op("Abs", x), UINT64)
    limb = body.u64(31)

    def split(value: str) -> tuple[str, str]:  # (value >> 31, value mod 2**31)
        high = body.op("BitShift", value, limb, direction="RIGHT")
        return high, body.op("Sub", value, body.op("BitShift", high, limb, direction="LEFT"))

    a_high, a_low = split(a)
    p_high, p_low = split(body.op("Mul", a_low, m))  # al m < 2**62
    high = body.op("Add", body.op("Mul", a_high, m), p_high)
    carry, low = split(body.op("Add", p_low, body.cast(body.pow2(body.op("Sub", shift, body.const(1))), UINT64)))
    high = body.op("Add", high, carry)
    # floor(n / 2**(e+1)) = high >> (e - 30); the remainder (high mod 2**(e-30)) 2**31 + low < 2**(e+1)
    k = body.cast(body.op("Sub", shift, body.const(30)), UINT64)
    quotient = body.op("BitShift", high, k, direction="RIGHT")
    rest = body.op("Sub", high, body.op("BitShift", quotient, k, direction="LEFT"))
    remainder = body.op("Add", body.op("BitShift", rest, limb, direction="LEFT"), low)
    up = body.cast(body.op("Greater", remainder, body.cast(body.pow2(shift), UINT64)), UINT64)
    magnitude = body.op("Add", body.op("BitShift", quotient, body.u64(1), direction="LEFT"), up)
    return body.op("Mul", body.cast(magnitude, INT64), sign)


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
        return body.cast(body.op("Clip", body.op("Add", x, identity), low, high), INT32)

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
