"""I-BERT's integer-only modules with Hugging Face's names and buffers, written for export.

`QuantEmbedding`, `QuantAct`, `QuantLinear`, `IntGELU`, `IntSoftmax` and `IntLayerNorm` follow
`transformers.models.ibert.quant_modules`: the same constructor arguments, the same
``forward(x, scaling_factor) -> (y, scaling_factor)`` protocol, the same buffers (`x_min`, `x_max`,
`act_scaling_factor`, `weight_integer`, `fc_scaling_factor`, `bias_integer`, `weight_scaling_factor`,
`shift`), so Hugging Face I-BERT `quant_mode=true` checkpoints load, and `force_dequant` as the I-BERT
config defines it (none | gelu | softmax | layernorm | nonlinear).

What differs is how the arithmetic is written, so that a trace is clean and exports as Q/DQ, while eager
mode reproduces Hugging Face bit for bit (tests/test_integer_model.py):
- scales travel as float32 NumPy arrays (constants at trace time), computed with Hugging Face's float32
  expressions from the ranges and weights;
- weights, biases and every requantization are fake quantization with those constant scales
  (`fake_quantize`): 8-bit ranges are `torch.fake_quantize_per_*_affine` (ONNX QuantizeLinear /
  DequantizeLinear), wider ones the same arithmetic in plain ops (ONNX has no Q/DQ type for them);
  FixedPointMul's 31-bit mantissa/exponent rescaling becomes a float32 product by 1 / scale, which can
  round differently only within ~1e-7 (relative) of a half-way point;
- `QuantLinear` is Q/DQ + MatMul in a trace (TensorRT runs it as an INT8 GEMM) and, in eager mode, the
  same GEMM on integer-valued float32 then one scale, as Hugging Face and an INT8 engine compute it;
- the nonlinearities are the `ibert::` custom ops of `integer_ops` (exact integer arithmetic).

Activation ranges are observed in training mode (Hugging Face's EMA, momentum 0.95; momentum -1 means a
running min/max) or while `calibrating` is set (eval numerics, no dropout; see integer_calibration).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.architectures import FORCE_DEQUANT_VALUES
from models.quantization.errors import NotCalibratedError
from models.quantization.integer import ops as integer_ops  # noqa: F401  (registers the ibert:: torch ops)
from trt_runtime.contract import ibert as ref

logger = logging.getLogger(__name__)

#: Hugging Face's initial range (x_min = -1e-5, x_max = 1e-5): a QuantAct that has seen no data
_UNSET_RANGE = 1.1e-5
_F32 = np.float32

Scale = np.ndarray  # float32, shape (1,) per tensor or (channels,) per channel


NOT_CALIBRATED_HINT = (
    "calibrate the model first (models.quantization.integer.calibration.calibrate_integer(model, batches)) "
    "or load an I-BERT checkpoint saved with quant_mode=true and calibrated ranges"
)


# --------------------------------------------------------------------------------------------------
# scales and fake quantization


def symmetric_scale(num_bits: int, x_min: np.ndarray, x_max: np.ndarray) -> Scale:
    """Hugging Face's `symmetric_linear_quantization_params` in float32: max(|min|, |max|, 1e-8) / (2**(b-1) - 1)."""
    bound = np.maximum(np.abs(np.asarray(x_min, _F32)), np.abs(np.asarray(x_max, _F32)))
    return np.atleast_1d(np.maximum(bound, _F32(1e-8)) / _F32(2 ** (num_bits - 1) - 1))


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _needs_gradient(x: Tensor) -> bool:
    """Whether to attach a straight-through gradient (never in a trace: it would only add nodes)."""
    return x.requires_grad and torch.is_grad_enabled() and not _exporting()


def _version_key(*tensors: Tensor | None) -> tuple:
    """Changes whenever one of the tensors is modified in place, replaced or moved."""
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors if t is not None)


class _EvalCache:
    """Quantized weights of one module, reused across eval forwards until a parameter changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Any = None

    @staticmethod
    def usable(module: nn.Module, weight: Tensor) -> bool:
        return not module.training and not _needs_gradient(weight) and not _exporting()

    def get(self, key: tuple, compute: Any) -> Any:
        if self.key != key:
            self.key, self.value = key, compute()
        return self.value


def _channel_view(values: np.ndarray, x: Tensor, axis: int) -> Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return torch.from_numpy(np.ascontiguousarray(values)).to(x.device).view(shape)


def quantize_integers(
    x: Tensor, scale: Scale, quant_min: int | None, quant_max: int | None, axis: int | None = None
) -> Tensor:
    """round_half_to_even(x * (1 / scale)) clamped to [quant_min, quant_max] (None: unbounded), as float.

    Hugging Face's `linear_quantize` arithmetic (a float32 reciprocal, then a product). The gradient is
    straight-through when x requires one.
    """
    scale = np.asarray(scale, _F32).reshape(-1)
    inverse = _F32(1) / scale
    factor: Tensor | float = float(inverse[0]) if axis is None else _channel_view(inverse, x, axis)
    integers = torch.round(x * factor)
    if quant_min is not None or quant_max is not None:
        integers = integers.clamp(
            None if quant_min is None else float(quant_min), None if quant_max is None else float(quant_max)
        )
    if _needs_gradient(x):
        scaled = x * factor
        integers = (scaled - scaled.detach()) + integers  # straight-through estimator; exactly `integers`
    return integers


def fake_quantize(
    x: Tensor, scale: Scale, quant_min: int | None, quant_max: int | None, axis: int | None = None
) -> Tensor:
    """quantize_integers(x) * scale: x rounded to the grid of `scale` (float32).

    Ranges inside int8 use `torch.fake_quantize_per_*_affine` (the same arithmetic; exported as ONNX
    QuantizeLinear / DequantizeLinear), narrower than [-128, 127] by clamping x first, which gives the same
    integers. Wider ranges (16, 22 bits, or None: unbounded) have no ONNX Q/DQ type: plain ops.
    """
    scale = np.asarray(scale, _F32).reshape(-1)
    if quant_min is not None and quant_max is not None and quant_min >= -128 and quant_max <= 127:
        if axis is None:
            s = float(scale[0])
            if (quant_min, quant_max) != (-128, 127):
                x = x.clamp(quant_min * s, quant_max * s)
            return torch.fake_quantize_per_tensor_affine(x, s, 0, -128, 127)
        scale_t = torch.from_numpy(scale).to(x.device)
        if (quant_min, quant_max) != (-128, 127):
            x = torch.clamp(x, _channel_view(quant_min * scale, x, axis), _channel_view(quant_max * scale, x, axis))
        zero_point = torch.zeros(scale.size, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale_t, zero_point, axis % x.dim(), -128, 127)
    integers = quantize_integers(x, scale, quant_min, quant_max, axis)
    return integers * (float(scale[0]) if axis is None else _channel_view(scale, x, axis))


def round_to_grid(x: Tensor, scale: Scale) -> Tensor:
    """round_half_to_even(x / scale) * scale, per tensor or per last-axis channel (FixedPointMul's first step).

    Division, not a reciprocal product, as FixedPointMul computes `round(pre_act / pre_act_scaling_factor)`.
    """
    scale = np.asarray(scale, _F32).reshape(-1)
    scale_t: Tensor | float = float(scale[0]) if scale.size == 1 else _channel_view(scale, x, -1)
    rounded = torch.round(x / scale_t) * scale_t
    if _needs_gradient(x):
        rounded = (x - x.detach()) + rounded  # straight-through estimator
    return rounded


def dyadic_multiplier(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hugging Face's `batch_frexp`: ratio ~ mantissa / 2**exponent, mantissa a 31-bit integer (rounded half up)."""
    fraction, exponent = np.frexp(np.asarray(ratio, np.float64))
    mantissa = np.sign(fraction) * np.floor(np.abs(fraction) * 2.0**31 + 0.5)  # Decimal ROUND_HALF_UP
    return mantissa, 31.0 - exponent


def _rescale(x: Tensor, scale: Scale, output_scale: Scale) -> Tensor:
    """round(round(x / scale) * mantissa / 2**exponent) in float64 for ratio scale / output_scale."""
    scale = np.asarray(scale, _F32).reshape(-1)
    scale_t: Tensor | float = float(scale[0]) if scale.size == 1 else _channel_view(scale, x, -1)
    integers = torch.round(x.detach() / scale_t).to(torch.float64)
    ratio = scale.astype(np.float64) / np.float64(np.asarray(output_scale, _F32).reshape(-1)[0])
    mantissa, exponent = dyadic_multiplier(ratio)
    multiplier = mantissa / 2.0**exponent  # exact: a division by a power of two
    factor: Tensor | float = float(multiplier[0]) if multiplier.size == 1 else _channel_view(multiplier, integers, -1)
    return torch.round(integers * factor)


def fixed_point_multiply(
    x: Tensor,
    scale: Scale,
    output_scale: Scale,
    num_bits: int,
    identity: Tensor | None = None,
    identity_scale: Scale | None = None,
) -> Tensor:
    """Hugging Face's `FixedPointMul`, exactly: x (and identity) on their grids rescaled to the output grid.

    Each input is rounded to its own grid, multiplied by a 31-bit mantissa and shifted (in float64, as
    Hugging Face does), rounded; the sum is clamped to [-2**(b-1), 2**(b-1) - 1] and times output_scale.
    """
    integers = _rescale(x, scale, output_scale)
    if identity is not None:
        assert identity_scale is not None
        integers = integers + _rescale(identity, identity_scale, output_scale)
    low, high = signed_range(num_bits)
    return integers.clamp(low, high).to(torch.float32) * float(np.asarray(output_scale, _F32).reshape(-1)[0])


def signed_range(num_bits: int) -> tuple[int, int]:
    """FixedPointMul's clamp: [-2**(b-1), 2**(b-1) - 1]."""
    return -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1


def symmetric_range(num_bits: int) -> tuple[int, int]:
    """SymmetricQuantFunction's clamp, as Hugging Face has it: [-(2**(b-1) - 1), 2**(b-1) - 2]."""
    n = 2 ** (num_bits - 1) - 1
    return -n, n - 1


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _check_force_dequant(force_dequant: str) -> None:
    if force_dequant not in FORCE_DEQUANT_VALUES:
        raise ValueError(f"force_dequant must be one of {', '.join(FORCE_DEQUANT_VALUES)}, got {force_dequant!r}")


# --------------------------------------------------------------------------------------------------
# modules


class QuantEmbedding(nn.Module):
    """`nn.Embedding` with its weight fake-quantized per tensor to `weight_bit` bits (symmetric)."""

    weight_scaling_factor: Tensor
    weight_integer: Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        weight_bit: int = 8,
        momentum: float = 0.95,
        quant_mode: bool = True,
    ):
        super().__init__()
        self.num_ = num_embeddings
        self.dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight_bit = weight_bit
        self.momentum = momentum
        self.quant_mode = quant_mode
        self.weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim))
        self.register_buffer("weight_scaling_factor", torch.zeros(1))
        self.register_buffer("weight_integer", torch.zeros(num_embeddings, embedding_dim))
        self._cache = _EvalCache()

    def weight_scale(self) -> Scale:
        w = self.weight.detach()
        return symmetric_scale(self.weight_bit, _to_numpy(w.min()), _to_numpy(w.max()))

    def quantized_weight(self) -> tuple[Tensor, Scale]:
        """(weight rounded to its 8-bit grid, scale), from the current weight."""
        scale = self.weight_scale()
        return fake_quantize(self.weight, scale, *symmetric_range(self.weight_bit)), scale

    def forward(self, ids: Tensor) -> tuple[Tensor, Scale | None]:
        if not self.quant_mode:
            return nn.functional.embedding(ids, self.weight, self.padding_idx), None
        if _EvalCache.usable(self, self.weight):
            weight, scale = self._cache.get(_version_key(self.weight), self.quantized_weight)
        else:
            weight, scale = self.quantized_weight()
        if self.training:
            with torch.no_grad():
                self.weight_integer.copy_(torch.round(weight.detach() / float(scale[0])))
                self.weight_scaling_factor.copy_(torch.from_numpy(scale))
        return nn.functional.embedding(ids, weight, self.padding_idx), scale


class QuantAct(nn.Module):
    """Requantizes an activation to `activation_bit` bits with a range learned from data.

    forward(x, pre_act_scaling_factor, identity, identity_scaling_factor) -> (y, scale):
    with `pre_act_scaling_factor` (x is already integer x scale) each input is rounded to the output grid
    on its own and the sum is clamped to [-2**(b-1), 2**(b-1) - 1], as FixedPointMul does; without it
    (x is float) x is rounded and clamped to [-(2**(b-1) - 1), 2**(b-1) - 2], as Hugging Face does.
    """

    x_min: Tensor
    x_max: Tensor
    act_scaling_factor: Tensor

    def __init__(
        self,
        activation_bit: int,
        act_range_momentum: float = 0.95,
        per_channel: bool = False,
        channel_len: int | None = None,
        quant_mode: bool = True,
    ):
        super().__init__()
        if per_channel:
            raise NotImplementedError("per-channel activation quantization is not supported (nor in I-BERT)")
        self.activation_bit = activation_bit
        self.act_range_momentum = act_range_momentum
        self.quant_mode = quant_mode
        self.per_channel = per_channel
        self.calibrating = False
        self.name = ""  # for messages; set by the backbone
        self.register_buffer("x_min", torch.full((1,), -1e-5))
        self.register_buffer("x_max", torch.full((1,), 1e-5))
        self.register_buffer("act_scaling_factor", torch.zeros(1))

    @property
    def observing(self) -> bool:
        return self.training or self.calibrating

    @property
    def is_calibrated(self) -> bool:
        return not (float(self.x_min.min()) > -_UNSET_RANGE and float(self.x_max.max()) < _UNSET_RANGE)

    def scale(self) -> Scale:
        if not self.observing and not self.is_calibrated:
            raise NotCalibratedError(f"QuantAct {self.name or ''} has no activation range: {NOT_CALIBRATED_HINT}")
        return symmetric_scale(self.activation_bit, _to_numpy(self.x_min), _to_numpy(self.x_max))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Hugging Face's range update: first batch sets the range, then EMA (or min/max for momentum -1)."""
        low, high = x.detach().min().to(torch.float32), x.detach().max().to(torch.float32)
        if torch.isnan(low) or torch.isnan(high):
            raise ValueError(f"QuantAct {self.name}: NaN in the activation while observing its range")
        momentum = self.act_range_momentum
        if not self.is_calibrated:
            new_min, new_max = self.x_min + low, self.x_max + high  # (sic) Hugging Face adds to the ±1e-5 start
        elif momentum == -1:
            new_min, new_max = torch.minimum(self.x_min, low), torch.maximum(self.x_max, high)
        else:
            new_min = self.x_min * momentum + low * (1 - momentum)
            new_max = self.x_max * momentum + high * (1 - momentum)
        self.x_min.copy_(new_min)
        self.x_max.copy_(new_max)
        self.act_scaling_factor.copy_(torch.from_numpy(self.scale()))

    def forward(
        self,
        x: Tensor,
        pre_act_scaling_factor: Scale | None = None,
        identity: Tensor | None = None,
        identity_scaling_factor: Scale | None = None,
        snap_inputs: bool = False,
    ) -> tuple[Tensor, Scale | None]:
        """snap_inputs: first round x (and identity) to the grid of the scale passed with it, as FixedPointMul
        does; a no-op when the tensor is on that grid, which it is everywhere but after I-BERT's first layer,
        where every layer is passed the embeddings' scale."""
        x_act = x if identity is None else identity + x
        if self.observing:
            self.observe(x_act)
        if not self.quant_mode:
            return x_act, None
        scale = self.scale()
        if pre_act_scaling_factor is None:
            if identity is not None:
                raise ValueError("QuantAct: an identity input needs pre_act_scaling_factor (the input's scale)")
            return fake_quantize(x, scale, *symmetric_range(self.activation_bit)), scale
        if identity is not None and identity_scaling_factor is None:
            raise ValueError("QuantAct: an identity input needs identity_scaling_factor (its scale)")
        if not _exporting():
            requantized = fixed_point_multiply(
                x, pre_act_scaling_factor, scale, self.activation_bit, identity, identity_scaling_factor
            )
            if _needs_gradient(x_act):
                requantized = (x_act - x_act.detach()) + requantized  # straight-through estimator
            return requantized, scale
        # Q/DQ form of the same requantization (a float32 product by 1 / scale instead of the mantissa)
        if snap_inputs:
            x = round_to_grid(x, pre_act_scaling_factor)
        if identity is None:
            return fake_quantize(x, scale, *signed_range(self.activation_bit)), scale
        assert identity_scaling_factor is not None
        if snap_inputs:
            identity = round_to_grid(identity, identity_scaling_factor)
        # FixedPointMul rescales each input to the output grid on its own, then adds and clamps
        summed = fake_quantize(x, scale, None, None) + fake_quantize(identity, scale, None, None)
        return fake_quantize(summed, scale, *signed_range(self.activation_bit)), scale

    def extra_repr(self) -> str:
        return (
            f"activation_bit={self.activation_bit}, quant_mode={self.quant_mode}, "
            f"Act_min={float(self.x_min):.2f}, Act_max={float(self.x_max):.2f}"
        )


class QuantLinear(nn.Module):
    """I-BERT's integer linear layer: 8-bit per-channel weights, 32-bit bias, a per-tensor 8-bit input.

    y = x @ fq(W)^T + fq(b): Q/DQ + MatMul. The output scale is per channel: weight scale x input scale.
    (Named as in Hugging Face; the QDQ toolkit's `QuantLinear` lives in models.quantization.qdq.nn.)
    """

    weight_integer: Tensor
    fc_scaling_factor: Tensor
    bias_integer: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_bit: int = 8,
        bias_bit: int = 32,
        per_channel: bool = False,
        quant_mode: bool = True,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        self.per_channel = per_channel
        self.quant_mode = quant_mode
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.register_buffer("weight_integer", torch.zeros(out_features, in_features))
        self.register_buffer("fc_scaling_factor", torch.zeros(out_features))
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
            self.register_buffer("bias_integer", torch.zeros(out_features))
        else:
            self.bias = None
        self._cache = _EvalCache()

    def weight_scale(self) -> Scale:
        w = self.weight.detach()
        if self.per_channel:
            return symmetric_scale(self.weight_bit, _to_numpy(w.amin(dim=1)), _to_numpy(w.amax(dim=1)))
        return symmetric_scale(self.weight_bit, _to_numpy(w.min()), _to_numpy(w.max()))

    def forward(self, x: Tensor, prev_act_scaling_factor: Scale | None = None) -> tuple[Tensor, Scale | None]:
        if not self.quant_mode:
            return nn.functional.linear(x, self.weight, self.bias), None
        if prev_act_scaling_factor is None or np.size(prev_act_scaling_factor) != 1:
            raise ValueError(
                "QuantLinear's input must be quantized per tensor: pass the scale of the QuantAct before it"
            )
        input_scale = np.asarray(prev_act_scaling_factor, _F32).reshape(1)
        if _exporting():
            # Q/DQ + MatMul: TensorRT runs it as an INT8 GEMM (int32 accumulation, then the scales)
            weight_scale, bias_scale = self.scales(input_scale)
            weight = fake_quantize(self.weight, weight_scale, *symmetric_range(self.weight_bit), axis=self._axis)
            bias = None
            if self.bias is not None:
                bias = fake_quantize(self.bias, bias_scale, *symmetric_range(self.bias_bit), axis=0)
            return nn.functional.linear(x, weight, bias), bias_scale
        # The same GEMM on integers held in float32 (exact below 2**24), then one scale, as Hugging Face
        # and an INT8 engine compute it. x / input_scale is not rounded (Hugging Face does not either:
        # after the first layer the scale I-BERT passes is the embeddings', not x's own).
        if _EvalCache.usable(self, self.weight):
            key = _version_key(self.weight, self.bias) + (float(input_scale[0]),)
            weight_int, bias_int, bias_scale = self._cache.get(key, lambda: self.integers(input_scale))
        else:
            weight_int, bias_int, bias_scale = self.integers(input_scale)
        x_int = x / float(input_scale[0])
        return nn.functional.linear(x_int, weight_int, bias_int) * _channel_view(bias_scale, x, -1), bias_scale

    @property
    def _axis(self) -> int | None:
        return 0 if self.per_channel else None

    def scales(self, input_scale: Scale) -> tuple[Scale, Scale]:
        """(weight scale, bias = output scale): per channel, or per tensor broadcast to the channels."""
        weight_scale = self.weight_scale()
        bias_scale = np.broadcast_to(weight_scale * input_scale, (self.out_features,)).astype(_F32)
        return weight_scale, bias_scale

    def integers(self, input_scale: Scale) -> tuple[Tensor, Tensor | None, Scale]:
        """(integer weight, integer bias, output scale) as float tensors; Hugging Face's buffers in training."""
        weight_scale, bias_scale = self.scales(input_scale)
        weight_int = quantize_integers(self.weight, weight_scale, *symmetric_range(self.weight_bit), axis=self._axis)
        bias_int = None
        if self.bias is not None:
            bias_int = quantize_integers(self.bias, bias_scale, *symmetric_range(self.bias_bit), axis=0)
        if self.training:
            with torch.no_grad():
                self.weight_integer.copy_(weight_int)
                self.fc_scaling_factor.copy_(torch.from_numpy(np.broadcast_to(weight_scale, (self.out_features,)).copy()))
                if bias_int is not None:
                    self.bias_integer.copy_(bias_int)
        return weight_int, bias_int, bias_scale

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, weight_bit={self.weight_bit}, "
            f"per_channel={self.per_channel}, quant_mode={self.quant_mode}"
        )


@lru_cache(maxsize=4096)
def _gelu_attributes(input_scale: tuple[float, ...]) -> dict[str, Any]:
    return ref.gelu_attributes(input_scale)


class IntGELU(nn.Module):
    """i-GELU (`ibert::int_gelu`); float GELU when force_dequant is gelu or nonlinear."""

    def __init__(self, quant_mode: bool = True, force_dequant: str = "none"):
        super().__init__()
        _check_force_dequant(force_dequant)
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "gelu")
        if not self.quant_mode:
            self.activation_fn = nn.GELU()

    def forward(self, x: Tensor, scaling_factor: Scale | None = None) -> tuple[Tensor, Scale | None]:
        if not self.quant_mode:
            return self.activation_fn(x), None
        if scaling_factor is None:
            raise ValueError("IntGELU needs the input's scale (per tensor or per channel)")
        attributes = _gelu_attributes(tuple(float(s) for s in np.asarray(scaling_factor, _F32).reshape(-1)))
        y = torch.ops.ibert.int_gelu(x, attributes["input_scale"], attributes["output_scale"])
        return y, np.asarray(attributes["output_scale"], _F32)


class IntSoftmax(nn.Module):
    """i-softmax (`ibert::int_softmax`) over the last axis; float softmax when force_dequant is softmax or nonlinear.

    `act` is I-BERT's QuantAct(16) on the exp integers: its range gives the op's exp_scale.
    """

    def __init__(self, output_bit: int, quant_mode: bool = True, force_dequant: str = "none"):
        super().__init__()
        _check_force_dequant(force_dequant)
        self.output_bit = output_bit
        self.max_bit = ref.SOFTMAX_SUM_BITS
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "softmax")
        self.act = QuantAct(ref.EXP_BITS, quant_mode=self.quant_mode)

    def forward(self, x: Tensor, scaling_factor: Scale | None) -> tuple[Tensor, Scale | None]:
        if not self.quant_mode:
            return nn.functional.softmax(x, dim=-1), None
        if scaling_factor is None:
            raise ValueError("IntSoftmax needs the input's scale")
        input_scale = float(np.asarray(scaling_factor, _F32).reshape(-1)[0])
        if self.act.observing:
            self.act.observe(integer_ops.exp_values(x, input_scale).to(torch.float32))
        attributes = ref.softmax_attributes(input_scale, float(self.act.scale()[0]), self.output_bit)
        y = torch.ops.ibert.int_softmax(
            x,
            attributes["axis"],
            attributes["output_bits"],
            attributes["input_scale"],
            attributes["exp_scale"],
            attributes["output_scale"],
        )
        return y, np.array([attributes["output_scale"]], _F32)


class IntLayerNorm(nn.Module):
    """Integer LayerNorm (`ibert::int_layernorm`) over the last axis; float when force_dequant is layernorm or nonlinear.

    `shift` is raised while observing when the variance sum would reach 2**32 (Hugging Face's overflow
    fallback). `activation` exists only for checkpoint compatibility (Hugging Face does not use it either).
    """

    shift: Tensor

    def __init__(
        self,
        normalized_shape: int,
        eps: float,
        output_bit: int = 8,
        quant_mode: bool = True,
        force_dequant: str = "none",
    ):
        super().__init__()
        _check_force_dequant(force_dequant)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.output_bit = output_bit
        self.max_bit = ref.LAYERNORM_VAR_BITS
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "layernorm")
        self.calibrating = False
        self.weight = nn.Parameter(torch.zeros(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.register_buffer("shift", torch.zeros(1))
        self.activation = QuantAct(self.output_bit, quant_mode=self.quant_mode)

    @property
    def observing(self) -> bool:
        return self.training or self.calibrating

    @torch.no_grad()
    def update_shift(self, x: Tensor, input_scale: float) -> None:
        """Hugging Face's `set_shift`: the smallest shift (never lowered) that keeps sum(y^2) below 2**32."""
        y = integer_ops.layernorm_centered(x, input_scale)
        shift = int(self.shift.item())
        y_shifted = torch.bitwise_right_shift(y, shift)
        if (y_shifted * y_shifted).sum(dim=-1).max() < 2**self.max_bit:
            return
        var = (y * y).sum(dim=-1).to(torch.float32)
        needed = torch.log2(torch.sqrt(var / 2**self.max_bit)).ceil().max()
        logger.info("IntLayerNorm shift %d -> %d", shift, max(shift, int(needed)))
        self.shift.copy_(torch.maximum(self.shift, needed))

    def forward(self, x: Tensor, scaling_factor: Scale | None = None) -> tuple[Tensor, Scale | None]:
        if not self.quant_mode:
            mean = x.mean(dim=-1, keepdim=True)
            y = x - mean
            var = torch.mean(y**2, dim=-1, keepdim=True)
            return y / torch.sqrt(self.eps + var) * self.weight + self.bias, None
        if scaling_factor is None:
            raise ValueError("IntLayerNorm needs the input's scale")
        input_scale = float(np.asarray(scaling_factor, _F32).reshape(-1)[0])
        if self.observing:
            self.update_shift(x, input_scale)
        attributes = ref.layernorm_attributes(input_scale, int(self.shift.item()), _to_numpy(self.weight))
        y = torch.ops.ibert.int_layernorm(
            x,
            self.weight,
            self.bias,
            attributes["axis"],
            attributes["input_scale"],
            attributes["shift"],
            attributes["output_scale"],
        )
        return y, np.asarray(attributes["output_scale"], _F32)


# --------------------------------------------------------------------------------------------------
# whole-model helpers


def integer_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every integer-mode module with a range or shift (QuantAct, IntLayerNorm)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantAct | IntLayerNorm):
            yield name, module


def set_calibrating(model: nn.Module, enabled: bool) -> None:
    """Observe activation ranges (and LayerNorm shifts) in eval numerics while `enabled`."""
    for _, module in integer_modules(model):
        module.calibrating = enabled  # type: ignore[assignment]


def uncalibrated(model: nn.Module) -> list[str]:
    """Names of the QuantActs the forward pass uses that have no range yet."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, QuantAct) and module.quant_mode and not module.is_calibrated:
            if name.endswith("embeddings_act2") or name.endswith("LayerNorm.activation"):
                continue  # present in Hugging Face's model, never called
            names.append(name)
    return names


def load_integer_state(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Copy I-BERT ranges, shifts and integer buffers from `state` into `model`; returns the QuantActs still unset.

    models.load copies buffers whose names the model has already; this does the same for any other caller
    (a state dict from Hugging Face's IBert* with quant_mode=True, keys with or without the task prefix).
    """
    own = dict(model.named_buffers())
    prefixes = ("",) + tuple(f"{name}." for name, _ in model.named_children())
    with torch.no_grad():
        for key, value in state.items():
            for prefix in prefixes:
                target = own.get(prefix + key)
                if target is not None:
                    if target.shape != value.shape:
                        raise ValueError(
                            f"{key}: shape {tuple(value.shape)} does not fit the model's {tuple(target.shape)}"
                        )
                    target.copy_(value.to(target.dtype))
                    break
    missing = uncalibrated(model)
    if missing:
        logger.info("integer mode: %d QuantActs have no range yet (%s...); calibrate", len(missing), missing[0])
    return missing


def attention_scores_scale(query_scale: Scale, key_scale: Scale, head_size: int) -> Scale:
    """Scale of QK^T / sqrt(d): Hugging Face's `query_scale * key_scale / sqrt(d)` in float32."""
    return (np.asarray(query_scale, _F32) * np.asarray(key_scale, _F32) / _F32(math.sqrt(head_size))).astype(_F32)
