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
- the GEMM and requantization bodies, which only ONNX Runtime and onnx.reference run, compute in uint64
  modulo 2**64 (unsigned sums and products wrap in both; an integer cast keeps the low bits, the Cast spec's
  "discard higher bits and reinterpret"): a signed int64 is its bit pattern, x + 2**63 maps int64 onto uint64
  in order, so that BitShift floors, and round_half_even(N / 2**e) = floor((N + 2**(e-1) - 1 + b) / 2**e),
  b the parity of floor(N / 2**e), is two shifts, a BitwiseAnd and two Adds (_Body.round_shift);
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

    def round_div_half_even(self, n: str, d: str, doubled: bool = False) -> str:
        """round_half_even(n / d) for int64 n >= 0 and d > 0 with 2n + d and 4d below 2**63 (doubled: the first
        argument is 2n), one Div: 2 floor((2n + d) / 4d) + ((2n + d) mod 4d > 2d)."""
        twice_d = self.op("Add", d, d)
        four_d = self.op("Add", twice_d, twice_d)
        numerator = self.op("Add", n if doubled else self.op("Add", n, n), d)
        quotient = self.op("Div", numerator, four_d)
        remainder = self.op("Sub", numerator, self.op("Mul", quotient, four_d))
        up = self.cast(self.op("Greater", remainder, twice_d), INT64)
        return self.op("Add", self.op("Add", quotient, quotient), up)

    # -- uint64 arithmetic (the GEMM and requantization bodies only: ONNX Runtime and onnx.reference) --

    def u64(self, value: int) -> str:
        return self.const(value % 2**64, np.uint64)

    def shift_right(self, n: str, k: str) -> str:
        return self.op("BitShift", n, k, direction="RIGHT")

    def shift_left(self, n: str, k: str) -> str:
        return self.op("BitShift", n, k, direction="LEFT")

    def low_bits(self, n: str, bits: int) -> str:
        """n mod 2**bits for uint64 n, by two shifts (BitwiseAnd is opset 18; the exports' default is 17)."""
        k = self.u64(64 - bits)
        return self.shift_right(self.shift_left(n, k), k)

    def round_shift(self, n: str, e: str) -> str:
        """round_half_even(N / 2**e) + 2**(63 - e) as uint64, where n is the uint64 pattern of an int64 N with
        |N| + 2**(e-1) < 2**63, for int64 1 <= e <= 61 (per element).

        floor((N + 2**(e-1) - 1 + b) / 2**e) with b the parity of floor(N / 2**e) (bit e of n) rounds half to
        even: a tie N = (2t + 1) 2**(e-1) gives t + b. Adding 2**63 too maps N onto [0, 2**64) in order, so an
        unsigned shift floors; 2**63 is a multiple of 2**e, whence the offset 2**(63 - e)."""
        parity = self.shift_right(self.shift_left(n, self.cast(self.op("Sub", self.const(63), e), UINT64)), self.u64(63))
        half = self.cast(self.op("Sub", self.pow2(self.op("Sub", e, self.const(1))), self.const(1)), UINT64)
        offset = self.op("Add", half, self.u64(2**63))  # constant per channel
        return self.shift_right(self.op("Add", self.op("Add", n, offset), parity), self.cast(e, UINT64))

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
    # min(|x|, -b) + b and sign(x) in int32 (|b_int| < 2**23: gelu_constants bounds c_int ~ b_int**2 by 2**46), on x
    # clamped to [b, -b] first (|x| of -2**31 is not an int32)
    x = body.cast("X", INT64)
    b32 = body.cast(b_int, INT32)
    clamped = body.op("Max", body.op("Min", body.cast("X", INT32), body.op("Neg", b32)), b32)
    shifted = body.cast(body.op("Add", body.op("Abs", clamped), b32), INT64)
    sign = body.cast(body.op("Max", body.op("Min", clamped, body.const(1, np.int32)), body.const(-1, np.int32)), INT64)
    erf_int = body.op("Mul", sign, body.op("Add", body.op("Mul", shifted, shifted), c_int))
    # -(x (floor(erf / 2**14) + shift_int)) = x (O / 2**14 - shift_int - floor((erf + O) / 2**14)), O = 2**62 (Div
    # truncates: the offset makes its numerator non-negative), the constants in one vector
    divisor = body.const(2**ref.GELU_SHIFT_BITS)
    offset = body.const(2**62)
    constant = body.op("Sub", body.op("Div", offset, divisor), shift_int)
    return body.op("Mul", x, body.op("Sub", constant, body.op("Div", body.op("Add", erf_int, offset), divisor)))


def _int_softmax(body: _Body) -> str:
    x0_int, b_int, c_int = (body.attribute(name, "int") for name in ("x0_int", "b_int", "c_int"))
    mantissa, exponent = body.attribute("exp_mantissa", "int"), body.attribute("exp_exponent", "int")
    output_bits = body.attribute("output_bits", "int")
    # d = max(x) - max(x, max(x) + 30 x0) over the last axis: -(x - max(x)) clamped at -30 x0 (exp < 2**-30),
    # in int32 (the bound at max(x) + 30 x0 < -2**31 is -2**31 instead, which no int32 is below)
    x = body.cast("X", INT32)
    top = body.reduce("ReduceMax", x)
    floor = body.op("Add", body.cast(top, INT64), body.op("Mul", body.const(ref.EXP_MAX_Q), x0_int))
    floor = body.cast(body.op("Max", floor, body.const(ref.INT32_MIN)), INT32)
    d = body.op("Sub", top, body.op("Max", x, floor))
    # i-exp: x = -q ln2 + r with q = floor(d / |x0|) (d in [0, 30 |x0|], an int32: softmax_constants checks
    # 30 |x0| < 2**31) and r = -(d - q |x0|), z = max((r + b) r + c, 0) = max(s (s - b) + c, 0) for s = -r
    period = body.cast(body.op("Neg", x0_int), INT32)
    q = body.op("Div", d, period)
    s = body.cast(body.op("Sub", d, body.op("Mul", q, period)), INT64)
    z = body.op("Max", body.op("Add", body.op("Mul", s, body.op("Sub", s, b_int)), c_int), body.const(0))
    # 16-bit requantization: round_half_even(z 2**(30 - q - E) / M) = round_half_even(n / d) with n = z 2**A and
    # d = M 2**(A - 30 + E + q), A = max(30 - E, 0): the per-element power of two only in d, 2**q from an int32
    # table (a Gather of int32 costs ONNX Runtime less than one of int64), then times the constant M 2**(A - 30 + E)
    # (n < 2**60 and 4 d < 2**62: softmax_constants checks 2**A c and M 2**max(E, 0) against 2**60)
    numerator_shift = body.op("Max", body.op("Sub", body.const(ref.EXP_SHIFT_BITS), exponent), body.const(0))
    base = body.op("Mul", mantissa, body.pow2(body.op("Max", body.op("Sub", exponent, body.const(ref.EXP_SHIFT_BITS)), body.const(0))))
    power = body.op("Gather", body.vector([2**i for i in range(ref.EXP_MAX_Q + 1)], np.int32), q, axis=0)
    denominator = body.op("Mul", body.cast(power, INT64), base)
    twice_n = body.op("Mul", z, body.pow2(body.op("Add", numerator_shift, body.const(1))))
    exp16 = body.op("Min", body.round_div_half_even(twice_n, denominator, doubled=True),
                    body.const(2 ** (ref.EXP_BITS - 1) - 1))
    total = body.op("Max", body.reduce("ReduceSum", exp16), body.const(1))
    # y = floor(e f / 2**(32 - b)) with f = floor(2**32 / total) = f1 2**16 + f0, in int32: e <= total gives
    # e f1 <= 2**16, and e f0 < 2**31; floor(e f / 2**(32 - b)) = floor((e f1 + floor(e f0 / 2**16)) / 2**(16 - b))
    factor = body.op("Div", body.const(2**ref.SOFTMAX_SUM_BITS), total)
    factor_high = body.op("Div", factor, body.const(2**16))
    factor_low = body.cast(body.op("Sub", factor, body.op("Mul", factor_high, body.const(2**16))), INT32)
    e = body.cast(exp16, INT32)
    low = body.op("Div", body.op("Mul", e, factor_low), body.const(2**16, np.int32))
    scaled = body.op("Add", body.op("Mul", e, body.cast(factor_high, INT32)), low)
    return body.op("Div", scaled, body.cast(body.pow2(body.op("Sub", body.const(16), output_bits)), INT32))


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
    # floor(y factor / 2) + bias_int = Div(y factor + O, 2) + (bias_int - O / 2), |y factor| < 2**32 < O = 2**40
    offset = body.const(2**_OFFSET_BITS)
    shifted = body.op("Add", body.op("Mul", y, factor), offset)
    return body.op("Add", body.op("Div", shifted, body.const(2)), body.op("Sub", bias_int, body.const(2 ** (_OFFSET_BITS - 1))))


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
    b = _uint8_b(body)
    zero_point = body.const(128, np.uint8)
    high_product = body.op("MatMulInteger", body.cast(high, UINT8), b, zero_point, zero_point)
    # the low byte: the cast to uint8 keeps the low 8 bits
    low_product = body.op("MatMulInteger", body.cast(shifted, UINT8), b, body.const(0, np.uint8), zero_point)
    return body.op("Add", body.op("Mul", body.cast(high_product, INT64), body.const(256)), body.cast(low_product, INT64))


# Each rescale returns (u, offset), uint64: the rescaled integer is u - offset modulo 2**64 (offset a constant,
# per channel or per tensor), so that Requantize moves both terms onto one offset, 2**63, with one Add.


def _rescale_small(body: _Body, x: str, multiplier: str, shift: str) -> tuple[str, str]:
    """round_half_even(x * m / 2**e) for |x| < 3 * 2**30: the product is one int64 (|x m| + 2**(e-1) < 2**63),
    for either sign of x and m (a LayerNorm channel with a negative weight has m < 0), multiplied in uint64
    (a product modulo 2**64 is the int64 product's bit pattern)."""
    n = body.op("Mul", body.cast(x, UINT64), body.cast(multiplier, UINT64))
    rounded = body.round_shift(n, shift)
    return rounded, body.cast(body.pow2(body.op("Sub", body.const(63), shift)), UINT64)


def _rescale_wide(body: _Body, x: str, multiplier: str, shift: str) -> tuple[str, str]:
    """round_half_even(x * m / 2**e) for |x| < 2**62 and 30 <= e <= 61, in uint64 on x' = x + 2**62 in (0, 2**63)
    and M = |m|: x * m = sign(m) (x' M - K) with K = M 2**(62 - e) even, so round(x m / 2**e) =
    sign(m) (round(x' M / 2**e) - K) (round half to even commutes with an even shift and with negation).

    x' = ah 2**30 + al gives x' M = H 2**30 + L (H = ah M + floor(al M / 2**30) < 2**64, L < 2**30), and
    round(x' M / 2**e) = floor((H + floor((L + 2**(e-1) - 1 + b) / 2**30)) / 2**(e-30)), b = bit e - 30 of H
    (the parity, as in _Body.round_shift). M = 2**31 with e >= 31 is taken as (2**30, e - 1), the same
    ratio, so that H + floor(...) stays below 2**64 even at |x| = 2**62 - 1."""
    x_shifted = body.op("Add", body.cast(x, UINT64), body.u64(2**62))
    # constants per channel: M and e (normalized), K
    magnitude = body.op("Abs", multiplier)
    top = body.cast(body.op("And", body.op("Equal", magnitude, body.const(2**31)),
                            body.op("Greater", shift, body.const(30))), INT64)
    shift = body.op("Sub", shift, top)
    m = body.cast(body.op("Div", magnitude, body.op("Add", top, body.const(1))), UINT64)
    k = body.cast(body.op("Mul", body.op("Div", magnitude, body.op("Add", top, body.const(1))),
                          body.pow2(body.op("Sub", body.const(62), shift))), UINT64)
    # the rescaled integer sign(m) (R - K) = sign(m) R - sign(m) K: u - offset modulo 2**64, sign(m) = -1 being
    # 2**64 - 1 (no uint64 Where in ONNX Runtime 1.32)
    sign = body.cast(body.op("Sign", multiplier), UINT64)
    offset = body.op("Mul", k, sign)
    # the product in two limbs
    limb = body.u64(30)
    a_high, a_low = body.shift_right(x_shifted, limb), body.low_bits(x_shifted, 30)
    p = body.op("Mul", a_low, m)
    high = body.op("Add", body.op("Mul", a_high, m), body.shift_right(p, limb))
    low = body.low_bits(p, 30)
    s = body.cast(body.op("Sub", shift, body.const(30)), UINT64)
    parity = body.shift_right(body.shift_left(high, body.cast(body.op("Sub", body.const(93), shift), UINT64)), body.u64(63))
    half = body.cast(body.op("Sub", body.pow2(body.op("Sub", shift, body.const(1))), body.const(1)), UINT64)
    carry = body.shift_right(body.op("Add", body.op("Add", low, half), parity), limb)
    rounded = body.shift_right(body.op("Add", high, carry), s)
    return body.op("Mul", rounded, sign), offset


def _requantize_with(rescale: Callable[[_Body, str, str, str], tuple[str, str]]) -> Callable[[_Body], str]:
    def build(body: _Body) -> str:
        output_bits = body.attribute("output_bits", "int")
        x, x_offset = rescale(body, "X", body.attribute("multiplier", "ints"), body.attribute("shift", "ints"))
        identity, identity_offset = _rescale_small(
            body, "Identity", body.attribute("identity_multiplier", "int"), body.attribute("identity_shift", "int"),
        )
        # sum + 2**63: the identity term and the constants in one tensor (a constant when Identity is the
        # scalar 0 of a node without one), then one Add; the clip bounds are then scalars, and the int32
        # cast drops the offset (a multiple of 2**32)
        correction = body.op("Sub", body.u64(2**63), body.op("Add", x_offset, identity_offset))
        total = body.op("Add", x, body.op("Add", identity, correction))
        half = body.cast(body.pow2(body.op("Sub", output_bits, body.const(1))), UINT64)
        low = body.op("Sub", body.u64(2**63), half)
        high = body.op("Sub", body.op("Add", body.u64(2**63), half), body.u64(1))
        return body.cast(body.op("Clip", total, low, high), INT32)

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
