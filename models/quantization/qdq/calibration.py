"""qdq's calibration.json: the amax of every quantizer of a calibrated qdq model (the envelope:
models.quantization.calibration_file).

    {
      "format_version": 1, "mode": "qdq",
      "method": "percentile", "percentile": 99.999, "weights": "max per output channel",
      "data": "calibration_data/calibration.txt (shipped)", "num_samples": 512, "num_batches": 32,
      "model": {"model_type": "bert", "hidden_size": 384, ..., "weights_sha256": "..."},
      "recipe": {"mode": "qdq", "method": "percentile", "percentile": 99.999, "keep_float": [...], ...},
      "quantizers": {"bert.encoder.layer.0.attention.self.query._input_quantizer": 4.21,
                     "bert.encoder.layer.0.attention.self.query._weight_quantizer": [0.12, 0.09, ...], ...},
      "float_quantizers": ["bert.encoder.layer.0.output.dense._input_quantizer", ...],  # disabled (keep_float)
      "smoothing": {"bert.encoder.layer.0.output.dense": [1.3, 0.2, ...], ...}  # only when smoothed (recipe
    }                                                  # smoothing): each linear's scales s, applied on load

Quantizers are keyed by module name; per-channel amax is a flat list (one value per output channel).
Applying a file refuses one made for another model (architecture or shapes), with unknown or missing
quantizer names, or with amax of the wrong size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.quantization.calibration_file import (
    CALIBRATE_HINT,
    CALIBRATION_INFO_ATTR,
    check_identity,
    file_header,
    model_identity,
    register_mode,
    write_calibration,
)
from models.quantization.errors import CalibrationError
from models.quantization.qdq.quantized_model import named_quantizers, set_amax, weight_of
from models.quantization.smoothing import apply_smoothing, smoothing_state


def quantized_weights_sha256(model: nn.Module) -> str:
    """Digest of the weights the qdq quantizers quantize, by quantizer name."""
    digest = hashlib.sha256()
    for name in sorted(named_quantizers(model)):
        weight = weight_of(model, name)
        if weight is not None:
            digest.update(name.encode())
            digest.update(weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def calibration_dict(model: nn.Module, recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """calibration.json's content for a calibrated qdq model (`recipe`: QuantizationRecipe.to_dict())."""
    quantizers = named_quantizers(model)
    amax: dict[str, float | list[float]] = {}
    disabled: list[str] = []
    for name, quantizer in quantizers.items():
        if not quantizer.is_enabled:
            disabled.append(name)
            continue
        if quantizer.amax is None:
            raise CalibrationError(f"quantizer {name} has no amax; calibrate the model before saving its calibration")
        values = quantizer.amax.detach().float().cpu()
        amax[name] = values.item() if quantizer.axis is None else values.flatten().tolist()
    header = file_header(model, "qdq", model_identity(model, quantized_weights_sha256(model)), recipe)
    smoothing = smoothing_state(model)
    return {**header, "quantizers": amax, "float_quantizers": disabled, **({"smoothing": smoothing} if smoothing else {})}


def save_calibration(
    model: nn.Module, path: str | os.PathLike, *, recipe: Mapping[str, Any] | None = None
) -> Path:
    """Write the qdq model's calibration.json (atomically); returns the path."""
    return write_calibration(path, calibration_dict(model, recipe))


def apply_qdq_calibration(model: nn.Module, data: dict[str, Any], where: str) -> dict[str, Any]:
    """A qdq file's content applied to a qdq model: amax for every quantizer, float sites disabled."""
    if not isinstance(data.get("quantizers"), dict):
        raise CalibrationError(f"{where} is not a calibration file (no 'quantizers' object); {CALIBRATE_HINT}")
    quantizers = named_quantizers(model)
    if not quantizers:
        integer = getattr(model, "quantization", None) == "integer"
        raise CalibrationError(
            f"the model has no quantizers, so {where} cannot apply; load it with quantization='qdq'"
            + (f" ({where} is a qdq calibration file; this model is in integer mode, which takes an integer "
               "calibration file: calibrate_integer, then save_integer_calibration)" if integer else "")
        )
    recorded = data.get("model") or {}
    float_quantizers = data.get("float_quantizers") or []
    if not isinstance(recorded, dict) or not isinstance(float_quantizers, list):
        raise CalibrationError(
            f"{where} is malformed ('model' must be an object, 'float_quantizers' a list); {CALIBRATE_HINT}"
        )
    _apply_recorded_smoothing(model, data.get("smoothing"), where)  # the recorded weights are the smoothed ones
    check_identity(model_identity(model, quantized_weights_sha256(model)), recorded, where)
    amax: dict[str, Any] = data["quantizers"]
    disabled = {str(name) for name in float_quantizers}
    unknown = sorted((set(amax) | disabled) - set(quantizers))
    missing = sorted(set(quantizers) - set(amax) - disabled)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"quantizers this model does not have: {', '.join(unknown[:10])}")
        if missing:
            parts.append(f"no amax for this model's quantizers: {', '.join(missing[:10])}")
        raise CalibrationError(f"{where} does not match the model ({'; '.join(parts)}). {CALIBRATE_HINT}")
    for name, value in amax.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, list)):
            raise CalibrationError(f"{where}: amax of {name} must be a number or a list of numbers, got {value!r}")
        try:
            tensor = torch.tensor(value, dtype=torch.float32)
        except (ValueError, TypeError) as e:  # a list holding strings, nulls, nested lists
            raise CalibrationError(
                f"{where}: amax of {name} must be a number or a flat list of numbers ({e}); {CALIBRATE_HINT}"
            ) from None
        try:
            set_amax(model, name, quantizers[name], tensor, where)
        except ValueError as e:
            raise CalibrationError(str(e)) from None
    for name, quantizer in quantizers.items():
        if name in disabled:
            quantizer.disable()
        else:
            quantizer.enable()
            quantizer.disable_calib()
            quantizer.enable_quant()
    info = {k: v for k, v in data.items() if k not in ("quantizers", "float_quantizers", "model")}
    setattr(model, CALIBRATION_INFO_ATTR, info)
    return data


def _apply_recorded_smoothing(model: nn.Module, recorded: Any, where: str) -> None:
    if recorded is None:
        return
    if not isinstance(recorded, dict) or not all(isinstance(v, list) for v in recorded.values()):
        raise CalibrationError(f"{where}: 'smoothing' must map linear layer names to lists of scales; {CALIBRATE_HINT}")
    scales = {name: torch.tensor(values, dtype=torch.float32) for name, values in recorded.items()}
    # a checkpoint saved smoothed (QAT after SmoothQuant) carries these very scales already: nothing to apply
    carried = smoothing_state(model)
    for name in list(scales):
        if name in carried and torch.equal(torch.tensor(carried[name], dtype=torch.float32), scales[name]):
            del scales[name]
    try:
        apply_smoothing(model, scales)
    except (ValueError, TypeError) as e:
        raise CalibrationError(f"{where}: {e}; load the file into a freshly loaded model of its checkpoint") from None


register_mode("qdq", apply_qdq_calibration)
