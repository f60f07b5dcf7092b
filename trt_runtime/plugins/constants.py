"""Host-side integer constants of the ibert kernels, derived from the float32 scales (NumPy only).

These are copies of the constant derivations in `models.quantization.integer_reference` (the
contract of the `ibert` domain), kept here because `trt_runtime` must not import `models` (which
needs torch). They must agree bit for bit: tests/test_plugin_kernels.py compares them with the
reference on many scales. Everything is float32 arithmetic exactly as the reference does it; the
kernels then only do integer arithmetic (plus the float32 input division and output multiply).

The kernels get these values in two ways:
 - scalars (IntSoftmax's constants, IntLayerNorm's shift) become Triton constexprs, compiled into the
   kernel (once per plugin instance for AOT; Triton caches the JIT specialisations);
 - per-channel values (IntGELU's, IntLayerNorm's) become constant tables that the builder appends
   to the node's inputs (`gelu_tables`, `layernorm_tables`): an int64 table and a float32 table,
   one column per channel. Inputs are the only way an AOT kernel, which runs without Python, can
   read per-channel data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_F32 = np.float32
_INT64_SAFE_BITS = 62

GELU_K = 1.4142
GELU_A = -0.2888
GELU_B = -1.769
GELU_C = 1.0 / GELU_A
GELU_SHIFT_BITS = 14

EXP_X0 = -0.6931
EXP_A = 0.35815147
EXP_B = 0.96963238 / EXP_A
EXP_C = 1.0 / EXP_A
EXP_SHIFT_BITS = 30
EXP_MAX_Q = 30
EXP_BITS = 16
SOFTMAX_SUM_BITS = 32

LAYERNORM_FACTOR_BITS = 31
LAYERNORM_SCALE_BITS = 30
ISQRT_ITERATIONS = 6


def scale_array(scale: float | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(scale, dtype=_F32))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a float or a 1-D list of floats, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be positive and finite, got {array.tolist()[:8]}")
    return array


def scalar_scale(scale: float | np.ndarray, name: str) -> np.float32:
    array = scale_array(scale, name)
    if array.size != 1:
        raise ValueError(f"{name} must be a single float, got {array.size} values")
    return array[0]


def _bit_length(n: int) -> int:
    return int(n).bit_length()


@dataclass(frozen=True)
class GeluConstants:
    input_scale: np.ndarray  # float32 per channel
    b_int: np.ndarray  # int64
    c_int: np.ndarray
    shift_int: np.ndarray
    output_scale: np.ndarray  # float32


def gelu_constants(input_scale: float | Sequence[float] | np.ndarray) -> GeluConstants:
    """IntGELU's per-channel constants (as integer_reference.gelu_constants)."""
    s = scale_array(input_scale, "IntGELU input_scale")
    s_k = s / _F32(GELU_K)
    b_int = np.floor((_F32(1) / s_k) * _F32(GELU_B))
    s_k2 = s_k * s_k
    c_int = np.floor((_F32(1) / s_k2) * _F32(GELU_C))
    sigmoid_scale = s_k2 * _F32(GELU_A) * _F32(2**GELU_SHIFT_BITS)
    shift_int = np.floor_divide(_F32(1), sigmoid_scale)
    output_scale = -(s * sigmoid_scale / _F32(2))
    worst = np.abs(c_int) / 2**GELU_SHIFT_BITS + np.abs(shift_int) + 1
    if not np.all(np.isfinite(worst)) or np.any(np.log2(worst) + 31 > _INT64_SAFE_BITS + 1):
        raise ValueError(
            f"IntGELU input_scale {s.min():.3g} is too small for int64 arithmetic; recalibrate the model"
        )
    return GeluConstants(s, b_int.astype(np.int64), c_int.astype(np.int64), shift_int.astype(np.int64), output_scale)


def gelu_tables(input_scale: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The IntGELU kernel's extra inputs: int64 [3, C] (b_int, c_int, shift_int), float32 [2, C] (in, out scale)."""
    c = gelu_constants(input_scale)
    ints = np.stack([c.b_int, c.c_int, c.shift_int]).astype(np.int64)
    floats = np.stack([c.input_scale, c.output_scale]).astype(_F32)
    return ints, floats


@dataclass(frozen=True)
class SoftmaxConstants:
    x0_int: int
    b_int: int
    c_int: int
    exp_mantissa: int
    exp_exponent: int


def softmax_constants(input_scale: float, exp_scale: float) -> SoftmaxConstants:
    """IntSoftmax's constants (as integer_reference.softmax_constants)."""
    s = scalar_scale(input_scale, "IntSoftmax input_scale")
    exp_s = scalar_scale(exp_scale, "IntSoftmax exp_scale")
    inv_s = _F32(1) / s
    x0_int = np.floor(inv_s * _F32(EXP_X0))
    b_int = np.floor(inv_s * _F32(EXP_B))
    c_int = np.floor((_F32(1) / (s * s)) * _F32(EXP_C))
    mantissa, exponent = np.frexp(exp_s)
    exp_mantissa = int(np.ldexp(np.float64(mantissa), 24))
    exp_exponent = int(exponent) - 24
    if not np.isfinite(c_int) or int(c_int) >= 2**_INT64_SAFE_BITS:
        raise ValueError(f"IntSoftmax input_scale {float(s):.3g} is too small for int64 arithmetic; recalibrate")
    consts = SoftmaxConstants(int(x0_int), int(b_int), int(c_int), exp_mantissa, exp_exponent)
    numerator_bits = _bit_length(consts.c_int) + max(0, EXP_SHIFT_BITS - exp_exponent)
    denominator_bits = 24 + max(0, exp_exponent)
    if numerator_bits > _INT64_SAFE_BITS or denominator_bits > _INT64_SAFE_BITS:
        raise ValueError(
            f"IntSoftmax exp_scale {float(exp_s):.3g} does not fit input_scale {float(s):.3g}; the softmax's "
            f"16-bit range is not calibrated — calibrate"
        )
    return consts


@dataclass(frozen=True)
class LayerNormConstants:
    bias_int: np.ndarray  # int64 per channel
    output_scale: np.ndarray  # float32 per channel


def layernorm_constants(weight: np.ndarray, bias: np.ndarray) -> LayerNormConstants:
    """IntLayerNorm's per-channel constants (as integer_reference.layernorm_constants)."""
    weight = np.asarray(weight, dtype=_F32)
    bias = np.asarray(bias, dtype=_F32)
    if weight.ndim != 1 or weight.shape != bias.shape:
        raise ValueError(f"IntLayerNorm weight and bias must be 1-D of one length, got {weight.shape}, {bias.shape}")
    if np.any(weight == 0) or not np.all(np.isfinite(weight)):
        raise ValueError("IntLayerNorm weight must be finite and non-zero (the integer bias is bias / weight)")
    unit = np.sqrt(_F32(weight.size)) / _F32(2**LAYERNORM_SCALE_BITS)
    bias_int = np.floor((bias / weight) / unit)
    if np.any(np.abs(bias_int) >= 2**_INT64_SAFE_BITS):
        raise ValueError("IntLayerNorm bias / weight is too large for int64; check the LayerNorm parameters")
    return LayerNormConstants(bias_int.astype(np.int64), (unit * weight).astype(_F32))


def layernorm_tables(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The IntLayerNorm kernel's extra inputs: int64 [1, C] (bias_int), float32 [1, C] (output scale)."""
    c = layernorm_constants(weight, bias)
    return c.bias_int.reshape(1, -1), c.output_scale.reshape(1, -1)
