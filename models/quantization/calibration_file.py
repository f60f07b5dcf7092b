"""calibration.json: the amax of every quantizer of a calibrated qdq model, and what it was made from.

    {
      "format_version": 1,
      "method": "percentile", "percentile": 99.99,          # how activations were calibrated (weights: max)
      "data": "calibration_data/calibration.txt", "num_samples": 512, "num_batches": 16,
      "model": {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, ...,
                "weights_sha256": "..."},                   # which model it belongs to
      "quantizers": {"bert.encoder.layer.0.attention.self.query._input_quantizer": 4.21,
                     "bert.encoder.layer.0.attention.self.query._weight_quantizer": [0.12, 0.09, ...], ...},
      "float_quantizers": ["bert.encoder.layer.0.output.dense._input_quantizer", ...]  # disabled (keep_float)
    }

Quantizers are keyed by module name; per-channel amax is a flat list (one value per output channel).
`load_calibration` refuses a file made for another model (architecture or shapes), with unknown or
missing quantizer names, or with amax of the wrong size. A file made from other weights of the same
shape (a fine-tuned copy) loads with a warning: its activation ranges may no longer fit.

I-BERT's integer mode writes the same envelope with `"mode": "integer"` and its ranges and shifts instead
of "quantizers" (models.quantization.integer.calibration); a file without "mode" is qdq.
`load_calibration` applies either kind to a model of that mode, and says so when model and file differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.quantization.qdq.quantized_model import named_quantizers, set_amax, weight_of
from trt_runtime.contract.files import write_text_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: calibration.json's "mode": the quantization mode the file calibrates (absent: qdq)
CALIBRATION_MODES = ("qdq", "integer")
IDENTITY_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
)
#: attribute of a calibrated model holding how it was calibrated (method, data, ...); see calibrate()
CALIBRATION_INFO_ATTR = "calibration_info"
CALIBRATE_HINT = "calibrate this model: python -m models.quantization.calibrate --model DIR --output FILE"


class CalibrationError(ValueError):
    """A calibration file cannot be applied to this model; the message says why and what to do."""


def model_identity(model: nn.Module, weights_sha256: str | None = None) -> dict[str, Any]:
    """Architecture and shape fields of the model's config, plus a digest of its quantized weights
    (default: the weights of its qdq quantizers)."""
    identity: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None:
        for name in IDENTITY_FIELDS:
            if hasattr(config, name):
                identity[name] = getattr(config, name)
    identity["weights_sha256"] = quantized_weights_sha256(model) if weights_sha256 is None else weights_sha256
    return identity


def quantized_weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name in sorted(named_quantizers(model)):
        weight = weight_of(model, name)
        if weight is not None:
            digest.update(name.encode())
            digest.update(weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def calibration_dict(model: nn.Module) -> dict[str, Any]:
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
    info = dict(getattr(model, CALIBRATION_INFO_ATTR, None) or {})
    info.pop("format_version", None)
    return {
        "format_version": FORMAT_VERSION,
        "mode": "qdq",
        **{"method": info.pop("method", "unknown"), **info},
        "model": model_identity(model),
        "quantizers": amax,
        "float_quantizers": disabled,
    }


def save_calibration(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's calibration.json (atomically); returns the path."""
    path = Path(path)
    data = calibration_dict(model)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    return path


def calibration_mode(data: dict[str, Any]) -> str:
    """The quantization mode a calibration file's content calibrates ("qdq" when it does not say)."""
    return str(data.get("mode", "qdq"))


def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """A calibration.json's content, of either mode (`calibration_mode`); the qdq body is checked here."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{path} not found; {CALIBRATE_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path} is not valid JSON ({e}); {CALIBRATE_HINT}") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path} is not a calibration file (not a JSON object); {CALIBRATE_HINT}")
    if data.get("mode", "qdq") not in CALIBRATION_MODES:
        raise CalibrationError(
            f"{path}: unknown calibration mode {data['mode']!r} (expected one of {', '.join(CALIBRATION_MODES)})"
        )
    if calibration_mode(data) == "qdq" and not isinstance(data.get("quantizers"), dict):
        raise CalibrationError(f"{path} is not a calibration file (no 'quantizers' object); {CALIBRATE_HINT}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CalibrationError(
            f"{path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION}); {CALIBRATE_HINT}"
        )
    return data


def check_identity(own: dict[str, Any], recorded: dict[str, Any], where: str, hint: str = CALIBRATE_HINT) -> None:
    """A file made for another architecture or shape is an error; one made from other weights, a warning."""
    mismatched = [
        f"{field} {recorded[field]!r} (this model: {own[field]!r})"
        for field in IDENTITY_FIELDS
        if field in recorded and field in own and recorded[field] != own[field]
    ]
    if mismatched:
        raise CalibrationError(f"{where} was made for another model: {'; '.join(mismatched)}. {hint}")
    if recorded.get("weights_sha256") not in (None, own["weights_sha256"]):
        logger.warning(
            "%s was calibrated on other weights of the same architecture (a fine-tuned copy?); "
            "activation ranges may not fit this model: recalibrate if accuracy drops", where,
        )


#: mode -> the function that applies a file of that mode to a model (qdq's is `load_calibration` itself);
#: each mode's package registers its own (`register_mode`), so this envelope imports none of them
_APPLY: dict[str, Callable[[nn.Module, dict[str, Any], str], dict[str, Any]]] = {}


def register_mode(mode: str, apply: Callable[[nn.Module, dict[str, Any], str], dict[str, Any]]) -> None:
    """Make `load_calibration` hand files of `mode` to `apply(model, data, where)`."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; add it to CALIBRATION_MODES")
    _APPLY[mode] = apply


def load_calibration(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Apply a calibration.json to a qdq model: amax for every quantizer, float sites disabled; or an
    integer one (`"mode": "integer"`) to an integer model (the function its mode registered).

    Returns the file's content. Raises CalibrationError naming the problem: a file of another mode,
    another model, unknown or missing quantizer names, amax of the wrong size.
    """
    where = str(path)
    data = read_calibration(path)
    mode = calibration_mode(data)
    if mode != "qdq":
        if mode not in _APPLY:  # models.quantization registers every mode when it is imported
            raise CalibrationError(f"{where}: no loader for calibration mode {mode!r} is registered")
        return _APPLY[mode](model, data, where)
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
    check_identity(model_identity(model), recorded, where)
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
