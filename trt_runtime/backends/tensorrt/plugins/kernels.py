"""Triton kernels of the ibert ops: exactly `trt_runtime.contract.ibert`, in int64 arithmetic.

This module imports only Triton. The same kernels serve the JIT plugins (launched from Python through
`trt_runtime.backends.tensorrt.plugins.launchers`), the AOT plugins (compiled to PTX by `compile_aot`, launched by
TensorRT without Python) and the tests (on a GPU, or on the CPU under TRITON_INTERPRET=1).

Calling convention (TensorRT's for AOT plugins): pointers to the plugin's inputs, then the int32
scalars (sizes), then the output pointer; everything else is a constexpr. Constants derived from
the float32 scales come from `trt_runtime.contract.ibert` (host side): per-channel ones through
the constant-table inputs, scalar ones as constexprs.

Exactness notes (each float step must round exactly like NumPy's float32):
 - X / input_scale is computed in float64 and rounded to float32 once: for division, a float64
   result rounded to float32 is the correctly rounded float32 quotient (53 >= 2 * 24 + 2), on every
   backend, whatever Triton's float32 division lowers to.
 - round-half-to-even, floor division and isqrt are written out with integer/float64 operations
   whose results do not depend on the backend (integer division only ever sees non-negative
   operands, where C's truncation and Python's floor agree).
 - the output is float32(y_int) * output_scale: one int64->float32 conversion and one float32
   multiply, both round-to-nearest-even, with no add after the multiply to fuse into an FMA.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals that kernels read must be constexprs (Triton refuses plain module globals).
INT32_MIN = tl.constexpr(-(2**31))
# I-BERT's integer constants (as integer_reference / constants)
GELU_SHIFT_BITS = tl.constexpr(14)
EXP_SHIFT_BITS = tl.constexpr(30)
EXP_MAX_Q = tl.constexpr(30)
EXP_MAX = tl.constexpr(2**15 - 1)  # 16-bit signed requantization of exp
SOFTMAX_SUM_BITS = tl.constexpr(32)
SOFTMAX_NUMERATOR = tl.constexpr(2**32)  # factor = floor(2**32 / sum)
LAYERNORM_NUMERATOR = tl.constexpr(2**31)  # factor = floor(2**31 / std)
ISQRT_ITERATIONS = tl.constexpr(6)

# launch configuration (host side)
GELU_BLOCK = 1024
SOFTMAX_BLOCK = 128
LAYERNORM_BLOCK = 256
NUM_WARPS = 4


# --------------------------------------------------------------------------------------------------
# integer helpers (inlined into the kernels)


@triton.jit
def quantize(x, scale):
    """int64(clip(round_half_to_even(float32(x) / float32(scale)), -2**31, 2**31 - 1))."""
    q = (x.to(tl.float64) / scale.to(tl.float64)).to(tl.float32).to(tl.float64)
    r = tl.floor(q)
    d = q - r  # exact in float64
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    r = tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)
    r = tl.minimum(tl.maximum(r, -2147483648.0), 2147483647.0)
    return r.to(tl.int64)


@triton.jit
def floor_div(n, d):
    """floor(n / d) for int64 n and positive d, dividing only non-negative numbers."""
    return tl.where(n >= 0, n // d, -((d - 1 - n) // d))


@triton.jit
def round_div_half_even(n, d):
    """round_half_to_even(n / d) for int64 n and positive d."""
    q = floor_div(n, d)
    twice_remainder = 2 * (n - q * d)
    up = (twice_remainder > d) | ((twice_remainder == d) & ((q & 1) == 1))
    return q + up.to(tl.int64)


@triton.jit
def bit_length(n):
    """Bits of non-negative int64 n (0 for 0), by binary search on shifts."""
    floor_log2 = n * 0
    for i in tl.static_range(6):
        step = 32 >> i
        floor_log2 += step * ((n >> (floor_log2 + step)) > 0).to(tl.int64)
    return tl.where(n > 0, floor_log2 + 1, 0)


@triton.jit
def isqrt(n):
    """floor(sqrt(n)) for int64 n >= 0: Newton from 2**ceil(bits/2), x <- min(x, (x + n // x) // 2)."""
    x = (n * 0 + 1) << ((bit_length(n) + 1) // 2)
    for _ in tl.static_range(ISQRT_ITERATIONS):
        x = tl.minimum(x, (x + n // tl.maximum(x, 1)) // 2)
    return x


# --------------------------------------------------------------------------------------------------
# IntGELU: elementwise; the constant tables have one column per channel (C = 1: per tensor)


@triton.jit
def int_gelu_kernel(
    x_ptr,  # float32 [..., row_length]
    int_constants_ptr,  # int64 [3, C]: b_int, c_int, shift_int
    float_constants_ptr,  # float32 [2, C]: input_scale, output_scale
    n_elements,
    row_length,
    y_ptr,  # float32, like x
    PER_CHANNEL: tl.constexpr,  # C == row_length (else C == 1)
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    if PER_CHANNEL:
        channel = offsets % row_length
        columns = row_length
    else:
        channel = offsets * 0
        columns = 1
    b_int = tl.load(int_constants_ptr + channel, mask=mask, other=0)
    c_int = tl.load(int_constants_ptr + columns + channel, mask=mask, other=0)
    shift_int = tl.load(int_constants_ptr + 2 * columns + channel, mask=mask, other=0)
    input_scale = tl.load(float_constants_ptr + channel, mask=mask, other=1.0)
    output_scale = tl.load(float_constants_ptr + columns + channel, mask=mask, other=1.0)

    x = quantize(tl.load(x_ptr + offsets, mask=mask, other=0.0), input_scale)
    sign = tl.where(x > 0, 1, 0) - tl.where(x < 0, 1, 0)
    abs_int = tl.minimum(tl.abs(x), -b_int) + b_int
    erf_int = sign * (abs_int * abs_int + c_int)
    sigmoid_int = erf_int >> GELU_SHIFT_BITS  # floor division by 2**14 (arithmetic shift)
    y = -(x * (sigmoid_int + shift_int))
    tl.store(y_ptr + offsets, y.to(tl.float32) * output_scale, mask=mask)


# --------------------------------------------------------------------------------------------------
# IntSoftmax: one program per row of the last axis, three passes (max, sum, write)


@triton.jit
def exp16(x, X0_INT: tl.constexpr, B_INT: tl.constexpr, C_INT: tl.constexpr, EXP_MANTISSA: tl.constexpr,
          EXP_EXPONENT: tl.constexpr):
    """I-BERT's i-exp of x <= 0, requantized to 16 bits exactly as integer_reference.requantize_exp."""
    x = tl.maximum(x, EXP_MAX_Q * X0_INT)
    q = (-x) // (-X0_INT)  # floor(x / x0_int), both operands >= 0
    r = x - X0_INT * q
    z = tl.maximum((r + B_INT) * r + C_INT, 0)
    k = EXP_SHIFT_BITS - EXP_EXPONENT - q
    numerator = z << tl.maximum(k, 0)
    denominator = (z * 0 + EXP_MANTISSA) << tl.maximum(-k, 0)
    quotient = numerator // denominator  # non-negative: floor
    twice_remainder = 2 * (numerator - quotient * denominator)
    up = (twice_remainder > denominator) | ((twice_remainder == denominator) & ((quotient & 1) == 1))
    return tl.minimum(quotient + up.to(tl.int64), EXP_MAX)


@triton.jit
def int_softmax_kernel(
    x_ptr,  # float32 [n_rows, row_length]
    n_rows,
    row_length,
    y_ptr,
    INPUT_SCALE: tl.constexpr,
    X0_INT: tl.constexpr,
    B_INT: tl.constexpr,
    C_INT: tl.constexpr,
    EXP_MANTISSA: tl.constexpr,
    EXP_EXPONENT: tl.constexpr,
    OUTPUT_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row_start = tl.program_id(0).to(tl.int64) * row_length
    scale = tl.full([BLOCK], INPUT_SCALE, tl.float32)
    output_scale = 0.5**OUTPUT_BITS  # a power of two: exact in float32

    running_max = tl.full([BLOCK], INT32_MIN, tl.int64)
    for start in range(0, row_length, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        running_max = tl.maximum(running_max, tl.where(mask, x, INT32_MIN))
    row_max = tl.max(running_max, axis=0)

    running_sum = tl.zeros([BLOCK], tl.int64)
    for start in range(0, row_length, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        e = exp16(x - row_max, X0_INT, B_INT, C_INT, EXP_MANTISSA, EXP_EXPONENT)
        running_sum += tl.where(mask, e, 0)
    total = tl.maximum(tl.sum(running_sum, axis=0), 1)
    factor = SOFTMAX_NUMERATOR // total

    for start in range(0, row_length, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < row_length
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        e = exp16(x - row_max, X0_INT, B_INT, C_INT, EXP_MANTISSA, EXP_EXPONENT)
        y = (e * factor) >> (SOFTMAX_SUM_BITS - OUTPUT_BITS)
        tl.store(y_ptr + row_start + offsets, y.to(tl.float32) * output_scale, mask=mask)


# --------------------------------------------------------------------------------------------------
# IntLayerNorm: one program per row of the last (channel) axis, three passes (mean, variance, write)


@triton.jit
def int_layernorm_kernel(
    x_ptr,  # float32 [n_rows, channels]
    weight_ptr,  # the ONNX node's weight and bias: unused, their integer forms are in the tables
    bias_ptr,
    int_constants_ptr,  # int64 [1, channels]: bias_int
    float_constants_ptr,  # float32 [1, channels]: output_scale
    n_rows,
    channels,
    y_ptr,
    INPUT_SCALE: tl.constexpr,
    SHIFT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row_start = tl.program_id(0).to(tl.int64) * channels
    scale = tl.full([BLOCK], INPUT_SCALE, tl.float32)

    running_sum = tl.zeros([BLOCK], tl.int64)
    for start in range(0, channels, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < channels
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        running_sum += tl.where(mask, x, 0)
    mean = round_div_half_even(tl.sum(running_sum, axis=0), channels)

    running_var = tl.zeros([BLOCK], tl.int64)
    for start in range(0, channels, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < channels
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        y_shifted = (x - mean) >> SHIFT
        running_var += tl.where(mask, y_shifted * y_shifted, 0)
    variance = tl.sum(running_var, axis=0)
    std = tl.maximum(isqrt(variance), 1) << SHIFT  # >= 2**shift: the reference's int_layernorm
    factor = LAYERNORM_NUMERATOR // std

    for start in range(0, channels, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < channels
        x = quantize(tl.load(x_ptr + row_start + offsets, mask=mask, other=0.0), scale)
        bias_int = tl.load(int_constants_ptr + offsets, mask=mask, other=0)
        output_scale = tl.load(float_constants_ptr + offsets, mask=mask, other=1.0)
        y = (((x - mean) * factor) >> 1) + bias_int
        tl.store(y_ptr + row_start + offsets, y.to(tl.float32) * output_scale, mask=mask)
