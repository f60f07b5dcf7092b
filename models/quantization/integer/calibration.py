"""Calibrate I-BERT's integer mode: activation ranges (QuantAct x_min / x_max) and IntLayerNorm shifts.

For checkpoints that carry none (float RoBERTa, float I-BERT, BERT such as all-MiniLM-L6-v2):

    model = models.load(ckpt, quantization="integer")
    calibrate_integer(model, calibration_batches(load_texts(), ckpt))   # method="minmax"

The batches run in eval numerics (no dropout) through the integer model itself, each QuantAct
observing its input before it quantizes, exactly as Hugging Face's I-BERT does in training mode, so
every range is measured on the already-quantized activations that feed it:

- "minmax" (default): running minimum and maximum over all batches (I-BERT's `act_range_momentum = -1`);
- "ema" (Hugging Face's training-mode rule): the first batch sets the range, later batches move it by an
  exponential moving average with momentum 0.95. It is meant for quantization-aware fine-tuning; for
  post-training calibration min/max keeps the outliers BERT-family models rely on (all-MiniLM-L6-v2,
  mean sentence cosine to float: 0.967 with minmax, 0.960 with ema at I-BERT's 8 bits; 0.983 both with
  the default 16-bit sites, models.ibert.WIDE_ACTIVATION_SITES).

IntLayerNorm's `shift` starts at 0 and is raised, never lowered, until the squared deviations of
every row sum below 2**32 (Hugging Face's overflow fallback).

The result is saved as calibration.json (`save_integer_calibration`, the qdq file's envelope with
`"mode": "integer"`) and applied to a freshly loaded model by `load_integer_calibration`, or by
`models.load(ckpt, quantization="integer", calibration=path)` (models.quantization.load_calibration
dispatches on the mode):

    {
      "format_version": 1, "mode": "integer",
      "method": "ibert-minmax", "data": "calibration_data/calibration.txt (shipped)", "num_samples": 512,
      "num_batches": 32, "model": {"model_type": "bert", "hidden_size": 384, ..., "weights_sha256": "..."},
      "recipe": {"mode": "integer", "method": "minmax", ...},     # QuantizationRecipe.to_dict(), where known
      "force_dequant": "none", "wide_activations": ["ffn-output-input", "hidden-states"],
      "activations": {"bert.embeddings.embeddings_act1": {"bits": 16, "x_min": -9.71, "x_max": 11.2}, ...},
      "layernorm_shifts": {"bert.embeddings.LayerNorm": 2, ...}
    }

Every QuantAct and IntLayerNorm of the model is listed by module name. A file for another architecture or
shapes, another force_dequant or wide_activations, other module names or bit widths, or a qdq file, is a
CalibrationError that says what to do; one made from other weights of the same shapes loads with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from models.quantization.calibration_file import (
    CALIBRATION_INFO_ATTR,
    calibration_mode,
    check_identity,
    file_header,
    model_identity,
    read_calibration,
    register_mode,
    write_calibration,
)
from models.quantization.errors import CalibrationError
from models.quantization.integer.modules import (
    IntLayerNorm,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
    integer_modules,
    set_calibrating,
    symmetric_scale,
    uncalibrated,
)
from models.quantization.recipe import CALIBRATION_METHODS

logger = logging.getLogger(__name__)

METHODS = {"ema": 0.95, "minmax": -1.0}  # method (the recipe's CALIBRATION_METHODS) -> QuantAct.act_range_momentum
#: the recipe's default: measured better for post-training calibration (all-MiniLM-L6-v2, docs/integer.md)
DEFAULT_METHOD = CALIBRATION_METHODS["integer"][0]
INTEGER_CALIBRATE_HINT = (
    "calibrate it for integer mode: python -m exporter --model DIR --quantization integer --output OUT writes "
    "OUT/calibration.json, or calibrate_integer(model, batches) then save_integer_calibration(model, path)"
)


def reset_integer_state(model: nn.Module) -> None:
    """Forget every range and shift (back to Hugging Face's initial values: x_min = -1e-5, x_max = 1e-5, shift 0)."""
    with torch.no_grad():
        for _, module in integer_modules(model):
            if isinstance(module, QuantAct):
                module.x_min.fill_(-1e-5)
                module.x_max.fill_(1e-5)
                module.act_scaling_factor.zero_()
            elif isinstance(module, IntLayerNorm):
                module.shift.zero_()


def integer_state(model: nn.Module) -> dict[str, dict[str, float]]:
    """{module name: {"x_min", "x_max"} or {"shift"}}: what calibration produced, for reports and files."""
    state: dict[str, dict[str, float]] = {}
    for name, module in integer_modules(model):
        if isinstance(module, QuantAct):
            state[name] = {"x_min": float(module.x_min), "x_max": float(module.x_max)}
        elif isinstance(module, IntLayerNorm):
            state[name] = {"shift": float(module.shift)}
    return state


def _encoder_of(model: nn.Module) -> nn.Module:
    """The backbone of a task model (so multiple-choice and LM heads need no special inputs)."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def calibrate_integer(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    method: str = DEFAULT_METHOD,
    *,
    reset: bool = True,
    data: str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Set the activation ranges and LayerNorm shifts of an integer-mode model from `batches`; returns it.

    batches: dicts with input_ids, attention_mask and (optionally) token_type_ids, [batch, sequence].
    method: "minmax" (running min / max) or "ema" (Hugging Face's moving average).
    reset: start from no ranges (True) or refine the ranges the model has.
    data: a description of the batches' source, recorded with the calibration info.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    acts = [m for _, m in integer_modules(model) if isinstance(m, QuantAct)]
    if not acts:
        raise ValueError("the model has no I-BERT integer modules: load it with quantization='integer' to calibrate it")
    if reset:
        reset_integer_state(model)
    encoder = _encoder_of(model)
    momenta = {act: act.act_range_momentum for act in acts}
    was_training = model.training
    num_batches = num_samples = 0
    try:
        for act in acts:
            act.act_range_momentum = METHODS[method]
        set_calibrating(model, True)
        model.eval()
        with torch.no_grad():
            for batch in tqdm(batches, desc=f"integer calibration ({method})", unit="batch", disable=not progress):
                ids = batch["input_ids"]
                mask = batch.get("attention_mask")
                types = batch.get("token_type_ids")
                encoder(
                    ids,
                    torch.ones_like(ids) if mask is None else mask,
                    torch.zeros_like(ids) if types is None else types,
                )
                num_batches += 1
                num_samples += int(ids.shape[0])
    finally:
        set_calibrating(model, False)
        for act, momentum in momenta.items():
            act.act_range_momentum = momentum
        model.train(was_training)
    if num_batches == 0:
        raise ValueError("no calibration batches: pass at least one batch of model inputs")
    missing = uncalibrated(model)
    if missing:
        raise RuntimeError(f"calibration left {len(missing)} QuantActs without a range: {', '.join(missing[:5])}")
    info: dict[str, Any] = {
        "method": f"ibert-{method}",
        "data": data,
        "num_samples": num_samples,
        "num_batches": num_batches,
    }
    setattr(model, CALIBRATION_INFO_ATTR, info)
    logger.info("integer calibration (%s): %d QuantActs on %d samples", method, len(acts), num_samples)
    return model


# --------------------------------------------------------------------------------------------------
# calibration.json


def integer_weights_sha256(model: nn.Module) -> str:
    """Digest of the weights the integer modules quantize (QuantLinear, QuantEmbedding), by module name."""
    digest = hashlib.sha256()
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        if isinstance(module, QuantLinear | QuantEmbedding):
            digest.update(name.encode())
            digest.update(module.weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _integer_settings_of(model: nn.Module) -> tuple[str, list[str]]:
    config = getattr(model, "config", None)
    return str(getattr(config, "force_dequant", "none")), list(getattr(config, "wide_activations", ()))


def integer_calibration_dict(model: nn.Module, recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """calibration.json's content for a calibrated integer-mode model (see the module docstring; `recipe`:
    QuantizationRecipe.to_dict())."""
    modules = list(integer_modules(model))
    if not modules:
        raise CalibrationError("the model has no I-BERT integer modules: load it with quantization='integer'")
    missing = uncalibrated(model)
    if missing:
        raise CalibrationError(
            f"{len(missing)} QuantActs have no range ({', '.join(missing[:5])}): calibrate the model "
            f"(calibrate_integer) before saving its calibration"
        )
    force_dequant, wide_activations = _integer_settings_of(model)
    return {
        **file_header(model, "integer", model_identity(model, integer_weights_sha256(model)), recipe),
        "force_dequant": force_dequant,
        "wide_activations": wide_activations,
        "activations": {
            name: {"bits": module.activation_bit, "x_min": float(module.x_min), "x_max": float(module.x_max)}
            for name, module in modules
            if isinstance(module, QuantAct)
        },
        "layernorm_shifts": {
            name: int(module.shift.item()) for name, module in modules if isinstance(module, IntLayerNorm)
        },
    }


def save_integer_calibration(
    model: nn.Module, path: str | os.PathLike, *, recipe: Mapping[str, Any] | None = None
) -> Path:
    """Write a calibrated integer-mode model's calibration.json (atomically); returns the path."""
    return write_calibration(path, integer_calibration_dict(model, recipe))


def _read_integer_calibration(path: str | os.PathLike) -> dict[str, Any]:
    data = read_calibration(path)
    if calibration_mode(data) != "integer":
        raise CalibrationError(
            f"{path} is a qdq calibration file (amax per quantizer), not an integer one (I-BERT ranges and "
            f"shifts): load the model with quantization='qdq' to use it, or {INTEGER_CALIBRATE_HINT}"
        )
    return data


def integer_settings(
    path: str | os.PathLike, force_dequant: str | None, wide_activations: Iterable[str] | None
) -> tuple[str, tuple[str, ...]]:
    """(force_dequant, wide_activations) for a model that will take the integer calibration file `path`:
    the arguments where given, else the file's (what models.load does with calibration=)."""
    data = _read_integer_calibration(path)
    file_force_dequant = data.get("force_dequant", "none")
    file_wide = data.get("wide_activations", [])
    if not isinstance(file_force_dequant, str) or not isinstance(file_wide, list):
        raise CalibrationError(
            f"{path} is malformed ('force_dequant' must be a string, 'wide_activations' a list); "
            f"{INTEGER_CALIBRATE_HINT}"
        )
    return (
        file_force_dequant if force_dequant is None else force_dequant,
        tuple(str(site) for site in file_wide) if wide_activations is None else tuple(wide_activations),
    )


def load_integer_calibration(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Apply an integer calibration.json to an integer-mode model (ranges, bit widths checked, shifts).

    Returns the file's content; raises CalibrationError naming the problem and the fix.
    """
    return apply_integer_calibration(model, _read_integer_calibration(path), str(path))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def apply_integer_calibration(model: nn.Module, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`load_integer_calibration` on a file's content (`where` names it in messages)."""
    modules = dict(integer_modules(model))
    if not modules:
        raise CalibrationError(
            f"{where} is an integer calibration file (I-BERT ranges and shifts), but the model has no integer "
            f"modules: load it with quantization='integer' (a qdq model takes a qdq calibration file)"
        )
    recorded = data.get("model") or {}
    activations = data.get("activations")
    shifts = data.get("layernorm_shifts")
    if not isinstance(recorded, dict) or not isinstance(activations, dict) or not isinstance(shifts, dict):
        raise CalibrationError(
            f"{where} is malformed ('model', 'activations' and 'layernorm_shifts' must be objects); "
            f"{INTEGER_CALIBRATE_HINT}"
        )
    check_identity(model_identity(model, integer_weights_sha256(model)), recorded, where, INTEGER_CALIBRATE_HINT)
    force_dequant, wide_activations = _integer_settings_of(model)
    for field, own in (("force_dequant", force_dequant), ("wide_activations", wide_activations)):
        value = data.get(field, [] if field == "wide_activations" else "none")
        if value != own:
            raise CalibrationError(
                f"{where} was calibrated with {field}={value!r}, this model has {field}={own!r}: load the model "
                f"with {field}={value!r} (models.load(..., calibration=PATH) takes it from the file when "
                f"{field} is not given), or recalibrate"
            )
    acts = {name: m for name, m in modules.items() if isinstance(m, QuantAct)}
    norms = {name: m for name, m in modules.items() if isinstance(m, IntLayerNorm)}
    problems = []
    for kind, own_names, file_names in (("QuantActs", acts, activations), ("IntLayerNorms", norms, shifts)):
        unknown, missing = sorted(set(file_names) - set(own_names)), sorted(set(own_names) - set(file_names))
        if unknown:
            problems.append(f"{kind} this model does not have: {', '.join(unknown[:10])}")
        if missing:
            problems.append(f"nothing for this model's {kind}: {', '.join(missing[:10])}")
    if problems:
        raise CalibrationError(f"{where} does not match the model ({'; '.join(problems)}). {INTEGER_CALIBRATE_HINT}")
    for name, entry in activations.items():
        if not (isinstance(entry, dict) and all(_number(entry.get(k)) for k in ("bits", "x_min", "x_max"))):
            raise CalibrationError(f"{where}: {name} must be {{'bits', 'x_min', 'x_max'}} numbers, got {entry!r}")
        if entry["x_min"] > entry["x_max"]:
            raise CalibrationError(f"{where}: {name} has x_min {entry['x_min']} > x_max {entry['x_max']}")
        if entry["bits"] != acts[name].activation_bit:
            raise CalibrationError(
                f"{where}: {name} was calibrated at {entry['bits']} bits, this model has {acts[name].activation_bit}"
                f" (a model built differently); {INTEGER_CALIBRATE_HINT}"
            )
    for name, shift in shifts.items():
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < 32:
            raise CalibrationError(f"{where}: the shift of {name} must be an integer in [0, 32), got {shift!r}")
    with torch.no_grad():
        for name, entry in activations.items():
            act = acts[name]
            act.x_min.fill_(entry["x_min"])
            act.x_max.fill_(entry["x_max"])
            if act.is_calibrated:
                act.act_scaling_factor.copy_(
                    torch.from_numpy(symmetric_scale(act.activation_bit, act.x_min.cpu().numpy(), act.x_max.cpu().numpy()))
                )
            else:
                act.act_scaling_factor.zero_()
        for name, shift in shifts.items():
            norms[name].shift.fill_(shift)
    body = ("model", "force_dequant", "wide_activations", "activations", "layernorm_shifts")
    info = {k: v for k, v in data.items() if k not in body}
    setattr(model, CALIBRATION_INFO_ATTR, info)
    return data


register_mode("integer", apply_integer_calibration)
