"""I-BERT's integer arithmetic as torch custom ops (`torch.library`), one per `ibert` ONNX op.

Every op takes and returns integer tensors and computes exactly what `trt_runtime.contract.ibert` (the
spec, NumPy int64) computes: the same algorithms, the integer constants taken from its `*_constants` /
`requantize_attributes` functions. The integer modules call these ops in eager mode and in the trace,
so the exporter maps each call to one `ibert` node (exporter.ibert_symbolic) and the exported graph is
the same arithmetic. Their arguments after the tensors are the ONNX attributes of the op, in order:

    ibert::int_gelu(Tensor x, float[] input_scale, float[] output_scale, int[] b_int, int[] c_int,
                    int[] shift_int) -> int64                                               IntGELU
    ibert::int_softmax(Tensor x, int axis, int output_bits, float input_scale, float exp_scale,
                       float output_scale, int x0_int, int b_int, int c_int, int exp_mantissa,
                       int exp_exponent) -> int32                                           IntSoftmax
    ibert::int_layernorm(Tensor x, Tensor weight, Tensor bias, int axis, float input_scale, int shift,
                         float[] output_scale, int[] bias_int) -> int64                     IntLayerNorm
    ibert::int_matmul(Tensor a, Tensor b, float a_scale, float[] b_scale) -> int32           IntMatMul
    ibert::int_matmul_wide(Tensor a, Tensor b, float a_scale, float[] b_scale) -> int64      IntMatMulWide
    ibert::requantize(Tensor x, Tensor identity, float[] input_scale, float identity_scale,
                      float[] output_scale, int output_bits, int[] multiplier, int[] shift,
                      int identity_multiplier, int identity_shift) -> int32                 Requantize
    ibert::requantize_wide(...the same...) -> int32                                         RequantizeWide

Derived arguments (output_scale and the integer constants of the nonlinearities, the multipliers and
shifts) are checked against their derivation (`*_attributes` and `integer_constant_attributes` build them). The preconditions of the GEMM and requantization ops (operand ranges, |x| below
`REQUANTIZE_INPUT_BOUND` for `requantize`) are what the modules guarantee from static bounds; inside
them, every op is exact. No op has a gradient: the modules carry a float shadow for training
(models.quantization.integer.modules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trt_runtime.contract import ibert as ref

#: torch op -> ONNX op type in the `ibert` domain (arguments after the tensors are its attributes, in order)
ONNX_OP_TYPES = {
    "ibert::int_gelu": "IntGELU",
    "ibert::int_softmax": "IntSoftmax",
    "ibert::int_layernorm": "IntLayerNorm",
    "ibert::int_matmul": "IntMatMul",
    "ibert::int_matmul_wide": "IntMatMulWide",
    "ibert::requantize": "Requantize",
    "ibert::requantize_wide": "RequantizeWide",
}
_MASK31 = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# int64 building blocks, one for one with the reference


def _floor_div(a: Tensor, b: Tensor | int) -> Tensor:
    return torch.div(a, b, rounding_mode="floor")


def round_div_half_even(numerator: Tensor, denominator: Tensor | int) -> Tensor:
    quotient = _floor_div(numerator, denominator)
    twice_remainder = 2 * (numerator - quotient * denominator)
    up = (twice_remainder > denominator) | ((twice_remainder == denominator) & (quotient & 1).bool())
    return quotient + up.to(torch.int64)


def bit_length(n: Tensor) -> Tensor:
    floor_log2 = torch.zeros_like(n)
    for step in (32, 16, 8, 4, 2, 1):
        floor_log2 += step * (torch.bitwise_right_shift(n, floor_log2 + step) > 0).to(torch.int64)
    return torch.where(n > 0, floor_log2 + 1, 0)


def isqrt(n: Tensor) -> Tensor:
    """floor(sqrt(n)) by Newton's method from 2**ceil(bits/2), as the reference's isqrt."""
    x = torch.bitwise_left_shift(torch.ones_like(n), _floor_div(bit_length(n) + 1, 2))
    while True:
        nxt = torch.minimum(x, _floor_div(x + _floor_div(n, x.clamp(min=1)), 2))
        if torch.equal(nxt, x):
            return x
        x = nxt


def _pow2(e: Tensor) -> Tensor:
    return torch.bitwise_left_shift(torch.ones_like(e), e)


def rescale(z: Tensor, multiplier: Tensor, shift: Tensor) -> Tensor:
    """round_half_to_even(z * multiplier / 2**shift) exactly for |z| < 2**62 (two 31-bit limbs), int64.

    With N = z * m and n = N + 2**(e-1): round_half_even(N / 2**e) = 2 floor(n / 2**(e+1)) + (n mod 2**(e+1) >
    2**e), for either sign with floor division (an arithmetic shift). N does not fit int64: z = zh 2**31 + zl
    (zl in [0, 2**31)) gives N = H 2**31 + L with H = zh m + floor(zl m / 2**31) and L in [0, 2**31).
    multiplier (|m| <= 2**31, either sign) and shift (1..61) broadcast against z.
    """
    z = z.to(torch.int64)
    m, e = multiplier.to(torch.int64), shift.to(torch.int64)
    p = torch.bitwise_and(z, _MASK31) * m
    high = torch.bitwise_right_shift(z, 31) * m + torch.bitwise_right_shift(p, 31)
    low = torch.bitwise_and(p, _MASK31) + _pow2(e - 1)  # L + 2**(e-1) < 2**31 + 2**60
    one_e = _pow2(e)
    # shift >= 30: n = high' 2**31 + low' (low' < 2**31), floor(n / 2**(e+1)) = high' >> (e - 30)
    high_c = high + torch.bitwise_right_shift(low, 31)
    low_c = torch.bitwise_and(low, _MASK31)
    k = (e - 30).clamp(min=0)
    q_a = torch.bitwise_right_shift(high_c, k)
    r_a = torch.bitwise_left_shift(high_c - torch.bitwise_left_shift(q_a, k), 31) + low_c
    big = 2 * q_a + (r_a > one_e)
    # shift <= 29: floor(n / 2**(e+1)) = high 2**(30 - e) + (low >> (e + 1))
    j = (30 - e).clamp(min=0)
    q_b = torch.bitwise_left_shift(high, j) + torch.bitwise_right_shift(low, e + 1)
    small = 2 * q_b + (torch.bitwise_and(low, 2 * one_e - 1) > one_e)
    return torch.where(e >= 30, big, small)


def rescale_small(z: Tensor, multiplier: Tensor, shift: Tensor) -> Tensor:
    """rescale for |z| < REQUANTIZE_INPUT_BOUND: one int64 product (|z m| + 2**(e-1) < 2**63), floor shifts."""
    e = shift.to(torch.int64)
    n = z.to(torch.int64) * multiplier.to(torch.int64)
    n += _pow2(e - 1)
    q = torch.bitwise_right_shift(n, e + 1)
    n -= torch.bitwise_left_shift(q, e + 1)  # the remainder, in [0, 2**(e+1))
    q *= 2
    q += n > _pow2(e)
    return q


@lru_cache(maxsize=1024)
def _gelu_constants(input_scale: tuple[float, ...]) -> ref.GeluConstants:
    return ref.gelu_constants(input_scale)


@lru_cache(maxsize=1024)
def _softmax_constants(input_scale: float, exp_scale: float) -> ref.SoftmaxConstants:
    return ref.softmax_constants(input_scale, exp_scale)


def _check_output_scale(op: str, given: Sequence[float] | float, derived: np.ndarray | float) -> None:
    if not np.array_equal(np.asarray(given, np.float32).ravel(), np.asarray(derived, np.float32).ravel()):
        raise ValueError(
            f"ibert::{op}: output_scale does not match the one derived from the other arguments; build the "
            f"arguments with trt_runtime.contract.ibert.{op.removeprefix('int_')}_attributes()"
        )


def exp_integers(x_int: Tensor, consts: ref.ExpConstants, axis: int) -> tuple[Tensor, Tensor]:
    """I-BERT's i-exp of x_int - max(x_int): (z, q) with exp_int = z * 2**(30 - q)."""
    x_int = x_int.to(torch.int64)
    x = x_int - x_int.amax(dim=axis, keepdim=True)
    x = x.clamp(min=ref.EXP_MAX_Q * consts.x0_int)
    q = _floor_div(x, consts.x0_int)
    r = x - consts.x0_int * q
    z = ((r + consts.b_int) * r + consts.c_int).clamp(min=0)
    return z, q


def exp_values(x_int: Tensor, input_scale: float, axis: int = -1) -> Tensor:
    """The un-requantized exp integers z * 2**(30 - q) (as float64) that the softmax's 16-bit QuantAct sees."""
    consts = ref.exp_constants(input_scale)
    z, q = exp_integers(x_int, consts, axis)
    return z.to(torch.float64) * torch.exp2((ref.EXP_SHIFT_BITS - q).to(torch.float64))


def layernorm_centered(x_int: Tensor, axis: int = -1) -> Tensor:
    """y = x_int - round_half_to_even(mean(x_int)) along axis (int64): what IntLayerNorm normalizes."""
    x = x_int.to(torch.int64)
    return x - round_div_half_even(x.sum(dim=axis, keepdim=True), x.shape[axis])


# --------------------------------------------------------------------------------------------------
# the nonlinearities


def _check_constants(op: str, given: Mapping[Any, Any], derived: Mapping[Any, Any]) -> None:
    if any(list(np.atleast_1d(given[name])) != list(np.atleast_1d(value)) for name, value in derived.items()):
        raise ValueError(
            f"ibert::{op}: integer constants do not match the ones derived from the scales; build them with "
            f"trt_runtime.contract.ibert.integer_constant_attributes()"
        )


@torch.library.custom_op("ibert::int_gelu", mutates_args=())
def int_gelu(
    x: Tensor, input_scale: Sequence[float], output_scale: Sequence[float], b_int: Sequence[int], c_int: Sequence[int],
    shift_int: Sequence[int],
) -> Tensor:
    """I-BERT's i-GELU on integers (reference int_gelu); scales per tensor (1 value) or per last-axis channel."""
    consts = _gelu_constants(tuple(float(s) for s in input_scale))
    _check_output_scale("int_gelu", output_scale, consts.output_scale)
    _check_constants("int_gelu", {"b_int": b_int, "c_int": c_int, "shift_int": shift_int},
                     {"b_int": consts.b_int, "c_int": consts.c_int, "shift_int": consts.shift_int})
    device = x.device
    x_int = x.to(torch.int64)
    b = torch.from_numpy(consts.b_int).to(device)
    # in place on one buffer (the tensors are large): t = sign(x) * ((min(|x|, -b) + b)^2 + c) >> 14
    t = torch.minimum(x_int.abs(), -b)
    t += b
    t *= t
    t += torch.from_numpy(consts.c_int).to(device)
    t *= torch.sign(x_int)
    t.bitwise_right_shift_(ref.GELU_SHIFT_BITS)  # floor division by 2**14: the erf integer
    t += torch.from_numpy(consts.shift_int).to(device)
    t *= x_int
    t.neg_()  # y_int = -(x * (erf + shift)), for a positive output scale
    return t


@torch.library.custom_op("ibert::int_softmax", mutates_args=())
def int_softmax(
    x: Tensor, axis: int, output_bits: int, input_scale: float, exp_scale: float, output_scale: float, x0_int: int,
    b_int: int, c_int: int, exp_mantissa: int, exp_exponent: int,
) -> Tensor:
    """I-BERT's i-softmax on integers (reference int_softmax), 16-bit exp requantized with exp_scale."""
    consts = _softmax_constants(float(input_scale), float(exp_scale))
    if not 1 <= output_bits <= 16:
        raise ValueError(f"ibert::int_softmax: output_bits must be in 1..16, got {output_bits}")
    _check_output_scale("int_softmax", output_scale, 2.0**-output_bits)
    given = (x0_int, b_int, c_int, exp_mantissa, exp_exponent)
    derived = (consts.x0_int, consts.b_int, consts.c_int, consts.exp_mantissa, consts.exp_exponent)
    _check_constants("int_softmax", dict(enumerate(given)), dict(enumerate(derived)))
    z, q = exp_integers(x, consts, axis)
    k = ref.EXP_SHIFT_BITS - q - consts.exp_exponent
    numerator = torch.bitwise_left_shift(z, k.clamp(min=0))
    denominator = torch.bitwise_left_shift(torch.full_like(k, consts.exp_mantissa), (-k).clamp(min=0))
    exp16 = round_div_half_even(numerator, denominator).clamp(0, 2 ** (ref.EXP_BITS - 1) - 1)
    total = exp16.sum(dim=axis, keepdim=True).clamp(min=1)
    factor = _floor_div(torch.full_like(total, 2**ref.SOFTMAX_SUM_BITS), total)
    y_int = torch.bitwise_right_shift(exp16 * factor, ref.SOFTMAX_SUM_BITS - output_bits)
    return y_int.to(torch.int32)


@torch.library.custom_op("ibert::int_layernorm", mutates_args=())
def int_layernorm(
    x: Tensor, weight: Tensor, bias: Tensor, axis: int, input_scale: float, shift: int, output_scale: Sequence[float],
    bias_int: Sequence[int],
) -> Tensor:
    """I-BERT's integer LayerNorm (reference int_layernorm) over `axis`, integer square root."""
    if shift < 0:
        raise ValueError(f"ibert::int_layernorm: shift must be >= 0, got {shift}")
    consts = ref.layernorm_constants(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())
    _check_output_scale("int_layernorm", output_scale, consts.output_scale)
    _check_constants("int_layernorm", {"bias_int": bias_int}, {"bias_int": consts.bias_int})
    y = layernorm_centered(x, axis)
    y_shifted = torch.bitwise_right_shift(y, shift)
    var = (y_shifted * y_shifted).sum(dim=axis, keepdim=True)
    std = torch.bitwise_left_shift(isqrt(var).clamp(min=1), shift)
    factor = _floor_div(torch.full_like(std, 2**ref.LAYERNORM_FACTOR_BITS), std)
    shape = [1] * x.dim()
    shape[axis] = -1
    bias = torch.from_numpy(consts.bias_int).to(x.device).view(shape)
    return torch.bitwise_right_shift(y * factor, 1) + bias


# --------------------------------------------------------------------------------------------------
# GEMMs and requantization


def _exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """A @ B of integers through float64: exact, every partial sum being an integer below 2**53
    (|A| <= 2**15 + 127, |B| <= 128, K < 2**29), whatever the summation order."""
    return torch.matmul(a.to(torch.float64), b.to(torch.float64))


@torch.library.custom_op("ibert::int_matmul", mutates_args=())
def int_matmul(a: Tensor, b: Tensor, a_scale: float, b_scale: Sequence[float]) -> Tensor:
    """A @ B with |A| <= 128 and int8 B, exact, int32 (the accumulator bound is checked where it is built)."""
    return _exact_matmul(a, b).to(torch.int32)


@torch.library.custom_op("ibert::int_matmul_wide", mutates_args=())
def int_matmul_wide(a: Tensor, b: Tensor, a_scale: float, b_scale: Sequence[float]) -> Tensor:
    """A @ B with |A| <= 2**15 + 127 (16-bit activations, softmax probabilities) and int8 B, exact, int64."""
    return _exact_matmul(a, b).to(torch.int64)


def _channel_tensor(values: Sequence[int], x: Tensor) -> Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=x.device)


def _requantize(
    rescale_x, x: Tensor, identity: Tensor, identity_scale: float, output_bits: int, multiplier: Sequence[int],
    shift: Sequence[int], identity_multiplier: int, identity_shift: int,
) -> Tensor:
    y = rescale_x(x, _channel_tensor(multiplier, x), _channel_tensor(shift, x))
    if identity_scale:
        y = y + rescale_small(identity, _channel_tensor([identity_multiplier], x), _channel_tensor([identity_shift], x))
    low, high = ref.signed_range(output_bits)
    return y.clamp(low, high).to(torch.int32)


@lru_cache(maxsize=4096)
def _requantize_derivation(
    input_scale: tuple[float, ...], output_scale: tuple[float, ...], output_bits: int, identity_scale: float
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    a = ref.requantize_attributes(input_scale, output_scale, output_bits, identity_scale or None)
    return tuple(a["multiplier"]), tuple(a["shift"]), a["identity_multiplier"], a["identity_shift"]


def _check_requantize(
    op: str, input_scale, identity_scale, output_scale, output_bits, multiplier, shift, identity_multiplier, identity_shift
) -> None:
    derived = _requantize_derivation(
        tuple(float(s) for s in input_scale), tuple(float(s) for s in output_scale), int(output_bits), float(identity_scale)
    )
    if (tuple(multiplier), tuple(shift), identity_multiplier, identity_shift) != derived:
        raise ValueError(
            f"ibert::{op}: multiplier/shift do not match the ones derived from the scales; build the arguments "
            f"with trt_runtime.contract.ibert.requantize_attributes()"
        )


@torch.library.custom_op("ibert::requantize", mutates_args=())
def requantize(
    x: Tensor, identity: Tensor, input_scale: Sequence[float], identity_scale: float, output_scale: Sequence[float],
    output_bits: int, multiplier: Sequence[int], shift: Sequence[int], identity_multiplier: int, identity_shift: int,
) -> Tensor:
    """FixedPointMul exactly (reference requantize) for |x| < REQUANTIZE_INPUT_BOUND; identity_scale 0: none."""
    _check_requantize("requantize", input_scale, identity_scale, output_scale, output_bits, multiplier, shift,
                      identity_multiplier, identity_shift)
    return _requantize(rescale_small, x, identity, identity_scale, output_bits, multiplier, shift,
                       identity_multiplier, identity_shift)


@torch.library.custom_op("ibert::requantize_wide", mutates_args=())
def requantize_wide(
    x: Tensor, identity: Tensor, input_scale: Sequence[float], identity_scale: float, output_scale: Sequence[float],
    output_bits: int, multiplier: Sequence[int], shift: Sequence[int], identity_multiplier: int, identity_shift: int,
) -> Tensor:
    """`requantize` for |x| < 2**62 (an IntGELU output, a huge accumulator): two 31-bit limbs."""
    _check_requantize("requantize_wide", input_scale, identity_scale, output_scale, output_bits, multiplier, shift,
                      identity_multiplier, identity_shift)
    return _requantize(rescale, x, identity, identity_scale, output_bits, multiplier, shift,
                       identity_multiplier, identity_shift)


# --------------------------------------------------------------------------------------------------
# fake implementations: shapes and types for tracing


@int_gelu.register_fake
def _(x, *attributes):
    return torch.empty_like(x, dtype=torch.int64)


@int_softmax.register_fake
def _(x, *attributes):
    return torch.empty_like(x, dtype=torch.int32)


@int_layernorm.register_fake
def _(x, weight, bias, *attributes):
    return torch.empty_like(x, dtype=torch.int64)


def _matmul_shape(a: Tensor, b: Tensor) -> list[int]:
    return list(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])) + [a.shape[-2], b.shape[-1]]


@int_matmul.register_fake
def _(a, b, a_scale, b_scale):
    return a.new_empty(_matmul_shape(a, b), dtype=torch.int32)


@int_matmul_wide.register_fake
def _(a, b, a_scale, b_scale):
    return a.new_empty(_matmul_shape(a, b), dtype=torch.int64)


def _requantize_fake(x, identity, *args):
    return torch.empty(torch.broadcast_shapes(x.shape, identity.shape), dtype=torch.int32, device=x.device)


requantize.register_fake(_requantize_fake)
requantize_wide.register_fake(_requantize_fake)
