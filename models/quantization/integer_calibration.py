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
  post-training calibration min/max keeps the outliers BERT-family models rely on (all-MiniLM-L6-v2:
  mean sentence cosine to float 0.967 with minmax, 0.962 with ema).

IntLayerNorm's `shift` starts at 0 and is raised, never lowered, until the squared deviations of
every row sum below 2**32 (Hugging Face's overflow fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from models.quantization.calibration_file import CALIBRATION_INFO_ATTR
from models.quantization.integer import IntLayerNorm, QuantAct, integer_modules, set_calibrating, uncalibrated

logger = logging.getLogger(__name__)

METHODS = {"ema": 0.95, "minmax": -1.0}  # method -> QuantAct.act_range_momentum
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    method: str = "minmax",
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
