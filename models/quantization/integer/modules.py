"""I-BERT's integer-only modules with Hugging Face's names and buffers, computing one exact integer arithmetic.

`QuantEmbedding`, `QuantAct`, `QuantLinear`, `IntGELU`, `IntSoftmax` and `IntLayerNorm` follow
`transformers.models.ibert.quant_modules`: the same constructor arguments and buffers (`x_min`, `x_max`,
`act_scaling_factor`, `weight_integer`, `fc_scaling_factor`, `bias_integer`, `weight_scaling_factor`,
`shift`), so Hugging Face I-BERT `quant_mode=true` checkpoints load, and `force_dequant` as the I-BERT
config defines it (none | gelu | softmax | layernorm | nonlinear).

What flows between them is an `IntegerTensor`: integer values (torch int32/int64), the grid they are on
(value = integer x scale, per tensor or per channel of the last axis) and a static bound on |value|
derived from bit widths, weights and constants. Every step is one of the `ibert::` torch ops
(models.quantization.integer.ops): integer GEMMs with 32-bit accumulators, requantization by dyadic
multipliers (FixedPointMul, exactly), the integer nonlinearities. The same ops run in eager mode and
in the trace, so the exported graph computes the same integers (trt_runtime.contract.ibert is their
spec). The static bounds choose between the ops' exact forms and refuse, with the layer, the bound
and the fix, arithmetic that would leave its integer type (`IntegerOverflowError`).

Float appears where I-BERT has it: force_dequant sites (a float GELU, softmax or LayerNorm on the
dequantized integers, then I-BERT's float quantization), the task heads, and training: with gradients
enabled every IntegerTensor carries a float `shadow` equal to its dequantized value whose gradient is
that of the float function each op approximates (straight-through), and dropout, which makes values
float, after which the next step rounds them back onto their grid as Hugging Face's FixedPointMul does.

Activation ranges are observed in training mode (Hugging Face's EMA, momentum 0.95; momentum -1 means a
running min/max) or while `calibrating` is set (eval numerics, no dropout; see integer.calibration).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.architectures import FORCE_DEQUANT_VALUES
from models.quantization.errors import NotCalibratedError
from models.quantization.integer import ops as integer_ops  # registers the ibert:: torch ops
from trt_runtime.contract import ibert as ref
from trt_runtime.contract.ibert import IntegerOverflowError

logger = logging.getLogger(__name__)

#: Hugging Face's initial range (x_min = -1e-5, x_max = 1e-5): a QuantAct that has seen no data
_UNSET_RANGE = 1.1e-5
_F32 = np.float32
INT32_MIN = ref.INT32_MIN

Scale = np.ndarray  # float32, shape (1,) per tensor or (channels,) per channel of the last axis

OVERFLOW_FIX = (
    "narrower activations: export with fewer --wide-activations sites (or --wide-activations none), or "
    "recalibrate on data of the model's own range"
)


NOT_CALIBRATED_HINT = (
    "calibrate the model first (models.quantization.integer.calibration.calibrate_integer(model, batches)) "
    "or load an I-BERT checkpoint saved with quant_mode=true and calibrated ranges"
)


# --------------------------------------------------------------------------------------------------
# integer tensors


@dataclass(frozen=True)
class IntegerTensor:
    """Integers on a grid: value = values x scale. bound: a static bound on |values| (from bit widths,
    weights and constants, never from the data). shadow: with gradients, a float tensor equal to the
    dequantized value that carries the straight-through gradient."""

    values: Tensor
    scale: Scale
    bound: int
    shadow: Tensor | None = None
    #: what a range observer sees when it is not the dequantized integers: the value before a `snap`
    #: (Hugging Face observes its float pre-activation, rounded onto the embeddings' grid only after)
    observed: Callable[[], Tensor] | None = None
    #: a static bound on the largest value when it is below `bound`: a requantized tensor's values are in
    #: [-2**(bits-1), 2**(bits-1) - 1] (IntMatMul takes A in [-128, 127])
    top: int | None = None

    @property
    def largest(self) -> int:
        """A static bound on max(values)."""
        return self.bound if self.top is None else min(self.bound, self.top)

    def observed_value(self) -> Tensor:
        return self.observed() if self.observed is not None else self.dequantize()

    def dequantize(self) -> Tensor:
        """float32(values) x scale (the shadow when there is one: the same value, with its gradient)."""
        if self.shadow is not None:
            return self.shadow
        return self.values.to(torch.float32) * _scale_tensor(self.scale, self.values)


def _scale_tensor(scale: Scale, like: Tensor) -> Tensor | float:
    scale = np.asarray(scale, _F32).reshape(-1)
    if scale.size == 1:
        return float(scale[0])
    return torch.from_numpy(np.ascontiguousarray(scale)).to(like.device)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _tracks_gradients(*tensors: Tensor | None) -> bool:
    """Whether to build float shadows (never in a trace: they would only add nodes)."""
    return torch.is_grad_enabled() and not _exporting() and any(t is not None and t.requires_grad for t in tensors)


def anchored(exact: IntegerTensor, surrogate: Tensor | None) -> IntegerTensor:
    """`exact` with a shadow whose value is exact's dequantized value and whose gradient is surrogate's."""
    if surrogate is None:
        return exact
    value = exact.values.to(torch.float32) * _scale_tensor(exact.scale, exact.values)
    return replace(exact, shadow=surrogate + (value - surrogate).detach())


def on_grid(x: Tensor, scale: Scale, bound: int) -> IntegerTensor:
    """A float tensor (integers on `scale`, moved by dropout) back onto its grid: round_half_even(x / scale)
    in float32, as Hugging Face's FixedPointMul computes `round(pre_act / pre_act_scaling_factor)`."""
    values = torch.round(x.detach() / _scale_tensor(scale, x)).to(torch.int32 if bound < 2**31 else torch.int64)
    surrogate = x if x.requires_grad else None
    return anchored(IntegerTensor(values, np.asarray(scale, _F32).reshape(-1), bound), surrogate)


def dropout(module: nn.Dropout, x: IntegerTensor) -> IntegerTensor:
    """Dropout on an integer tensor: a no-op in eval; in training the dropped float, back on the grid."""
    if not module.training or module.p == 0:
        return x
    dropped = module(x.dequantize())
    return on_grid(dropped, x.scale, int(math.ceil(x.bound / (1 - module.p))) + 1)


def _overflow(layer: str, what: str, bound: float, limit: float, fix: str = OVERFLOW_FIX) -> IntegerOverflowError:
    return IntegerOverflowError(
        f"{layer or 'an integer layer'}: {what} reaches {bound:.4g} (2**{math.log2(max(bound, 1)):.2f}), beyond "
        f"{limit:.4g} (2**{math.log2(limit):.2f}) with the calibrated ranges, so the integer arithmetic would "
        f"overflow; the model is refused rather than computed wrongly. Fix: {fix}"
    )


# --------------------------------------------------------------------------------------------------
# scales, quantization of floats, requantization


def symmetric_scale(num_bits: int, x_min: np.ndarray, x_max: np.ndarray) -> Scale:
    """Hugging Face's `symmetric_linear_quantization_params` in float32: max(|min|, |max|, 1e-8) / (2**(b-1) - 1)."""
    bound = np.maximum(np.abs(np.asarray(x_min, _F32)), np.abs(np.asarray(x_max, _F32)))
    return np.atleast_1d(np.maximum(bound, _F32(1e-8)) / _F32(2 ** (num_bits - 1) - 1))


def symmetric_range(num_bits: int) -> tuple[int, int]:
    """SymmetricQuantFunction's clamp, as Hugging Face has it: [-(2**(b-1) - 1), 2**(b-1) - 2]."""
    n = 2 ** (num_bits - 1) - 1
    return -n, n - 1


def _channel_view(values: np.ndarray, x: Tensor, axis: int) -> Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return torch.from_numpy(np.ascontiguousarray(values)).to(x.device).view(shape)


def quantize_integers(x: Tensor, scale: Scale, num_bits: int, axis: int | None = None) -> Tensor:
    """Hugging Face's SymmetricQuantFunction (reference `quantize`): round_half_even(x * float32(1 / scale))
    clamped to symmetric_range(num_bits), as int32 (int64 from 32 bits on). Floats to integers: weights,
    biases and the output of force_dequant sites; traced as Mul / Round / Clip / Cast."""
    scale = np.asarray(scale, _F32).reshape(-1)
    inverse = _F32(1) / scale
    factor: Tensor | float = float(inverse[0]) if axis is None else _channel_view(inverse, x, axis)
    low, high = symmetric_range(num_bits)
    rounded = torch.round(x.detach() * factor).clamp(float(low), float(high))
    return rounded.to(torch.int32 if num_bits < 32 else torch.int64)


def _zero_identity(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.int32, device=x.device)


@lru_cache(maxsize=4096)
def _requantize_attributes(
    input_scale: tuple[float, ...], output_scale: tuple[float, ...], bits: int, identity_scale: float | None
) -> dict[str, Any]:
    return ref.requantize_attributes(input_scale, output_scale, bits, identity_scale)


def _scale_key(scale: Scale) -> tuple[float, ...]:
    return tuple(float(s) for s in np.asarray(scale, _F32).reshape(-1))


def requantize(
    x: IntegerTensor, output_scale: Scale, bits: int, identity: IntegerTensor | None = None, layer: str = ""
) -> IntegerTensor:
    """FixedPointMul exactly (`ibert::requantize`, or `requantize_wide` for inputs of 62 bits): x (and
    identity) rescaled to output_scale by dyadic multipliers, each rounded on its own, added, clamped
    to `bits` bits (32: the int32 range)."""
    attrs = _requantize_attributes(
        _scale_key(x.scale), _scale_key(output_scale), bits, None if identity is None else _scale_key(identity.scale)[0]
    )
    if identity is not None and identity.bound >= ref.REQUANTIZE_INPUT_BOUND:
        raise _overflow(layer, "the requantized identity input", identity.bound, ref.REQUANTIZE_INPUT_BOUND)
    op: Any = None
    low, high = ref.signed_range(bits)
    if (identity is None and set(attrs["multiplier"]) == {2**30} and set(attrs["shift"]) == {30}
            and x.values.dtype == torch.int32 and x.bound <= -low and x.largest <= high):
        # the ratio is exactly 1 and x is in range (a QuantAct on a requantized tensor's own grid and bits):
        # FixedPointMul gives x itself, so the graph gets no node (each is ~10 full-size passes in ONNX Runtime)
        values = x.values
    elif x.bound < ref.REQUANTIZE_INPUT_BOUND:
        op = torch.ops.ibert.requantize
    elif x.bound < ref.REQUANTIZE_WIDE_INPUT_BOUND and min(attrs["shift"]) >= 30:
        op = torch.ops.ibert.requantize_wide
    else:
        limit = ref.REQUANTIZE_WIDE_INPUT_BOUND if min(attrs["shift"]) >= 30 else ref.REQUANTIZE_INPUT_BOUND
        raise _overflow(layer, "the requantization input", x.bound, limit)
    if op is not None:
        values = op(
            x.values,
            _zero_identity(x.values) if identity is None else identity.values,
            attrs["input_scale"],
            attrs["identity_scale"],
            attrs["output_scale"],
            attrs["output_bits"],
            attrs["multiplier"],
            attrs["shift"],
            attrs["identity_multiplier"],
            attrs["identity_shift"],
        )
    exact = IntegerTensor(values, np.asarray(output_scale, _F32).reshape(-1), 2 ** (bits - 1), top=2 ** (bits - 1) - 1)
    surrogate = None
    if x.shadow is not None or (identity is not None and identity.shadow is not None):
        surrogate = x.dequantize() if identity is None else x.dequantize() + identity.dequantize()
    return anchored(exact, surrogate)


def snap(x: IntegerTensor, scale: Scale, layer: str = "") -> IntegerTensor:
    """x moved onto the grid of `scale` (per tensor or per channel), unbounded: I-BERT gives every encoder
    layer the embeddings' scale, not its input's own, and FixedPointMul rounds there. A no-op when x is
    on that grid already (layer 0)."""
    scale = np.asarray(scale, _F32).reshape(-1)
    if np.array_equal(np.broadcast_to(scale, np.shape(x.scale)), x.scale) and scale.size == x.scale.size:
        return x
    ratio = np.max(np.asarray(x.scale, np.float64) / scale.astype(np.float64))
    snapped = requantize(x, scale, 32, layer=layer)
    return replace(snapped, bound=min(int(math.ceil(x.bound * ratio)) + 1, ref.INT32_BOUND + 1), observed=x.observed_value)


def int_matmul(a: IntegerTensor, b: Tensor, b_scale: Scale, b_bound: np.ndarray | int, layer: str = "") -> IntegerTensor:
    """A @ B exactly: `ibert::int_matmul` (A in [-128, 127], int32) or `int_matmul_wide` (A in [-2**15, 2**15 - 1],
    int64), chosen by a's static bounds.

    b: integers in [-128, 127] ([K, N], or batched); b_bound: max_n sum_k |B[k, n]| (a constant B), or
    sum_k max |B| for an activation; the accumulator bound is |A| x b_bound."""
    bound = int(a.bound) * int(np.max(b_bound))
    if a.bound <= ref.INT_MATMUL_A_BOUND and a.largest < ref.INT_MATMUL_A_BOUND:
        if bound > ref.INT32_BOUND:
            raise _overflow(layer, "the int32 accumulator", bound, ref.INT32_BOUND)
        op = torch.ops.ibert.int_matmul
    elif a.bound <= ref.INT_MATMUL_WIDE_A_BOUND and a.largest < ref.INT_MATMUL_WIDE_A_BOUND:
        op = torch.ops.ibert.int_matmul_wide
    else:
        raise _overflow(layer, "a GEMM input", a.bound, ref.INT_MATMUL_WIDE_A_BOUND)
    a_scale = np.asarray(a.scale, _F32).reshape(-1)
    b_scale = np.asarray(b_scale, _F32).reshape(-1)
    values = op(a.values, b, float(a_scale[0]), [float(s) for s in b_scale])
    return IntegerTensor(values, (a_scale * b_scale).astype(_F32), bound)


def _check_force_dequant(force_dequant: str) -> None:
    if force_dequant not in FORCE_DEQUANT_VALUES:
        raise ValueError(f"force_dequant must be one of {', '.join(FORCE_DEQUANT_VALUES)}, got {force_dequant!r}")


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _version_key(*tensors: Tensor | None) -> tuple:
    """Changes whenever one of the tensors is modified in place, replaced or moved."""
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors if t is not None)


class _EvalCache:
    """Integer weights of one module, reused across eval forwards until a parameter changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Any = None

    @staticmethod
    def usable(module: nn.Module) -> bool:
        return not module.training and not _exporting()

    def get(self, key: tuple, compute: Any) -> Any:
        if self.key != key:
            self.key, self.value = key, compute()
        return self.value


def _straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """quantized's value with x's gradient."""
    return x + (quantized - x).detach()


# --------------------------------------------------------------------------------------------------
# modules


class QuantEmbedding(nn.Module):
    """`nn.Embedding` whose table is quantized per tensor to `weight_bit` bits (symmetric): an integer lookup."""

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

    def integer_table(self) -> tuple[Tensor, Scale]:
        """(the table as int8 integers, scale) from the current weight."""
        scale = self.weight_scale()
        return quantize_integers(self.weight, scale, self.weight_bit).to(torch.int8), scale

    def forward(self, ids: Tensor) -> IntegerTensor | Tensor:
        if not self.quant_mode:
            return nn.functional.embedding(ids, self.weight, self.padding_idx)
        if _EvalCache.usable(self):
            table, scale = self._cache.get(_version_key(self.weight), self.integer_table)
        else:
            table, scale = self.integer_table()
        if self.training:
            with torch.no_grad():
                self.weight_integer.copy_(table.to(self.weight_integer.dtype))
                self.weight_scaling_factor.copy_(torch.from_numpy(scale))
        values = table[ids].to(torch.int32)
        exact = IntegerTensor(values, scale, 2 ** (self.weight_bit - 1) - 1)
        if not _tracks_gradients(self.weight):
            return exact
        weight = _straight_through(self.weight, table.to(torch.float32) * float(scale[0]))
        return anchored(exact, nn.functional.embedding(ids, weight, self.padding_idx))


class QuantAct(nn.Module):
    """Requantizes an activation to `activation_bit` bits with a range learned from data.

    forward(x, identity=None): an IntegerTensor x (and identity) is requantized by FixedPointMul (each
    rescaled on its own, added, clamped to [-2**(b-1), 2**(b-1) - 1]); a float x (after a force_dequant
    site) is quantized by Hugging Face's SymmetricQuantFunction (clamped to [-(2**(b-1) - 1), 2**(b-1) - 2]).
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

    def forward(self, x: IntegerTensor | Tensor, identity: IntegerTensor | None = None) -> IntegerTensor:
        if self.observing:
            observed = x.observed_value() if isinstance(x, IntegerTensor) else x
            if identity is not None:
                observed = identity.observed_value() + observed
            self.observe(observed)
        scale = self.scale()
        if isinstance(x, IntegerTensor):
            return requantize(x, scale, self.activation_bit, identity, layer=self.name)
        if identity is not None:
            raise ValueError(f"QuantAct {self.name}: an identity input needs an integer x")
        values = quantize_integers(x, scale, self.activation_bit)
        surrogate = x if _tracks_gradients(x) else None
        return anchored(IntegerTensor(values, scale, 2 ** (self.activation_bit - 1) - 1), surrogate)

    def extra_repr(self) -> str:
        return (
            f"activation_bit={self.activation_bit}, quant_mode={self.quant_mode}, "
            f"Act_min={float(self.x_min):.2f}, Act_max={float(self.x_max):.2f}"
        )


@dataclass(frozen=True)
class _LinearIntegers:
    weight_t: Tensor  # int8 [in, out]
    weight_bound: np.ndarray  # per output channel: sum_k |W[k, n]|
    bias: Tensor | None  # int32/int64 [out]
    bias_bound: int
    weight_scale: Scale
    bias_scale: Scale


class QuantLinear(nn.Module):
    """I-BERT's integer linear layer: 8-bit per-channel weights, 32-bit bias, a per-tensor activation input.

    forward(x, grid=None) -> IntegerTensor: the exact GEMM (int32 accumulators) plus the integer bias, on
    the per-channel grid weight scale x input scale. `grid`: the scale I-BERT passes with x (the
    embeddings' scale in layers after the first); the accumulator is then snapped onto weight scale x
    grid before the bias, as Hugging Face computes `x / prev_act_scaling_factor`. (Named as in Hugging
    Face; the QDQ toolkit's `QuantLinear` lives in models.quantization.qdq.nn.)
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
        self.name = ""  # for messages; set by the backbone
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

    @property
    def _axis(self) -> int | None:
        return 0 if self.per_channel else None

    def scales(self, input_scale: Scale) -> tuple[Scale, Scale]:
        """(weight scale, bias = output scale): per channel, or per tensor broadcast to the channels."""
        weight_scale = self.weight_scale()
        bias_scale = np.broadcast_to(weight_scale * input_scale, (self.out_features,)).astype(_F32)
        return weight_scale, bias_scale

    def integers(self, input_scale: Scale) -> _LinearIntegers:
        """The int8 weight (transposed), the integer bias and their scales; Hugging Face's buffers in training."""
        weight_scale, bias_scale = self.scales(input_scale)
        weight_int = quantize_integers(self.weight, weight_scale, self.weight_bit, axis=self._axis)
        bias_int = None
        if self.bias is not None:
            bias_int = quantize_integers(self.bias, bias_scale, self.bias_bit, axis=0)
        if self.training:
            with torch.no_grad():
                self.weight_integer.copy_(weight_int)
                self.fc_scaling_factor.copy_(torch.from_numpy(np.broadcast_to(weight_scale, (self.out_features,)).copy()))
                if bias_int is not None:
                    self.bias_integer.copy_(bias_int)
        weight_bound = weight_int.detach().abs().to(torch.int64).sum(dim=1).cpu().numpy()
        bias_bound = 0 if bias_int is None else int(bias_int.detach().abs().max())
        weight_t = weight_int.t().to(torch.int8)
        return _LinearIntegers(weight_t, weight_bound, bias_int, bias_bound, weight_scale, bias_scale)

    def forward(self, x: IntegerTensor | Tensor, grid: Scale | None = None) -> IntegerTensor | Tensor:
        if not self.quant_mode:
            assert isinstance(x, Tensor)
            return nn.functional.linear(x, self.weight, self.bias)
        if not isinstance(x, IntegerTensor) or np.size(x.scale) != 1:
            raise ValueError("QuantLinear's input must be an integer tensor quantized per tensor (a QuantAct's output)")
        grid = np.asarray(x.scale if grid is None else grid, _F32).reshape(1)
        if _EvalCache.usable(self):
            key = _version_key(self.weight, self.bias) + (float(grid[0]),)
            ints = self._cache.get(key, lambda: self.integers(grid))
        else:
            ints = self.integers(grid)
        acc = int_matmul(x, ints.weight_t, ints.weight_scale, ints.weight_bound, layer=self.name)
        acc = snap(acc, ints.bias_scale, layer=self.name)
        if ints.bias is not None:
            bound = acc.bound + ints.bias_bound
            if bound > ref.INT32_BOUND and acc.values.dtype == torch.int32:
                acc = replace(acc, values=acc.values.to(torch.int64))
            observed = None
            if acc.observed is not None:
                unsnapped, bias = acc.observed, ints.bias
                observed = lambda: unsnapped() + bias.to(torch.float32) * torch.from_numpy(ints.bias_scale)  # noqa: E731
            acc = replace(acc, values=acc.values + ints.bias.to(acc.values.dtype), bound=bound, observed=observed)
        if x.shadow is None:
            return acc
        weight = _straight_through(self.weight, ints.weight_t.t().to(torch.float32) * _channel_view(ints.weight_scale, self.weight, 0))
        bias = None
        if self.bias is not None and ints.bias is not None:
            bias = _straight_through(self.bias, ints.bias.to(torch.float32) * torch.from_numpy(ints.bias_scale))
        return anchored(acc, nn.functional.linear(x.dequantize(), weight, bias))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, weight_bit={self.weight_bit}, "
            f"per_channel={self.per_channel}, quant_mode={self.quant_mode}"
        )


@lru_cache(maxsize=4096)
def _gelu_attributes(input_scale: tuple[float, ...]) -> dict[str, Any]:
    attributes = ref.gelu_attributes(input_scale)
    return {**attributes, **ref.integer_constant_attributes("IntGELU", attributes)}


class IntGELU(nn.Module):
    """i-GELU (`ibert::int_gelu`); float GELU when force_dequant is gelu or nonlinear."""

    def __init__(self, quant_mode: bool = True, force_dequant: str = "none"):
        super().__init__()
        _check_force_dequant(force_dequant)
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "gelu")
        self.name = ""  # for messages; set by the backbone
        if not self.quant_mode:
            self.activation_fn = nn.GELU()

    def forward(self, x: IntegerTensor) -> IntegerTensor | Tensor:
        if not self.quant_mode:
            return self.activation_fn(x.dequantize())
        try:
            attributes = _gelu_attributes(_scale_key(x.scale))
        except ValueError as e:  # the constants grow as 1 / scale**2: x * (erf + 1) would leave int64
            raise IntegerOverflowError(
                f"{self.name or 'IntGELU'}: {e}. Its input is the FFN's first GEMM (scale = activation scale x "
                f"weight scale, down to {np.min(x.scale):.3g}); the model is refused rather than computed wrongly. Fix: "
                f"check that layer's weights and recalibrate (its input QuantAct's range)"
            ) from None
        values = torch.ops.ibert.int_gelu(
            x.values, attributes["input_scale"], attributes["output_scale"], attributes["b_int"], attributes["c_int"],
            attributes["shift_int"],
        )
        bound = ref.gelu_output_bound(x.bound, x.scale)
        exact = IntegerTensor(values, np.asarray(attributes["output_scale"], _F32), bound)
        return anchored(exact, None if x.shadow is None else nn.functional.gelu(x.shadow))


_SOFTMAX_ARGUMENTS = ("axis", "output_bits", "input_scale", "exp_scale", "output_scale", *ref.INTEGER_CONSTANT_ATTRIBUTES["IntSoftmax"])


@lru_cache(maxsize=4096)
def _softmax_attributes(input_scale: float, exp_scale: float, output_bits: int) -> dict[str, Any]:
    attributes = ref.softmax_attributes(input_scale, exp_scale, output_bits)
    return {**attributes, **ref.integer_constant_attributes("IntSoftmax", attributes)}


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
        self.name = ""  # for messages; set by the backbone
        self.act = QuantAct(ref.EXP_BITS, quant_mode=self.quant_mode)

    def forward(self, x: IntegerTensor, attention_mask: Tensor) -> IntegerTensor:
        """x: the attention scores (integers); attention_mask: additive (0 or the float minimum), whose
        masked positions become the int32 minimum (the reference's clip of -3.4e38 / scale)."""
        if not self.quant_mode:
            raise RuntimeError("IntSoftmax with force_dequant runs in float inside the attention (models.ibert)")
        input_scale = float(np.asarray(x.scale, _F32).reshape(-1)[0])
        scores = torch.where(attention_mask < 0, torch.full((), INT32_MIN, dtype=torch.int32), x.values)
        if self.act.observing:
            self.act.observe(integer_ops.exp_values(scores, input_scale).to(torch.float32))
        attributes = _softmax_attributes(input_scale, float(self.act.scale()[0]), self.output_bit)
        values = torch.ops.ibert.int_softmax(scores, *(attributes[name] for name in _SOFTMAX_ARGUMENTS))
        exact = IntegerTensor(values, np.array([attributes["output_scale"]], _F32), 2**self.output_bit)
        if x.shadow is None:
            return exact
        return anchored(exact, torch.softmax(x.shadow + attention_mask, dim=-1))


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
        self.name = ""  # for messages; set by the backbone
        self.weight = nn.Parameter(torch.zeros(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.register_buffer("shift", torch.zeros(1))
        self.activation = QuantAct(self.output_bit, quant_mode=self.quant_mode)

    @property
    def observing(self) -> bool:
        return self.training or self.calibrating

    @torch.no_grad()
    def update_shift(self, x_int: Tensor) -> None:
        """Hugging Face's `set_shift`: the smallest shift (never lowered) that keeps sum(y^2) below 2**32."""
        y = integer_ops.layernorm_centered(x_int)
        shift = int(self.shift.item())
        y_shifted = torch.bitwise_right_shift(y, shift)
        if (y_shifted * y_shifted).sum(dim=-1).max() < 2**self.max_bit:
            return
        var = (y * y).sum(dim=-1).to(torch.float32)
        needed = torch.log2(torch.sqrt(var / 2**self.max_bit)).ceil().max()
        logger.info("IntLayerNorm shift %d -> %d", shift, max(shift, int(needed)))
        self.shift.copy_(torch.maximum(self.shift, needed))

    def _float(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        y = x - mean
        var = torch.mean(y**2, dim=-1, keepdim=True)
        return y / torch.sqrt(self.eps + var) * self.weight + self.bias

    def forward(self, x: IntegerTensor) -> IntegerTensor | Tensor:
        if not self.quant_mode:
            return self._float(x.dequantize())
        input_scale = float(np.asarray(x.scale, _F32).reshape(-1)[0])
        if self.observing:
            self.update_shift(x.values)
        shift = int(self.shift.item())
        variance = ref.layernorm_variance_bound(x.bound, self.normalized_shape, shift)
        if variance >= 2**62:
            raise _overflow(self.name, "the variance sum", variance, 2**62,
                            "recalibrate (IntLayerNorm's shift) or narrow its input (the 22-bit residual sum)")
        weight, bias = _to_numpy(self.weight), _to_numpy(self.bias)
        attributes = ref.layernorm_attributes(input_scale, shift, weight)
        bias_int = ref.integer_constant_attributes("IntLayerNorm", attributes, weight, bias)["bias_int"]
        values = torch.ops.ibert.int_layernorm(
            x.values,
            self.weight,
            self.bias,
            attributes["axis"],
            attributes["input_scale"],
            attributes["shift"],
            attributes["output_scale"],
            bias_int,
        )
        bound = ref.layernorm_output_bound(weight, bias)
        exact = IntegerTensor(values, np.asarray(attributes["output_scale"], _F32), bound)
        return anchored(exact, None if x.shadow is None else self._float(x.shadow))


# --------------------------------------------------------------------------------------------------
# whole-model helpers


def integer_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every integer-mode module with a range or shift (QuantAct, IntLayerNorm)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantAct | IntLayerNorm):
            yield name, module


#: the modules that hand on integers (their outputs are what the exporter names and validates)
INTEGER_MODULE_TYPES = (QuantEmbedding, QuantAct, QuantLinear, IntGELU, IntSoftmax, IntLayerNorm)


def integer_module_names(model: nn.Module) -> list[str]:
    """Names of the model's integer modules (INTEGER_MODULE_TYPES), in definition order."""
    return [name for name, module in model.named_modules() if isinstance(module, INTEGER_MODULE_TYPES)]


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
