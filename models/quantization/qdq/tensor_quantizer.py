"""`TensorQuantizer`: fake quantization of one tensor, with calibration (pytorch-quantization semantics).

    q = TensorQuantizer(QUANT_DESC_8BIT_PER_TENSOR)
    q.disable_quant(); q.enable_calib(); q(x) ...     # collect statistics (output = input)
    q.load_calib_amax("percentile", percentile=99.99)  # amax from the calibrator
    q.disable_calib(); q.enable_quant(); y = q(x)      # y = dequantize(quantize(x))

Quantization is symmetric: scale = amax / 127 (amax / 255 unsigned), zero point 0, integers clamped
to [-128, 127] ([-127, 127] narrow range, [0, 255] unsigned), rounding half to even (as ONNX
QuantizeLinear). It runs through `torch.fake_quantize_per_tensor_affine` /
`torch.fake_quantize_per_channel_affine`, so the gradient is the straight-through estimator and both
torch ONNX exporters (TorchScript and dynamo) emit QuantizeLinear/DequantizeLinear pairs. ONNX has no
narrow range: a narrow-range quantizer clamps its input to [-amax, amax] first (a Clip that the
exporter folds into constant weights), which is exactly the [-127, 127] TensorRT uses for weights.

amax lives in the buffer `_amax` (a Parameter with learn_amax=True): absent from `state_dict` until
calibrated or loaded, then saved and loaded with the model, under the names QDQBERT checkpoints use
(`...query._input_quantizer._amax`, per-channel `..._weight_quantizer._amax` of shape [out, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.quantization.errors import NotCalibratedError
from models.quantization.qdq.calibrators import HISTOGRAM_METHODS, HistogramCalibrator, MaxCalibrator
from models.quantization.qdq.descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor

# Smallest amax used for the scale: an all-zero tensor (amax 0) quantizes to zeros, not NaN.
MIN_AMAX = 2.0**-24

NOT_CALIBRATED_HINT = (
    "run models.quantization.calibrate(model, batches) or load a calibration.json "
    "(models.load(..., calibration=PATH) or models.quantization.load_calibration(model, PATH))"
)


Calibrator = MaxCalibrator | HistogramCalibrator


class TensorQuantizer(nn.Module):
    _amax: torch.Tensor | None  # a buffer, or an nn.Parameter with learn_amax

    def __init__(
        self,
        quant_desc: QuantDescriptor = QUANT_DESC_8BIT_PER_TENSOR,
        disabled: bool = False,
        if_quant: bool = True,
        if_calib: bool = False,
    ):
        super().__init__()
        self.quant_desc = quant_desc
        self._num_bits = quant_desc.num_bits
        self._axis = quant_desc.channel_axis
        self._unsigned = quant_desc.unsigned
        self._narrow_range = quant_desc.narrow_range
        self._learn_amax = quant_desc.learn_amax
        self._disabled = disabled
        self._if_quant = if_quant
        self._if_calib = if_calib
        self.name: str | None = None  # the module name in the model, set by the model-level helpers for messages
        self._calibrator: Calibrator = self.make_calibrator(quant_desc.calib_method)
        if self._learn_amax:
            self.register_parameter("_amax", None)
        else:
            self.register_buffer("_amax", None)
        # SmoothQuant's per-channel divisor of the input (models.quantization.smoothing); None: none
        self.register_buffer("_smoothing_scale", None)
        if quant_desc.amax is not None:
            self.amax = quant_desc.amax

    # -- configuration ---------------------------------------------------------------------------

    @property
    def num_bits(self) -> int:
        return self._num_bits

    @property
    def axis(self) -> int | None:
        return self._axis

    @property
    def unsigned(self) -> bool:
        return self._unsigned

    @property
    def narrow_range(self) -> bool:
        return self._narrow_range

    @property
    def learn_amax(self) -> bool:
        return self._learn_amax

    @property
    def max_bound(self) -> int:
        return (1 << (self._num_bits - 1 + int(self._unsigned))) - 1

    @property
    def min_bound(self) -> int:
        if self._unsigned:
            return 0
        return -self.max_bound if self._narrow_range else -self.max_bound - 1

    # -- modes (pytorch-quantization's switches) -----------------------------------------------------

    def enable(self) -> None:
        self._disabled = False

    def disable(self) -> None:
        """Pass tensors through untouched: no calibration, no quantization (a float site)."""
        self._disabled = True

    def enable_quant(self) -> None:
        self._if_quant = True

    def disable_quant(self) -> None:
        self._if_quant = False

    def enable_calib(self) -> None:
        self._if_calib = True

    def disable_calib(self) -> None:
        self._if_calib = False

    @property
    def is_enabled(self) -> bool:
        return not self._disabled

    @property
    def is_quant_enabled(self) -> bool:
        return not self._disabled and self._if_quant

    @property
    def is_calib_enabled(self) -> bool:
        return not self._disabled and self._if_calib

    # -- amax --------------------------------------------------------------------------------------

    @property
    def amax(self) -> torch.Tensor | None:
        return self._amax

    @amax.setter
    def amax(self, value: float | Sequence[float] | torch.Tensor) -> None:
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
        if tensor.numel() == 0:
            raise ValueError(f"{self._label()}: amax is empty")
        if not torch.isfinite(tensor).all() or (tensor < 0).any():
            raise ValueError(f"{self._label()}: amax must be finite and >= 0, got {tensor.flatten()[:8].tolist()}")
        if self._axis is None and tensor.numel() != 1:
            raise ValueError(
                f"{self._label()} quantizes per tensor and needs one amax, got {tensor.numel()} values "
                f"(shape {tuple(tensor.shape)})"
            )
        if self._amax is not None:
            tensor = tensor.to(self._amax.device)
        if self._learn_amax:
            self._amax = nn.Parameter(tensor)
        else:
            self._amax = tensor

    def reset_amax(self) -> None:
        self._amax = None

    @property
    def scale(self) -> torch.Tensor | None:
        """amax / max_bound: the ONNX QuantizeLinear scale (per tensor, or one per channel)."""
        if self._amax is None:
            return None
        return self._amax.detach().clamp_min(MIN_AMAX) / self.max_bound

    # -- calibration -------------------------------------------------------------------------------

    def make_calibrator(self, calib_method: str) -> Calibrator:
        if calib_method == "max":
            return MaxCalibrator(self._num_bits, self._axis, self._unsigned)
        if calib_method == "histogram":
            return HistogramCalibrator(self._num_bits, self._axis, self._unsigned)
        raise ValueError(f"calib_method must be 'max' or 'histogram', got {calib_method!r}")

    @property
    def calibrator(self) -> Calibrator:
        return self._calibrator

    def set_calibrator(self, calib_method: str) -> None:
        """Replace the calibrator ("max" or "histogram"), dropping what the old one collected."""
        self._calibrator = self.make_calibrator(calib_method)

    def load_calib_amax(
        self, method: str | None = None, *, percentile: float = 99.99, stride: int = 1, start_bin: int = 128,
        strict: bool = True,
    ) -> None:
        """Set amax from the calibrator: max, or method "percentile" / "mse" / "entropy" for a histogram."""
        calibrator = self._calibrator
        if isinstance(calibrator, MaxCalibrator):
            if method not in (None, "max"):
                raise ValueError(
                    f"{self._label()} has a max calibrator, which gives amax by 'max' only, not {method!r}; "
                    f"call set_calibrator('histogram') before collecting"
                )
            amax = calibrator.compute_amax()
        else:
            if method not in HISTOGRAM_METHODS:
                raise ValueError(
                    f"{self._label()} has a histogram calibrator: method must be one of "
                    f"{', '.join(HISTOGRAM_METHODS)}, got {method!r}"
                )
            amax = calibrator.compute_amax(method, percentile=percentile, stride=stride, start_bin=start_bin)
        if amax is None:
            if strict:
                raise NotCalibratedError(
                    f"{self._label()}: the calibrator has seen no tensor; run batches through the model in "
                    f"calibration mode first (models.quantization.calibrate does)"
                )
            return
        self.amax = amax

    # -- forward -----------------------------------------------------------------------------------

    @property
    def smoothing_scale(self) -> torch.Tensor | None:
        """Per-channel (last axis) divisor applied before quantization; the layer's weight carries its product."""
        return self._smoothing_scale

    @smoothing_scale.setter
    def smoothing_scale(self, value: torch.Tensor) -> None:
        self._smoothing_scale = value.detach().to(torch.float32).reshape(-1).clone()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._smoothing_scale is not None:  # part of the function even for a float (disabled) site
            inputs = inputs / self._smoothing_scale.to(inputs.dtype)
        if self._disabled:
            return inputs
        if self._if_calib:
            self._calibrator.collect(inputs)
        if not self._if_quant:
            return inputs
        return self._fake_quantize(inputs)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        amax = self._amax
        if amax is None:
            raise NotCalibratedError(f"{self._label()} is in quant mode but not calibrated: {NOT_CALIBRATED_HINT}")
        if self._axis is not None:
            channels = x.shape[self._axis]
            if amax.numel() != channels:
                raise ValueError(
                    f"{self._label()} has {amax.numel()} per-channel amax values but the tensor has {channels} "
                    f"channels on axis {self._axis} (shape {tuple(x.shape)}); recalibrate this model"
                )
            bound_shape = [1] * x.dim()
            bound_shape[self._axis] = channels
            amax = amax.reshape(bound_shape)
        if self._narrow_range and not self._unsigned or self._learn_amax:
            # Clamp to [-amax, amax]: exactly [-127, 127] after rounding (narrow range); with learn_amax
            # the clamp also gives amax its gradient (PACT), as pytorch-quantization's learnable Clip does.
            x = torch.clamp(x, -amax.to(x.dtype), amax.to(x.dtype))
        scale = amax.detach().reshape(-1).float().clamp_min(MIN_AMAX) / self.max_bound
        dtype = x.dtype
        if dtype not in (torch.float32, torch.float64):
            x = x.float()
        if self._axis is None:
            zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
            out = torch.fake_quantize_per_tensor_affine(
                x, scale.reshape(()), zero_point, self.min_bound_for_onnx, self.max_bound
            )
        else:
            zero_point = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
            out = torch.fake_quantize_per_channel_affine(
                x, scale, zero_point, self._axis % x.dim(), self.min_bound_for_onnx, self.max_bound
            )
        return out.to(dtype)

    @property
    def min_bound_for_onnx(self) -> int:
        """The clamp given to the torch op: ONNX int8 has no narrow range, so narrow is done by the input clamp."""
        return 0 if self._unsigned else -self.max_bound - 1

    # -- state_dict: `_amax` exists only once set, so accept it from a checkpoint into an unset quantizer --

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "_amax"
        if key in state_dict:
            value = state_dict[key]
            if self._amax is None or self._amax.shape != value.shape:
                self.amax = value
        if prefix + "_smoothing_scale" in state_dict and self._smoothing_scale is None:
            self.smoothing_scale = state_dict[prefix + "_smoothing_scale"]  # a smoothed checkpoint's weights carry s
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- description -------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"quantizer {self.name}" if self.name else "TensorQuantizer"

    def extra_repr(self) -> str:
        if self._disabled:
            return "disabled"
        kind = "per-tensor" if self._axis is None else f"per-channel(axis={self._axis})"
        parts = [f"{self._num_bits}bit", kind]
        if self._unsigned:
            parts.append("unsigned")
        if self._narrow_range:
            parts.append("narrow")
        if self._amax is None:
            parts.append("amax=None")
        elif self._amax.numel() == 1:
            parts.append(f"amax={self._amax.item():.6g}")
        else:
            parts.append(f"amax=[{self._amax.min().item():.4g}, {self._amax.max().item():.4g}]({self._amax.numel()})")
        parts.append("fake" if self._if_quant else "no-quant")
        if self._if_calib:
            parts.append(f"calib={type(self._calibrator).__name__}")
        if self._learn_amax:
            parts.append("learn_amax")
        return " ".join(parts)
