"""I-BERT's integer nonlinearities as torch custom ops (`torch.library`), one per `ibert` ONNX op.

The ops compute in int64 torch tensors and match `trt_runtime.contract.ibert` exactly
(same algorithms, constants taken from its `*_constants` functions). Their arguments are the ONNX
attributes of the op in the order below, so the exporter maps each op to one `ibert::` node
(`torch.onnx.register_custom_op_symbolic` for the TorchScript exporter) and `models` stays free of ONNX.
Names and argument order are stable:

    ibert::int_gelu(Tensor x, float[] input_scale, float[] output_scale) -> Tensor            IntGELU
    ibert::int_softmax(Tensor x, int axis, int output_bits, float input_scale, float exp_scale,
                       float output_scale) -> Tensor                                          IntSoftmax
    ibert::int_layernorm(Tensor x, Tensor weight, Tensor bias, int axis, float input_scale, int shift,
                         float[] output_scale) -> Tensor                                      IntLayerNorm

Inputs are float tensors holding integer x input_scale; outputs are float32 holding integer x
output_scale. `output_scale` is derived (build the arguments with `integer_reference.*_attributes`);
the ops check it. Every op has a fake (meta) implementation for tracing and a straight-through
gradient: the backward pass is that of the float function (GELU, softmax, LayerNorm) at the input,
so a model in integer mode can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trt_runtime.contract import ibert as ref

#: torch op -> ONNX op type in the `ibert` domain (arguments after the tensors are its attributes, in order)
ONNX_OP_TYPES = {
    "ibert::int_gelu": "IntGELU",
    "ibert::int_softmax": "IntSoftmax",
    "ibert::int_layernorm": "IntLayerNorm",
}


# --------------------------------------------------------------------------------------------------
# int64 building blocks, one for one with integer_reference


def quantize_input(x: Tensor, input_scale: Tensor | float) -> Tensor:
    """round_half_to_even(x / input_scale) in float32, clipped to the int32 range, as int64."""
    scale = torch.as_tensor(input_scale, dtype=torch.float32, device=x.device)
    quotient = torch.round(x.to(torch.float32) / scale).clamp(float(ref.INT32_MIN), float(2**31))
    return quotient.to(torch.int64).clamp(ref.INT32_MIN, ref.INT32_MAX)


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
    """floor(sqrt(n)) by Newton's method from 2**ceil(bits/2), as integer_reference.isqrt."""
    x = torch.bitwise_left_shift(torch.ones_like(n), _floor_div(bit_length(n) + 1, 2))
    while True:
        nxt = torch.minimum(x, _floor_div(x + _floor_div(n, x.clamp(min=1)), 2))
        if torch.equal(nxt, x):
            return x
        x = nxt


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
            f"arguments with integer_reference.{op.removeprefix('int_')}_attributes()"
        )


def exp_integers(x_int: Tensor, consts: ref.ExpConstants, axis: int) -> tuple[Tensor, Tensor]:
    """I-BERT's i-exp of x_int - max(x_int): (z, q) with exp_int = z * 2**(30 - q)."""
    x = x_int - x_int.amax(dim=axis, keepdim=True)
    x = x.clamp(min=ref.EXP_MAX_Q * consts.x0_int)
    q = _floor_div(x, consts.x0_int)
    r = x - consts.x0_int * q
    z = ((r + consts.b_int) * r + consts.c_int).clamp(min=0)
    return z, q


def exp_values(x: Tensor, input_scale: float, axis: int = -1) -> Tensor:
    """The un-requantized exp integers z * 2**(30 - q) (as float64) that the softmax's 16-bit QuantAct sees."""
    consts = ref.exp_constants(input_scale)
    z, q = exp_integers(quantize_input(x, input_scale), consts, axis)
    return z.to(torch.float64) * torch.exp2((ref.EXP_SHIFT_BITS - q).to(torch.float64))


def layernorm_centered(x: Tensor, input_scale: float, axis: int = -1) -> Tensor:
    """y = x_int - round_half_to_even(mean(x_int)) along axis (int64): what IntLayerNorm normalizes."""
    x_int = quantize_input(x, input_scale)
    return x_int - round_div_half_even(x_int.sum(dim=axis, keepdim=True), x_int.shape[axis])


# --------------------------------------------------------------------------------------------------
# the ops


@torch.library.custom_op("ibert::int_gelu", mutates_args=())
def int_gelu(x: Tensor, input_scale: Sequence[float], output_scale: Sequence[float]) -> Tensor:
    """I-BERT's i-GELU (integer_reference.int_gelu); scales per tensor (1 value) or per last-axis channel."""
    consts = _gelu_constants(tuple(float(s) for s in input_scale))
    _check_output_scale("int_gelu", output_scale, consts.output_scale)
    device = x.device
    x_int = quantize_input(x, torch.from_numpy(np.asarray(input_scale, np.float32)).to(device))
    b_int = torch.from_numpy(consts.b_int).to(device)
    # in place on one buffer (the tensors are large): t = sign(x) * ((min(|x|, -b) + b)^2 + c) >> 14
    t = torch.minimum(x_int.abs(), -b_int)
    t += b_int
    t *= t
    t += torch.from_numpy(consts.c_int).to(device)
    t *= torch.sign(x_int)
    t.bitwise_right_shift_(ref.GELU_SHIFT_BITS)  # floor division by 2**14: the erf integer
    t += torch.from_numpy(consts.shift_int).to(device)
    t *= x_int
    t.neg_()  # y_int = -(x * (erf + shift)), for a positive output scale
    return t.to(torch.float32) * torch.from_numpy(consts.output_scale).to(device)


@torch.library.custom_op("ibert::int_softmax", mutates_args=())
def int_softmax(
    x: Tensor, axis: int, output_bits: int, input_scale: float, exp_scale: float, output_scale: float
) -> Tensor:
    """I-BERT's i-softmax (integer_reference.int_softmax), 16-bit exp requantized with exp_scale."""
    consts = _softmax_constants(float(input_scale), float(exp_scale))
    if not 1 <= output_bits <= 16:
        raise ValueError(f"ibert::int_softmax: output_bits must be in 1..16, got {output_bits}")
    _check_output_scale("int_softmax", output_scale, 2.0**-output_bits)
    z, q = exp_integers(quantize_input(x, input_scale), consts, axis)
    k = ref.EXP_SHIFT_BITS - q - consts.exp_exponent
    numerator = torch.bitwise_left_shift(z, k.clamp(min=0))
    denominator = torch.bitwise_left_shift(torch.full_like(k, consts.exp_mantissa), (-k).clamp(min=0))
    exp16 = round_div_half_even(numerator, denominator).clamp(0, 2 ** (ref.EXP_BITS - 1) - 1)
    total = exp16.sum(dim=axis, keepdim=True).clamp(min=1)
    factor = _floor_div(torch.full_like(total, 2**ref.SOFTMAX_SUM_BITS), total)
    y_int = torch.bitwise_right_shift(exp16 * factor, ref.SOFTMAX_SUM_BITS - output_bits)
    return y_int.to(torch.float32) * float(np.float32(output_scale))


@torch.library.custom_op("ibert::int_layernorm", mutates_args=())
def int_layernorm(
    x: Tensor, weight: Tensor, bias: Tensor, axis: int, input_scale: float, shift: int, output_scale: Sequence[float]
) -> Tensor:
    """I-BERT's integer LayerNorm (integer_reference.int_layernorm) over `axis`, integer square root."""
    if shift < 0:
        raise ValueError(f"ibert::int_layernorm: shift must be >= 0, got {shift}")
    consts = ref.layernorm_constants(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())
    _check_output_scale("int_layernorm", output_scale, consts.output_scale)
    y = layernorm_centered(x, input_scale, axis)
    y_shifted = torch.bitwise_right_shift(y, shift)
    var = (y_shifted * y_shifted).sum(dim=axis, keepdim=True)
    std = torch.bitwise_left_shift(isqrt(var), shift).clamp(min=1)
    factor = _floor_div(torch.full_like(std, 2**ref.LAYERNORM_FACTOR_BITS), std)
    shape = [1] * x.dim()
    shape[axis] = -1
    bias_int = torch.from_numpy(consts.bias_int).to(x.device).view(shape)
    y_int = torch.bitwise_right_shift(y * factor, 1) + bias_int
    return y_int.to(torch.float32) * torch.from_numpy(consts.output_scale).to(x.device).view(shape)


# --------------------------------------------------------------------------------------------------
# fake implementations (shapes for tracing) and straight-through gradients


@int_gelu.register_fake
def _(x, input_scale, output_scale):
    return torch.empty_like(x, dtype=torch.float32)


@int_softmax.register_fake
def _(x, axis, output_bits, input_scale, exp_scale, output_scale):
    return torch.empty_like(x, dtype=torch.float32)


@int_layernorm.register_fake
def _(x, weight, bias, axis, input_scale, shift, output_scale):
    return torch.empty_like(x, dtype=torch.float32)


def _float_layernorm(x: Tensor, weight: Tensor, bias: Tensor, axis: int) -> Tensor:
    moved = x.movedim(axis, -1)
    out = F.layer_norm(moved, moved.shape[-1:], weight, bias, eps=1e-12)
    return out.movedim(-1, axis)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _save_x_and_axis(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.axis = inputs[1]


def _save_layernorm_inputs(ctx, inputs, output):
    x, weight, bias, axis = inputs[:4]
    ctx.save_for_backward(x, weight, bias)
    ctx.axis = axis


def _vjp(fn, primals: tuple[Tensor, ...], grad: Tensor) -> tuple[Tensor, ...]:
    with torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_(True) for p in primals)
        return torch.autograd.grad(fn(*leaves), leaves, grad)


def _gelu_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    (grad_x,) = _vjp(lambda t: F.gelu(t.to(torch.float32)), (x,), grad)
    return grad_x, None, None


def _softmax_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    (grad_x,) = _vjp(lambda t: torch.softmax(t.to(torch.float32), dim=ctx.axis), (x,), grad)
    return grad_x, None, None, None, None, None


def _layernorm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    grads = _vjp(lambda t, w, b: _float_layernorm(t.to(torch.float32), w, b, ctx.axis), (x, weight, bias), grad)
    return (*grads, None, None, None, None)


int_gelu.register_autograd(_gelu_backward, setup_context=_save_x)
int_softmax.register_autograd(_softmax_backward, setup_context=_save_x_and_axis)
int_layernorm.register_autograd(_layernorm_backward, setup_context=_save_layernorm_inputs)
