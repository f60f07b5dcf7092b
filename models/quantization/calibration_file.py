"""calibration.json's envelope, shared by both quantization modes: what the file calibrates and for which model.

    {
      "format_version": 1, "mode": "qdq",                   # or "integer"; a file without "mode" is qdq
      "method": "percentile", "percentile": 99.999,         # how it was calibrated (the mode's calibration_info)
      "data": "calibration_data/calibration.txt (shipped)", "num_samples": 512, "num_batches": 32,
      "model": {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, ...,
                "weights_sha256": "..."},                   # which model it belongs to
      "recipe": {"mode": "qdq", "method": "percentile", ...},   # QuantizationRecipe.to_dict(), where known
      ...                                                   # the mode's body
    }

The bodies belong to the modes: qdq's amax per quantizer (`models.quantization.qdq.calibration`), integer's
ranges and shifts (`models.quantization.integer.calibration`). Each mode registers the function that applies
its files (`register_mode`), so this module imports neither; importing `models.quantization` (or any name
from it) registers both. A file made for another model (architecture or shapes) is refused; one made from
other weights of the same shapes (a fine-tuned copy) loads with a warning: its ranges may no longer fit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from models.quantization.errors import CalibrationError
from trt_runtime.contract.files import write_text_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: calibration.json's "mode": the quantization mode the file calibrates (absent: qdq)
CALIBRATION_MODES = ("qdq", "integer")
IDENTITY_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
)
#: attribute of a calibrated model holding how it was calibrated (method, data, ...); see the modes' calibrate
CALIBRATION_INFO_ATTR = "calibration_info"
CALIBRATE_HINT = "calibrate this model: python -m models.quantization.calibrate --model DIR --output FILE"

#: Apply(model, file content, where) -> the content: one per mode (`register_mode`)
Apply = Callable[[Any, dict[str, Any], str], dict[str, Any]]
_APPLY: dict[str, Apply] = {}


def register_mode(mode: str, apply: Apply) -> None:
    """Make `load_calibration` hand files of `mode` to `apply(model, data, where)`."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; add it to CALIBRATION_MODES")
    _APPLY[mode] = apply


def model_identity(model: Any, weights_sha256: str) -> dict[str, Any]:
    """Architecture and shape fields of the model's config, plus the digest of the weights its mode quantizes."""
    identity: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None:
        for name in IDENTITY_FIELDS:
            if hasattr(config, name):
                identity[name] = getattr(config, name)
    identity["weights_sha256"] = weights_sha256
    return identity


def file_header(model: Any, mode: str, identity: dict[str, Any], recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    """The envelope's fields, in file order: format, mode, how the model was calibrated (its calibration
    info), the model's identity and the recipe (`recipe`, else the one the model's info carries)."""
    info = dict(getattr(model, CALIBRATION_INFO_ATTR, None) or {})
    for key in ("format_version", "mode"):
        info.pop(key, None)
    recorded_recipe = info.pop("recipe", None)
    header = {"format_version": FORMAT_VERSION, "mode": mode, "method": info.pop("method", "unknown"), **info}
    header["model"] = identity
    if recipe is not None or recorded_recipe is not None:
        header["recipe"] = dict(recipe if recipe is not None else recorded_recipe)
    return header


def write_calibration(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write a calibration file's content atomically; returns the path."""
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    return path


def calibration_mode(data: dict[str, Any]) -> str:
    """The quantization mode a calibration file's content calibrates ("qdq" when it does not say)."""
    return str(data.get("mode", "qdq"))


def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """A calibration.json's content, of either mode (`calibration_mode`), its envelope checked (the body is
    checked by its mode when applied)."""
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


def load_calibration(model: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Apply a calibration.json to a model of its mode: a qdq file (amax for every quantizer, float sites
    disabled) to a qdq model, an integer one (ranges and shifts) to an integer model.

    Returns the file's content. Raises CalibrationError naming the problem: a file of another mode,
    another model, unknown or missing names, values of the wrong size.
    """
    where = str(path)
    data = read_calibration(path)
    mode = calibration_mode(data)
    if mode not in _APPLY:  # `import models.quantization` registers every mode
        raise CalibrationError(
            f"{where}: no loader for calibration mode {mode!r} is registered; call models.quantization.load_calibration"
        )
    return _APPLY[mode](model, data, where)
