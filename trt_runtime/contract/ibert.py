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

_F32 = np.float32


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
    if not np.isfinite(c_int) or c_int >= 2.0**_INT64_SAFE_BITS:
        raise ValueError(f"IntSoftmax input_scale {float(s):.3g} is too small for int64 arithmetic; recalibrate")
    return ExpConstants(int(x0_int), int(b_int), int(c_int))


def softmax_constants(input_scale: float, exp_scale: float) -> SoftmaxConstants:
    """IntSoftmax's constants: i-exp's, and exp_scale as an exact mantissa and exponent."""
    exp = exp_constants(input_scale)
    exp_s = scalar_scale(exp_scale, "IntSoftmax exp_scale")
    mantissa, exponent = np.frexp(exp_s)  # exp_s = mantissa * 2**exponent, mantissa in [0.5, 1)
    exp_mantissa = int(np.ldexp(np.float64(mantissa), 24))  # exact: float32 has a 24-bit significand
    exp_exponent = int(exponent) - 24
    # numerator z << (30 - E) at q = 0 and denominator M << E at q = 30 must stay in int64
    numerator_bits = int(bit_length(np.asarray(exp.c_int, dtype=np.int64))) + max(0, EXP_SHIFT_BITS - exp_exponent)
    denominator_bits = 24 + max(0, exp_exponent)
    if numerator_bits > _INT64_SAFE_BITS or denominator_bits > _INT64_SAFE_BITS:
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
        var = sum(floor(y / 2**shift)^2); std = isqrt(var) * 2**shift            # max(std, 1)
        y_int = floor(y * floor(2**31 / std) / 2) + bias_int
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
    std = np.maximum(isqrt(var) << shift, 1)  # a constant row has std 0 (Hugging Face: inf * 0)
    factor = np.int64(2**LAYERNORM_FACTOR_BITS) // std
    y_int = ((y * factor) >> 1) + consts.bias_int
    return np.moveaxis(y_int, -1, axis), consts.output_scale


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
