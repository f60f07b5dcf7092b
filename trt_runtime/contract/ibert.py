"""The `ibert` op contract: I-BERT's integer-only nonlinearities in NumPy, the reference every implementation matches.

This module is the contract of the `ibert` ONNX domain (version 1): its name, version and op list, the
integer constants derived from the scales, and the NumPy int64 reference of each op. The torch custom
ops (`models.quantization.integer.ops`), the exporter's ONNX function bodies and the TensorRT plugin
kernels (which take their host constants from `gelu_tables` / `softmax_constants` / `layernorm_tables`
here) all compute these functions and are tested against them for exact (bitwise) equality. NumPy
only, so the torch-free runtime and the exporter share it (`trt_runtime.contract`).

Data path: int64 only. The float32 scales enter once, through the `*_constants` functions, which
derive the integer constants in float32 with exactly the expressions of Hugging Face's
`transformers.models.ibert.quant_modules` (including torch's `python_float / tensor`, which is
`reciprocal(tensor) * python_float`). Every implementation takes its constants from these functions
(or reproduces their float32 arithmetic bit for bit), so the integer results agree exactly.

The ops (domain `ibert`, version 1)
-----------------------------------
All ops take and return float32 tensors that hold integer x scale.

Input quantization (all ops): ``x_int = int64(clip(round_half_to_even(float32(X) / float32(input_scale)),
-2**31, 2**31 - 1))``, the division in float32 as ONNX QuantizeLinear does it; the clip to the int32
range keeps masked attention scores (-3.4e38) finite. Output: ``Y = float32(y_int) * output_scale``,
in float32 (int64 -> float32 rounds to nearest even).

``IntGELU(X) -> Y``
    input_scale: FLOATS, length 1 or the size of the last axis (per channel after I-BERT's per-channel
    QuantLinear). output_scale: FLOATS, same length, derived: ``-(input_scale * sigmoid_scale / 2)``,
    where sigmoid_scale < 0 is I-BERT's erf scale; we negate it (and y_int) so the output scale is
    positive. See `int_gelu`.
``IntSoftmax(X) -> Y``
    axis: INT (-1). output_bits: INT (8). input_scale: FLOAT. exp_scale: FLOAT, the scale of the 16-bit
    requantization of the exp values (I-BERT's inner ``QuantAct(16)``, i.e. Hugging Face's
    ``softmax.act.act_scaling_factor``, in units of the un-requantized exp integers).
    output_scale: FLOAT, derived: ``2**-output_bits``. See `int_softmax`.
``IntLayerNorm(X, weight, bias) -> Y``
    axis: INT (-1). input_scale: FLOAT. shift: INT (I-BERT's overflow shift, >= 0).
    output_scale: FLOATS per channel, derived: ``float32(sqrt(float32(C)) / 2**30) * weight``.
    See `int_layernorm`.

`ibert_op(op_type, X, weight, bias, **attributes)` runs one op on float arrays with its ONNX
attributes; `gelu_attributes`, `softmax_attributes` and `layernorm_attributes` build those
attributes (the derived ones included) from the scales.

Differences from Hugging Face's float32 emulation (`quant_modules.py`) are documented in
docs/integer.md: Hugging Face keeps "integers" in float32 tensors (not rounded on input, rounded to
24-bit mantissas when large, `sqrt` in float), we compute exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the custom-op domain of I-BERT's integer nonlinearities (DESIGN.md), its version and op names
DOMAIN = "ibert"
DOMAIN_VERSION = 1
OP_TYPES = ("IntGELU", "IntSoftmax", "IntLayerNorm")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_INT64_SAFE_BITS = 62  # products and shifts in the data path stay below 2**62
_EXP_SAFE_BITS = 60  # IntSoftmax's 16-bit exp requantization: numerator and denominator

# IntGELU (I-BERT paper, Algorithm 2): erf(x) ~ sign(x) * [a (min(|x|, -b) + b)^2 + 1], x scaled by 1/k.
GELU_K = 1.4142
GELU_A = -0.2888
GELU_B = -1.769
GELU_C = 1.0 / GELU_A  # Hugging Face stores c / a
GELU_SHIFT_BITS = 14  # erf integers are divided by 2**14 against overflow ("const" in Hugging Face)

# IntSoftmax (Algorithm 3): exp(r) ~ a (r + b)^2 + c on (-ln 2, 0], exp(x) = 2^-q exp(r).
EXP_X0 = -0.6931  # -ln 2
EXP_A = 0.35815147
EXP_B = 0.96963238 / EXP_A  # Hugging Face stores b / a and c / a
EXP_C = 1.0 / EXP_A
EXP_SHIFT_BITS = 30  # exp integers are multiplied by 2**(30 - q) ("const")
EXP_MAX_Q = 30  # inputs below 30 * x0 are clamped there (exp < 2**-30)
EXP_BITS = 16  # the inner QuantAct(16) requantizes exp to 16 bits
SOFTMAX_SUM_BITS = 32  # factor = floor(2**32 / sum(exp))

# IntLayerNorm (Algorithm 4): std by integer square root; the output carries 2**30 / sqrt(C) per unit.
LAYERNORM_FACTOR_BITS = 31  # factor = floor(2**31 / std); y = floor(y * factor / 2)
LAYERNORM_SCALE_BITS = 30
LAYERNORM_VAR_BITS = 32  # I-BERT picks `shift` so the variance sum stays below 2**32
#: Newton iterations that always reach floor(sqrt(n)) from 2**ceil(bits/2), for 0 <= n < 2**62
#: (an unrolled implementation may use this many; `isqrt` itself stops when Newton stops decreasing).
ISQRT_ITERATIONS = 6

#: requantization (FixedPointMul): 31-bit dyadic multipliers, shifts 1 to 61 (ratios in [2**-30, 2**30); smaller
#: ratios keep shift 61 with a shorter multiplier)
REQUANT_MULTIPLIER_BITS = 31
REQUANT_MAX_SHIFT = 61
#: inputs of the ONNX `Requantize` op stay below this (|x| * 2**31 + 2**60 < 2**63: one int64 product);
#: larger ones (IntGELU outputs, huge accumulators) go through `RequantizeWide` (two 31-bit limbs)
REQUANTIZE_INPUT_BOUND = 3 * 2**30
REQUANTIZE_WIDE_INPUT_BOUND = 2**62
#: the operands of the ONNX `IntMatMul` op: A in [-128, 127] (A + 128 is a uint8 with zero point 128) and B
#: int8; `IntMatMulWide`: A in [-2**15, 2**15 - 1] (two uint8 digits of A + 2**15). The bounds: |A| <= bound,
#: A < bound
INT_MATMUL_A_BOUND = 128
INT_MATMUL_WIDE_A_BOUND = 2**15
#: the exactness limit of an int32 accumulator
INT32_BOUND = 2**31 - 1

_F32 = np.float32
ScaleLike = float | Sequence[float] | np.ndarray


# --------------------------------------------------------------------------------------------------
# integer helpers


def quantize_input(x: np.ndarray, input_scale: float | np.ndarray) -> np.ndarray:
    """round_half_to_even(X / input_scale) in float32, clipped to the int32 range, as int64.

    The float clip to [-2**31, 2**31] (both exact in float32) makes the cast well defined (masked
    attention scores divide to -inf); the int64 clip then gives the int32 range exactly.
    """
    with np.errstate(over="ignore"):
        quotient = np.round(np.asarray(x, dtype=_F32) / np.asarray(input_scale, dtype=_F32))
    x_int = np.clip(quotient, _F32(INT32_MIN), _F32(2**31)).astype(np.int64)
    return np.clip(x_int, INT32_MIN, INT32_MAX)


def dequantize_output(y_int: np.ndarray, output_scale: float | np.floating | np.ndarray) -> np.ndarray:
    """float32(y_int) * output_scale, in float32."""
    return np.asarray(y_int).astype(_F32) * np.asarray(output_scale, dtype=_F32)


def round_div_half_even(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    """round_half_to_even(numerator / denominator) for int64 numerator and positive int64 denominator."""
    numerator = np.asarray(numerator, dtype=np.int64)
    denominator = np.asarray(denominator, dtype=np.int64)
    quotient = numerator // denominator  # floor
    twice_remainder = 2 * (numerator - quotient * denominator)  # in [0, 2 * denominator)
    up = (twice_remainder > denominator) | ((twice_remainder == denominator) & (quotient % 2 == 1))
    return quotient + up


def bit_length(n: np.ndarray) -> np.ndarray:
    """Number of bits of each non-negative int64 (0 for 0), by binary search on shifts."""
    n = np.asarray(n, dtype=np.int64)
    floor_log2 = np.zeros_like(n)
    for step in (32, 16, 8, 4, 2, 1):
        floor_log2 += step * ((n >> (floor_log2 + step)) > 0)
    return np.where(n > 0, floor_log2 + 1, 0)


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) for int64 n >= 0 by Newton's method from 2**ceil(bits/2) (I-BERT, Algorithm 4).

    x <- floor((x + floor(n / x)) / 2) decreases to floor(sqrt(n)) and then stops decreasing; the paper
    stops there. Written as x <- min(x, next) so that finished elements stay put.
    """
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 0):
        raise ValueError("isqrt: negative input")
    x = np.left_shift(np.int64(1), (bit_length(n) + 1) // 2)
    while True:
        nxt = np.minimum(x, (x + n // np.maximum(x, 1)) // 2)
        if np.array_equal(nxt, x):
            return x
        x = nxt


def scale_array(scale: float | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(scale, dtype=_F32))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a float or a 1-D list of floats, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be positive and finite, got {array.tolist()[:8]}")
    return array


def scalar_scale(scale: float, name: str) -> np.float32:
    array = scale_array(scale, name)
    if array.size != 1:
        raise ValueError(f"{name} must be a single float, got {array.size} values")
    return array[0]


# --------------------------------------------------------------------------------------------------
# IntGELU


@dataclass(frozen=True)
class GeluConstants:
    """Per-channel constants of IntGELU (arrays of the input scale's length)."""

    b_int: np.ndarray  # floor(b / (s / k)), negative
    c_int: np.ndarray  # floor((c / a) / (s / k)^2), negative
    shift_int: np.ndarray  # floor(1 / sigmoid_scale): "1" on the erf scale, negative
    sigmoid_scale: np.ndarray  # (s / k)^2 * a * 2**14, float32, negative (Hugging Face's)
    output_scale: np.ndarray  # -(s * sigmoid_scale / 2), float32, positive


def gelu_constants(input_scale: float | Sequence[float] | np.ndarray) -> GeluConstants:
    """IntGELU's constants, in float32 exactly as `IntGELU.forward` / `int_erf` compute them."""
    s = scale_array(input_scale, "IntGELU input_scale")
    s_k = s / _F32(GELU_K)  # scaling_factor / self.k
    b_int = np.floor((_F32(1) / s_k) * _F32(GELU_B))  # floor(coeff[1] / scaling_factor)
    s_k2 = s_k * s_k  # scaling_factor**2
    c_int = np.floor((_F32(1) / s_k2) * _F32(GELU_C))  # floor(coeff[2] / scaling_factor**2)
    sigmoid_scale = s_k2 * _F32(GELU_A) * _F32(2**GELU_SHIFT_BITS)
    shift_int = np.floor_divide(_F32(1), sigmoid_scale)  # 1.0 // sigmoid_scaling_factor
    output_scale = -(s * sigmoid_scale / _F32(2))
    # |x_int| <= 2**31 times |erf + 1| <= |c_int| / 2**14 + |shift_int| + 1 must stay in int64
    worst = np.abs(c_int) / 2**GELU_SHIFT_BITS + np.abs(shift_int) + 1
    if not np.all(np.isfinite(worst)) or np.any(np.log2(worst) + 31 > _INT64_SAFE_BITS + 1):
        raise ValueError(
            f"IntGELU input_scale {s.min():.3g} is too small for int64 arithmetic (the erf constants "
            f"overflow); the GELU input range is tiny or the scale is wrong — recalibrate the model"
        )
    return GeluConstants(
        b_int=b_int.astype(np.int64),
        c_int=c_int.astype(np.int64),
        shift_int=shift_int.astype(np.int64),
        sigmoid_scale=sigmoid_scale,
        output_scale=output_scale,
    )


def gelu_tables(input_scale: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The IntGELU kernel's extra inputs: int64 [3, C] (b_int, c_int, shift_int), float32 [2, C] (in, out scale).

    Per-channel values reach a TensorRT plugin kernel as constant tables that the builder appends to the
    node's inputs: inputs are the only way an AOT kernel, which runs without Python, reads per-channel data.
    """
    c = gelu_constants(input_scale)
    s = scale_array(input_scale, "IntGELU input_scale")
    ints = np.stack([c.b_int, c.c_int, c.shift_int]).astype(np.int64)
    floats = np.stack([s, c.output_scale]).astype(_F32)
    return ints, floats


def _check_channels(scales: int, shape: tuple[int, ...]) -> None:
    if scales not in (1, shape[-1]):
        raise ValueError(
            f"IntGELU input_scale has {scales} values; it must have 1 or the size of the last axis ({shape[-1]})"
        )


def int_gelu(x_int: np.ndarray, input_scale: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """I-BERT's i-GELU on integers: returns (y_int, output_scale), GELU(x) ~ y_int * output_scale.

    With s' = input_scale / k (per channel, last axis):
        sigmoid_int = floor(sign(x) * ((min(|x|, -b_int) + b_int)^2 + c_int) / 2**14)   # erf(x / sqrt 2)
        y_int = -(x * (sigmoid_int + shift_int))                                          # x (1 + erf) / 2
    """
    consts = gelu_constants(input_scale)
    x = np.asarray(x_int, dtype=np.int64)
    _check_channels(consts.b_int.size, x.shape)
    abs_int = np.minimum(np.abs(x), -consts.b_int)
    erf_int = np.sign(x) * ((abs_int + consts.b_int) ** 2 + consts.c_int)
    sigmoid_int = erf_int // 2**GELU_SHIFT_BITS
    return -(x * (sigmoid_int + consts.shift_int)), consts.output_scale


# --------------------------------------------------------------------------------------------------
# IntSoftmax


@dataclass(frozen=True)
class ExpConstants:
    x0_int: int  # floor(-ln 2 / s), negative
    b_int: int  # floor((b / a) / s)
    c_int: int  # floor((c / a) / s^2), the exp polynomial at r = 0 (its maximum)


@dataclass(frozen=True)
class SoftmaxConstants(ExpConstants):
    exp_mantissa: int  # exp_scale == exp_mantissa * 2**exp_exponent exactly (float32 decomposition)
    exp_exponent: int


def exp_constants(input_scale: float) -> ExpConstants:
    """i-exp's constants, in float32 exactly as `IntSoftmax.int_exp` / `int_polynomial` compute them."""
    s = scalar_scale(input_scale, "IntSoftmax input_scale")
    inv_s = _F32(1) / s
    x0_int = np.floor(inv_s * _F32(EXP_X0))  # floor(self.x0 / scaling_factor)
    b_int = np.floor(inv_s * _F32(EXP_B))  # floor(self.coef[1] / scaling_factor)
    c_int = np.floor((_F32(1) / (s * s)) * _F32(EXP_C))  # floor(self.coef[2] / scaling_factor**2)
    if not np.isfinite(c_int) or c_int >= 2.0**_INT64_SAFE_BITS or EXP_MAX_Q * abs(float(x0_int)) >= 2**31:
        raise ValueError(f"IntSoftmax input_scale {float(s):.3g} is too small for int64 arithmetic; recalibrate")
    return ExpConstants(int(x0_int), int(b_int), int(c_int))


def softmax_constants(input_scale: float, exp_scale: float) -> SoftmaxConstants:
    """IntSoftmax's constants: i-exp's, and exp_scale as an exact mantissa and exponent."""
    exp = exp_constants(input_scale)
    exp_s = scalar_scale(exp_scale, "IntSoftmax exp_scale")
    mantissa, exponent = np.frexp(exp_s)  # exp_s = mantissa * 2**exponent, mantissa in [0.5, 1)
    exp_mantissa = int(np.ldexp(np.float64(mantissa), 24))  # exact: float32 has a 24-bit significand
    exp_exponent = int(exponent) - 24
    # numerator z << (30 - E) at q = 0 and denominator M << E at q = 30 stay below 2**60, so that the
    # ONNX bodies' one-Div rounding (2n + d over 4d) stays in int64
    numerator_bits = int(bit_length(np.asarray(exp.c_int, dtype=np.int64))) + max(0, EXP_SHIFT_BITS - exp_exponent)
    denominator_bits = 24 + max(0, exp_exponent)
    if numerator_bits > _EXP_SAFE_BITS or denominator_bits > _EXP_SAFE_BITS:
        raise ValueError(
            f"IntSoftmax exp_scale {float(exp_s):.3g} does not fit input_scale {float(input_scale):.3g} (exp "
            f"integers up to ~{exp.c_int * 2.0**EXP_SHIFT_BITS:.3g} cannot be requantized to {EXP_BITS} bits in "
            f"int64); the softmax's 16-bit range (softmax.act x_min/x_max) is not calibrated — calibrate"
        )
    return SoftmaxConstants(exp.x0_int, exp.b_int, exp.c_int, exp_mantissa, exp_exponent)


def natural_exp_scale(input_scale: float) -> float:
    """The exp_scale that calibration converges to: the largest exp integer (exp(0) = c_int * 2**30) / (2**15 - 1).

    Every softmax row has its maximum at exp(0), so I-BERT's QuantAct(16) observes x_max = c_int * 2**30
    (x_min >= 0); this is its float32 scale, a realistic exp_scale for tests and examples.
    """
    largest = _F32(exp_constants(input_scale).c_int * 2.0**EXP_SHIFT_BITS)
    return float(largest / _F32(2 ** (EXP_BITS - 1) - 1))


def int_exp(x_int: np.ndarray, consts: ExpConstants) -> tuple[np.ndarray, np.ndarray]:
    """exp of x_int <= 0 as (z, q) with exp_int = z * 2**(30 - q) (I-BERT's i-exp, not shifted yet).

        x = max(x, 30 * x0_int); q = floor(x / x0_int); r = x - x0_int * q     # x = -q ln2 + r
        z = max((r + b_int) * r + c_int, 0)                                     # exp(r) on (-ln 2, 0]
    """
    x = np.maximum(np.asarray(x_int, dtype=np.int64), EXP_MAX_Q * consts.x0_int)
    q = x // consts.x0_int
    r = x - consts.x0_int * q
    z = np.maximum((r + consts.b_int) * r + consts.c_int, 0)
    return z, q


def requantize_exp(z: np.ndarray, q: np.ndarray, consts: SoftmaxConstants) -> np.ndarray:
    """The 16-bit exp: clip(round_half_to_even(z * 2**(30 - q) / exp_scale), 0, 2**15 - 1), exactly.

    With exp_scale = M * 2**E, the quotient is z * 2**k / M for k = 30 - q - E; the power of two goes to
    the numerator or the denominator, whichever keeps it an integer, so nothing overflows int64.
    """
    k = EXP_SHIFT_BITS - np.asarray(q, dtype=np.int64) - consts.exp_exponent
    numerator = np.left_shift(z, np.maximum(k, 0))
    denominator = np.left_shift(np.int64(consts.exp_mantissa), np.maximum(-k, 0))
    return np.clip(round_div_half_even(numerator, denominator), 0, 2 ** (EXP_BITS - 1) - 1)


def int_softmax(
    x_int: np.ndarray, input_scale: float, exp_scale: float, output_bits: int = 8, axis: int = -1
) -> tuple[np.ndarray, np.float32]:
    """I-BERT's i-softmax on integers: returns (y_int, 2**-output_bits).

        x = x_int - max(x_int, axis); (z, q) = int_exp(x); e = requantize_exp(z, q)   # 16-bit exp
        factor = floor(2**32 / max(sum(e, axis), 1)); y_int = floor(e * factor / 2**(32 - output_bits))
    """
    consts = softmax_constants(input_scale, exp_scale)
    if not 1 <= output_bits <= 16:
        raise ValueError(f"IntSoftmax output_bits must be in 1..16, got {output_bits}")
    x = np.asarray(x_int, dtype=np.int64)
    x = x - x.max(axis=axis, keepdims=True)
    exp16 = requantize_exp(*int_exp(x, consts), consts)
    total = np.maximum(exp16.sum(axis=axis, keepdims=True), 1)
    factor = np.int64(2**SOFTMAX_SUM_BITS) // total
    y_int = (exp16 * factor) >> (SOFTMAX_SUM_BITS - output_bits)
    return y_int, _F32(2.0**-output_bits)


# --------------------------------------------------------------------------------------------------
# IntLayerNorm


@dataclass(frozen=True)
class LayerNormConstants:
    bias_int: np.ndarray  # floor((bias / weight) / (sqrt(C) / 2**30)), int64 per channel
    output_scale: np.ndarray  # sqrt(C) / 2**30 * weight, float32 per channel


def layernorm_constants(weight: np.ndarray, bias: np.ndarray) -> LayerNormConstants:
    """IntLayerNorm's constants, in float32 exactly as `IntLayerNorm.forward` computes them."""
    weight = np.asarray(weight, dtype=_F32)
    bias = np.asarray(bias, dtype=_F32)
    if weight.ndim != 1 or weight.shape != bias.shape:
        raise ValueError(f"IntLayerNorm weight and bias must be 1-D of one length, got {weight.shape}, {bias.shape}")
    if np.any(weight == 0) or not np.all(np.isfinite(weight)):
        raise ValueError("IntLayerNorm weight must be finite and non-zero (the integer bias is bias / weight)")
    unit = np.sqrt(_F32(weight.size)) / _F32(2**LAYERNORM_SCALE_BITS)  # self.dim_sqrt / 2**30
    bias_int = np.floor((bias / weight) / unit)
    if np.any(np.abs(bias_int) >= 2**_INT64_SAFE_BITS):
        raise ValueError("IntLayerNorm bias / weight is too large for int64; check the LayerNorm parameters")
    return LayerNormConstants(bias_int.astype(np.int64), unit * weight)


def layernorm_tables(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The IntLayerNorm kernel's extra inputs: int64 [1, C] (bias_int), float32 [1, C] (output scale)."""
    c = layernorm_constants(weight, bias)
    return c.bias_int.reshape(1, -1), c.output_scale.astype(_F32).reshape(1, -1)


def int_layernorm(
    x_int: np.ndarray, weight: np.ndarray, bias: np.ndarray, shift: int, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """I-BERT's integer LayerNorm: returns (y_int, output_scale per channel); axis must be the channel axis.

        mean = round_half_to_even(sum(x) / C); y = x - mean
        var = sum(floor(y / 2**shift)^2); std = max(isqrt(var), 1) * 2**shift
        y_int = floor(y * floor(2**31 / std) / 2) + bias_int

    std >= 2**shift keeps |y| < 2 std, so |floor(y * factor / 2)| <= 2**31 (`layernorm_output_bound`); a row
    whose deviations all shift to 0 (a constant row) has std 2**shift (Hugging Face: 0, then inf * 0).
    """
    if shift < 0:
        raise ValueError(f"IntLayerNorm shift must be >= 0, got {shift}")
    consts = layernorm_constants(weight, bias)
    x = np.moveaxis(np.asarray(x_int, dtype=np.int64), axis, -1)
    channels = x.shape[-1]
    if channels != consts.bias_int.size:
        raise ValueError(f"IntLayerNorm: input has {channels} channels on axis {axis}, weight has {consts.bias_int.size}")
    mean = round_div_half_even(x.sum(axis=-1, keepdims=True), channels)
    y = x - mean
    y_shifted = y >> shift
    var = (y_shifted * y_shifted).sum(axis=-1, keepdims=True)
    std = np.maximum(isqrt(var), 1) << shift
    factor = np.int64(2**LAYERNORM_FACTOR_BITS) // std
    y_int = ((y * factor) >> 1) + consts.bias_int
    return np.moveaxis(y_int, -1, axis), consts.output_scale


# --------------------------------------------------------------------------------------------------
# requantization: I-BERT's FixedPointMul with dyadic multipliers, exactly


def dyadic_multiplier(ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Hugging Face's `batch_frexp`: ratio ~ multiplier / 2**shift with a 31-bit multiplier (int64 arrays).

    frexp gives ratio = fraction * 2**exponent, fraction in [0.5, 1); multiplier = fraction * 2**31 rounded
    half up (Decimal ROUND_HALF_UP; exact in float64, whose 53 bits hold fraction * 2**31 + 0.5), so
    2**30 <= |multiplier| <= 2**31; shift = 31 - exponent. A negative ratio (a LayerNorm output's channel
    whose weight is negative) gives a negative multiplier, rounded half away from zero as Decimal does.
    Ratios below 2**-30 (shift > 61) keep shift 61 with |multiplier| = round(|ratio| * 2**61), fewer bits;
    ratios of 2**30 or more are refused. A ratio of 0 gives (0, 31): "no such input".
    """
    ratio = np.asarray(ratio, np.float64)
    if np.any(~np.isfinite(ratio)):
        raise ValueError(f"requantization ratio must be finite, got {ratio.ravel()[:4].tolist()}")
    fraction, exponent = np.frexp(ratio)
    multiplier = np.sign(fraction) * np.floor(np.abs(fraction) * 2.0**REQUANT_MULTIPLIER_BITS + 0.5)
    shift = (REQUANT_MULTIPLIER_BITS - exponent).astype(np.int64)
    # below 2**-30 (a LayerNorm channel whose weight is ~0) the shift stays at 61 and the multiplier
    # has fewer bits, down to 0: |ratio| * 2**61 rounded half up (exact in float64: it is below 2**30)
    tiny = shift > REQUANT_MAX_SHIFT
    multiplier = np.where(tiny, np.sign(ratio) * np.floor(np.abs(ratio) * 2.0**REQUANT_MAX_SHIFT + 0.5), multiplier)
    shift = np.where(tiny, REQUANT_MAX_SHIFT, shift)
    multiplier = multiplier.astype(np.int64)
    shift = np.where((multiplier == 0) & ~tiny, REQUANT_MULTIPLIER_BITS, shift)
    if np.any(shift < 1):
        raise ValueError(
            f"requantization ratio {ratio.ravel()[np.argmax((shift < 1).ravel())]:.3g} is 2**30 or more: the input "
            f"and output scales are inconsistent; recalibrate"
        )
    return multiplier, shift


def requantize_multipliers(input_scale: ScaleLike, output_scale: ScaleLike) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) per channel for input_scale / output_scale, the ratio in float64 of the float32
    scales, as FixedPointMul computes it (`new_scale = _A / _B` in double)."""
    ratio = np.asarray(input_scale, _F32).astype(np.float64) / np.asarray(output_scale, _F32).astype(np.float64)
    return dyadic_multiplier(np.atleast_1d(ratio))


def rescale(z: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """round_half_to_even(z * multiplier / 2**shift), exactly (Python integers), as int64.

    The spec of every requantization: z * multiplier needs up to 93 bits, so this reference computes it
    with Python's unbounded integers; the torch ops, the ONNX bodies and the kernels compute the same
    in int64 (two 31-bit limbs where the product may exceed 63 bits) and are tested against it.
    multiplier (|m| <= 2**31, either sign) and shift broadcast over the last axis (per channel) or are scalars.
    """
    z = np.asarray(z, np.int64)
    m = np.broadcast_to(np.asarray(multiplier, np.int64), z.shape).astype(object)
    e = np.broadcast_to(np.asarray(shift, np.int64), z.shape).astype(object)
    out = np.asarray(np.frompyfunc(_rescale_one, 3, 1)(z.astype(object), m, e), dtype=object).reshape(z.shape)
    if out.size and max(abs(int(v)) for v in out.flat) >= 2**_INT64_SAFE_BITS:
        raise IntegerOverflowError("rescale: the result leaves int64 (the ratio or the input is too large)")
    return out.astype(np.int64)


def _rescale_one(z: int, m: int, e: int) -> int:
    quotient, remainder = divmod(int(z) * int(m), 1 << int(e))  # floor division: remainder >= 0
    twice = 2 * remainder
    return quotient + (twice > (1 << int(e)) or (twice == (1 << int(e)) and quotient % 2 == 1))


def signed_range(bits: int) -> tuple[int, int]:
    """FixedPointMul's clamp for `bits`-bit outputs: [-2**(bits-1), 2**(bits-1) - 1]."""
    if not 2 <= bits <= 32:
        raise ValueError(f"requantization output_bits must be in 2..32, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def requantize(
    x_int: np.ndarray,
    input_scale: ScaleLike,
    output_scale: ScaleLike,
    output_bits: int,
    identity: np.ndarray | None = None,
    identity_scale: float | None = None,
) -> np.ndarray:
    """I-BERT's FixedPointMul (QuantAct with a pre-activation scale), exactly: int64 in [-2**(b-1), 2**(b-1) - 1].

        y = rescale(x, *dyadic(input_scale / output_scale)) [+ rescale(identity, *dyadic(identity_scale / output_scale))]
        y = clip(y, -2**(b-1), 2**(b-1) - 1)

    input_scale: 1 value or one per channel of the last axis (a per-channel GEMM or LayerNorm output, whose
    scale is negative where the LayerNorm weight is);
    output_scale: 1 value, or per channel for a grid change that keeps channels (output_bits 32, the
    "snap" of I-BERT's layers > 0 onto the embeddings' grid). Each input is rounded on its own, then
    added, as Hugging Face does; 32 bits is the int32 range (the snap, which never saturates in range).
    """
    low, high = signed_range(output_bits)
    y = rescale(x_int, *requantize_multipliers(input_scale, output_scale))
    if identity is not None:
        if identity_scale is None:
            raise ValueError("requantize: an identity input needs identity_scale")
        y = y + rescale(identity, *requantize_multipliers(identity_scale, output_scale))
    return np.clip(y, low, high)


def quantize(x: np.ndarray, scale: ScaleLike, bits: int) -> np.ndarray:
    """A float activation onto a `bits`-bit grid, as Hugging Face's SymmetricQuantFunction: int64
    clip(round_half_to_even(float32(x) * float32(1 / scale)), -(2**(b-1) - 1), 2**(b-1) - 2).

    The float -> integer boundary of force_dequant sites (a float GELU, softmax or LayerNorm output) and
    of weights; the reciprocal is float32, then one float32 product (torch's `1.0 / scale * x`)."""
    inverse = _F32(1) / np.asarray(scale, _F32)
    n = 2 ** (bits - 1) - 1
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(np.asarray(x, _F32) * inverse)
    return np.clip(np.nan_to_num(rounded, nan=0.0), -n, n - 1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# integer GEMMs (exact; 32-bit accumulators) and static bounds


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A @ B exactly, int64 (the accumulator bound of every GEMM is checked where it is built)."""
    return np.matmul(np.asarray(a, np.int64), np.asarray(b, np.int64))


def check_matmul_operands(op_type: str, a: np.ndarray, b: np.ndarray) -> None:
    """The operand ranges an ONNX integer GEMM node guarantees exact results for (see INT_MATMUL_A_BOUND)."""
    bound = INT_MATMUL_A_BOUND if op_type == "IntMatMul" else INT_MATMUL_WIDE_A_BOUND
    low, high = -bound, bound - 1
    if a.size and (np.asarray(a, np.int64).min() < low or np.asarray(a, np.int64).max() > high):
        raise ValueError(f"{op_type}: A has values outside [{low}, {high}]")
    if b.size and (np.asarray(b, np.int64).min() < -128 or np.asarray(b, np.int64).max() > 127):
        raise ValueError(f"{op_type}: B must be int8 values")


def matmul_bound(a_bound: int, b: np.ndarray) -> np.ndarray:
    """max |A @ B| per output channel for |A| <= a_bound and constant B [K, N]: a_bound * sum_k |B[k, n]|."""
    return int(a_bound) * np.abs(np.asarray(b, np.int64)).sum(axis=-2)


def gelu_output_bound(input_bound: int, input_scale: ScaleLike) -> int:
    """max |IntGELU(x)| for |x| <= input_bound: |x| * (|shift_int| + (|c_int| + b_int**2) / 2**14 + 1)."""
    c = gelu_constants(input_scale)
    factor = np.abs(c.shift_int) + (np.abs(c.c_int) + c.b_int.astype(object) ** 2) // 2**GELU_SHIFT_BITS + 1
    return int(input_bound) * int(max(int(f) for f in np.atleast_1d(factor)))


def layernorm_output_bound(weight: np.ndarray, bias: np.ndarray) -> int:
    """max |IntLayerNorm(x)|: the normalized part is within [-2**31, 2**31 - 1], plus the largest |bias_int|."""
    return 2**31 + int(np.abs(layernorm_constants(weight, bias).bias_int).max())


def layernorm_variance_bound(input_bound: int, channels: int, shift: int) -> int:
    """max of IntLayerNorm's sum(floor(y / 2**shift)**2) for |x| <= input_bound (|y| <= 2 * input_bound)."""
    return channels * ((2 * int(input_bound)) >> shift) ** 2


class IntegerOverflowError(ValueError):
    """The integer arithmetic would leave its integer type with the calibrated ranges (see the message)."""


# --------------------------------------------------------------------------------------------------
# op level: float arrays and ONNX attributes


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.atleast_1d(np.asarray(values, dtype=_F32))]


def gelu_attributes(input_scale: float | Sequence[float] | np.ndarray) -> dict[str, Any]:
    """ONNX attributes of IntGELU for an input scale (per tensor or per channel)."""
    scale = scale_array(input_scale, "IntGELU input_scale")
    return {"input_scale": _floats(scale), "output_scale": _floats(gelu_constants(scale).output_scale)}


def softmax_attributes(input_scale: float, exp_scale: float, output_bits: int = 8, axis: int = -1) -> dict[str, Any]:
    """ONNX attributes of IntSoftmax."""
    softmax_constants(input_scale, exp_scale)  # validates
    return {
        "axis": int(axis),
        "output_bits": int(output_bits),
        "input_scale": float(_F32(input_scale)),
        "exp_scale": float(_F32(exp_scale)),
        "output_scale": float(_F32(2.0**-output_bits)),
    }


def layernorm_attributes(input_scale: float, shift: int, weight: np.ndarray, axis: int = -1) -> dict[str, Any]:
    """ONNX attributes of IntLayerNorm (weight gives the derived per-channel output scale)."""
    weight = np.asarray(weight, dtype=_F32)
    unit = np.sqrt(_F32(weight.size)) / _F32(2**LAYERNORM_SCALE_BITS)
    return {
        "axis": int(axis),
        "input_scale": float(scalar_scale(input_scale, "IntLayerNorm input_scale")),
        "shift": int(shift),
        "output_scale": _floats(unit * weight),
    }


def _check_derived(op_type: str, given: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        if name in given and not np.array_equal(np.asarray(given[name], _F32), np.asarray(value, _F32)):
            raise ValueError(
                f"{op_type}: attribute {name}={given[name]!r} does not match the one derived from the other "
                f"attributes ({value!r}); build attributes with {op_type[3:].lower()}_attributes()"
            )


def ibert_op(
    op_type: str,
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    **attributes: Any,
) -> np.ndarray:
    """Run one `ibert` op on float32 arrays with its ONNX attributes; returns Y (float32).

    ibert_op("IntGELU", X, input_scale=[...], output_scale=[...])
    ibert_op("IntSoftmax", X, axis=-1, output_bits=8, input_scale=s, exp_scale=e, output_scale=2**-8)
    ibert_op("IntLayerNorm", X, weight, bias, axis=-1, input_scale=s, shift=n, output_scale=[...])
    Derived attributes (output_scale) are optional; when given they must equal the derived value.
    """
    x = np.asarray(x, dtype=_F32)
    if op_type == "IntGELU":
        input_scale = attributes["input_scale"]
        _check_derived(op_type, attributes, gelu_attributes(input_scale))
        scale = scale_array(input_scale, "IntGELU input_scale")
        _check_channels(scale.size, x.shape)
        y_int, output_scale = int_gelu(quantize_input(x, scale), scale)
        return dequantize_output(y_int, output_scale)
    if op_type == "IntSoftmax":
        axis = int(attributes.get("axis", -1))
        output_bits = int(attributes.get("output_bits", 8))
        input_scale, exp_scale = attributes["input_scale"], attributes["exp_scale"]
        _check_derived(op_type, attributes, softmax_attributes(input_scale, exp_scale, output_bits, axis))
        y_int, probability_scale = int_softmax(
            quantize_input(x, input_scale), input_scale, exp_scale, output_bits, axis
        )
        return dequantize_output(y_int, probability_scale)
    if op_type == "IntLayerNorm":
        if weight is None or bias is None:
            raise ValueError("IntLayerNorm takes three inputs: X, weight, bias")
        axis = int(attributes.get("axis", -1))
        input_scale, shift = attributes["input_scale"], int(attributes["shift"])
        _check_derived(op_type, attributes, layernorm_attributes(input_scale, shift, weight, axis))
        y_int, output_scale = int_layernorm(quantize_input(x, input_scale), weight, bias, shift, axis)
        shape = [1] * x.ndim
        shape[axis] = -1
        return dequantize_output(y_int, output_scale.reshape(shape))
    raise ValueError(f"unknown op {DOMAIN}::{op_type}; the {DOMAIN} domain has {', '.join(OP_TYPES)}")


# --------------------------------------------------------------------------------------------------
# integer interface: the nodes of an exported graph, on integer arrays


def requantize_attributes(
    input_scale: ScaleLike, output_scale: ScaleLike, output_bits: int, identity_scale: float | None = None
) -> dict[str, Any]:
    """ONNX attributes of Requantize / RequantizeWide (the derived multipliers and shifts included).

    identity_scale None: no identity input (the node's Identity is then a scalar 0 and identity_scale 0).
    """
    signed_range(output_bits)
    inputs = np.atleast_1d(np.asarray(input_scale, _F32))
    if inputs.ndim != 1 or inputs.size == 0 or not np.all(np.isfinite(inputs)) or np.any(inputs == 0):
        raise ValueError(f"Requantize input_scale must be non-zero finite floats (1 or per channel), got {inputs[:8]}")
    outputs = scale_array(output_scale, "Requantize output_scale")
    if inputs.size > 1 and outputs.size > 1 and inputs.size != outputs.size:
        raise ValueError(f"Requantize: {inputs.size} input scales and {outputs.size} output scales")
    multiplier, shift = requantize_multipliers(inputs, outputs)
    identity_multiplier, identity_shift = 0, REQUANT_MULTIPLIER_BITS
    if identity_scale is not None:
        if outputs.size != 1:
            raise ValueError("Requantize: an identity input needs a per-tensor output_scale")
        m, e = requantize_multipliers(float(scalar_scale(identity_scale, "Requantize identity_scale")), outputs)
        identity_multiplier, identity_shift = int(m[0]), int(e[0])
    return {
        "input_scale": _floats(inputs),
        "identity_scale": 0.0 if identity_scale is None else float(_F32(identity_scale)),
        "output_scale": _floats(outputs),
        "output_bits": int(output_bits),
        "multiplier": [int(v) for v in multiplier],
        "shift": [int(v) for v in shift],
        "identity_multiplier": identity_multiplier,
        "identity_shift": identity_shift,
    }


def matmul_attributes(a_scale: float, b_scale: ScaleLike) -> dict[str, Any]:
    """ONNX attributes of IntMatMul / IntMatMulWide: the grids of A (per tensor) and B (per column or tensor).

    They do not change the integer result; the float forms (TensorRT's Q/DQ) dequantize with them."""
    return {
        "a_scale": float(scalar_scale(a_scale, "IntMatMul a_scale")),
        "b_scale": _floats(scale_array(b_scale, "IntMatMul b_scale")),
    }


#: the element type of each op's output in an exported graph (its inputs: any integer type in range)
INTEGER_OUTPUT_TYPES: dict[str, type] = {
    "IntGELU": np.int64,
    "IntSoftmax": np.int32,
    "IntLayerNorm": np.int64,
    "IntMatMul": np.int32,
    "IntMatMulWide": np.int64,
    "Requantize": np.int32,
    "RequantizeWide": np.int32,
}
#: every op of the domain; the first three have TensorRT plugins (and a float interface there)
INTEGER_OP_TYPES = tuple(INTEGER_OUTPUT_TYPES)


def integer_op(op_type: str, *inputs: np.ndarray | None, **attributes: Any) -> np.ndarray:
    """Run one node of an exported integer graph on integer arrays with its ONNX attributes.

    integer_op("IntGELU", X, **gelu_attributes(s), **integer_constant_attributes("IntGELU", ...))
    integer_op("IntSoftmax", X, **softmax_attributes(...), **integer_constant_attributes("IntSoftmax", ...))
    integer_op("IntLayerNorm", X, weight, bias, **layernorm_attributes(...), **integer_constant_attributes(...))
    integer_op("IntMatMul", A, B, a_scale=.., b_scale=[..])            # and IntMatMulWide
    integer_op("Requantize", X, Identity, **requantize_attributes(...))  # and RequantizeWide
    Derived attributes are checked against their derivation. Returns INTEGER_OUTPUT_TYPES[op_type].
    """
    if op_type not in INTEGER_OUTPUT_TYPES:
        raise ValueError(f"unknown op {DOMAIN}::{op_type}; the {DOMAIN} domain has {', '.join(INTEGER_OP_TYPES)}")
    x = np.asarray(inputs[0], np.int64)
    dtype = INTEGER_OUTPUT_TYPES[op_type]
    if op_type == "IntGELU":
        scale = scale_array(attributes["input_scale"], "IntGELU input_scale")
        _check_derived(op_type, attributes, gelu_attributes(scale))
        _check_constants(op_type, attributes, None, None)
        _check_channels(scale.size, x.shape)
        return int_gelu(x, scale)[0].astype(dtype)
    if op_type == "IntSoftmax":
        axis, output_bits = int(attributes.get("axis", -1)), int(attributes.get("output_bits", 8))
        input_scale, exp_scale = attributes["input_scale"], attributes["exp_scale"]
        _check_derived(op_type, attributes, softmax_attributes(input_scale, exp_scale, output_bits, axis))
        _check_constants(op_type, attributes, None, None)
        return int_softmax(x, input_scale, exp_scale, output_bits, axis)[0].astype(dtype)
    if op_type == "IntLayerNorm":
        weight, bias = inputs[1], inputs[2]
        if weight is None or bias is None:
            raise ValueError("IntLayerNorm takes three inputs: X, weight, bias")
        axis, input_scale, shift = int(attributes.get("axis", -1)), attributes["input_scale"], int(attributes["shift"])
        _check_derived(op_type, attributes, layernorm_attributes(input_scale, shift, weight, axis))
        _check_constants(op_type, attributes, weight, bias)
        return int_layernorm(x, weight, bias, shift, axis)[0].astype(dtype)
    if op_type in ("IntMatMul", "IntMatMulWide"):
        b = np.asarray(inputs[1], np.int64)
        check_matmul_operands(op_type, x, b)
        return int_matmul(x, b).astype(dtype)
    expected = requantize_attributes(
        attributes["input_scale"], attributes["output_scale"], int(attributes["output_bits"]),
        attributes["identity_scale"] or None,
    )
    _check_derived_exact(op_type, attributes, expected)
    bound = REQUANTIZE_INPUT_BOUND if op_type == "Requantize" else REQUANTIZE_WIDE_INPUT_BOUND
    if x.size and np.abs(x).max() >= bound:
        raise ValueError(f"{op_type}: |X| reaches {np.abs(x).max()}, beyond its bound {bound}")
    identity = None if not attributes["identity_scale"] else inputs[1]
    y = requantize(
        x, attributes["input_scale"], attributes["output_scale"], int(attributes["output_bits"]),
        None if identity is None else np.asarray(identity, np.int64), attributes["identity_scale"] or None,
    )
    return y.astype(dtype)


def _check_derived_exact(op_type: str, given: dict[str, Any], expected: dict[str, Any]) -> None:
    for name in ("multiplier", "shift", "identity_multiplier", "identity_shift"):
        if name in given and list(np.atleast_1d(given[name])) != list(np.atleast_1d(expected[name])):
            raise ValueError(
                f"{op_type}: attribute {name}={given[name]!r} does not match the one derived from the scales "
                f"({expected[name]!r}); build attributes with requantize_attributes()"
            )


#: the integer constants an exported node of each nonlinearity carries, derived from its scales (and
#: IntLayerNorm's weight and bias) by this module's `*_constants`: the ONNX bodies then compute on
#: integers only, whatever a runtime's float arithmetic does. The TensorRT plugins take the scales alone.
INTEGER_CONSTANT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "IntGELU": ("b_int", "c_int", "shift_int"),
    "IntSoftmax": ("x0_int", "b_int", "c_int", "exp_mantissa", "exp_exponent"),
    "IntLayerNorm": ("bias_int",),
}


def integer_constant_attributes(
    op_type: str, attributes: dict[str, Any], weight: np.ndarray | None = None, bias: np.ndarray | None = None
) -> dict[str, Any]:
    """The integer constants (INTEGER_CONSTANT_ATTRIBUTES) of a nonlinearity node with these attributes."""
    if op_type == "IntGELU":
        g = gelu_constants(attributes["input_scale"])
        return {"b_int": _ints(g.b_int), "c_int": _ints(g.c_int), "shift_int": _ints(g.shift_int)}
    if op_type == "IntSoftmax":
        s = softmax_constants(attributes["input_scale"], attributes["exp_scale"])
        return {
            "x0_int": s.x0_int, "b_int": s.b_int, "c_int": s.c_int, "exp_mantissa": s.exp_mantissa,
            "exp_exponent": s.exp_exponent,
        }
    if op_type == "IntLayerNorm":
        if weight is None or bias is None:
            raise ValueError("IntLayerNorm's integer constants come from its weight and bias")
        return {"bias_int": _ints(layernorm_constants(weight, bias).bias_int)}
    raise ValueError(f"{op_type} has no integer constant attributes")


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.atleast_1d(values)]


def _check_constants(op_type: str, given: dict[str, Any], weight: np.ndarray | None, bias: np.ndarray | None) -> None:
    expected = integer_constant_attributes(op_type, given, weight, bias)
    for name, value in expected.items():
        if name not in given:
            raise ValueError(f"{op_type}: the integer node lacks its constant attribute {name!r}; re-export the model")
        if list(np.atleast_1d(given[name])) != list(np.atleast_1d(value)):
            raise ValueError(
                f"{op_type}: attribute {name} does not match the constant derived from the scales; re-export the model"
            )
