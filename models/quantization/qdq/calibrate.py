"""Post-training calibration of a qdq model (the command line is `python -m models.quantization.calibrate`).

    model = models.load(ckpt, quantization="qdq")
    calibrate(model, batches, method="percentile", percentile=99.999)  # amax for every quantizer
    save_calibration(model, "calibration.json")

    python -m models.quantization.calibrate --model DIR --output FILE [--calibration-method M] [...]

The defaults (method percentile, percentile 99.999) are the recipe's (models.quantization.recipe).

Weights are calibrated per output channel with max (TensorRT's weight scheme). Activations run the
batches in float (quantization off) while each enabled quantizer's calibrator collects: the running
max for "max", a histogram for "percentile", "mse" and "entropy". Quantizers disabled with
`keep_float` stay float and are not calibrated. The steps are public, as in pytorch-quantization's
recipe, so that one histogram pass serves several methods:

    collect_stats(model, batches, "histogram")
    for method in ("percentile", "mse", "entropy"):
        compute_amax(model, method); evaluate(model)
    finish_calibration(model)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from models.data import MODEL_INPUTS
from models.quantization.calibration_file import CALIBRATION_INFO_ATTR
from models.quantization.qdq.quantized_model import named_quantizers, weight_of
from models.quantization.qdq.tensor_quantizer import TensorQuantizer
from models.quantization.recipe import CALIBRATION_METHODS, DEFAULT_PERCENTILE

logger = logging.getLogger(__name__)

METHODS = CALIBRATION_METHODS["qdq"]
DEFAULT_METHOD = METHODS[0]


def calibrate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    *,
    data: str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Set amax of every enabled quantizer from `batches` (dicts of model inputs); returns the model.

    method: "max", or "percentile" / "mse" / "entropy" from a 2048-bin histogram of each activation.
    data: a description of the batches' source, recorded in the calibration file.
    Equivalent to collect_stats, then compute_amax, then finish_calibration.
    """
    check_method(method, percentile)
    try:
        collect_stats(model, batches, "max" if method == "max" else "histogram", progress=progress)
        compute_amax(model, method, percentile, progress=progress)
    finally:
        finish_calibration(model)
    info = getattr(model, CALIBRATION_INFO_ATTR)
    info["data"] = data
    logger.info("calibrated %d quantizers (%s) on %d samples", len(_enabled(model)), method, info["num_samples"])
    return model


def check_method(method: str, percentile: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "percentile" and not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")


def _enabled(model: nn.Module) -> dict[str, TensorQuantizer]:
    quantizers = {name: q for name, q in named_quantizers(model).items() if q.is_enabled}
    if not quantizers:
        raise ValueError("the model has no enabled quantizers: load it with quantization='qdq' to calibrate it")
    return quantizers


def collect_stats(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], calibrator: str = "histogram",
    *, progress: bool = True,
) -> int:
    """Run `batches` through the float model while activation quantizers collect ("max" or "histogram").

    Weight quantizers get their per-channel max from the weights directly. The statistics stay until
    finish_calibration, so one histogram serves compute_amax with several methods. Returns the sample count.
    """
    quantizers = _enabled(model)
    was_training = model.training
    num_batches = num_samples = 0
    for name, quantizer in quantizers.items():
        quantizer.disable_quant()  # the pass runs the float model
        weight = weight_of(model, name)
        if weight is not None:
            quantizer.set_calibrator("max")
            quantizer.calibrator.collect(weight)
        else:
            quantizer.set_calibrator(calibrator)
            quantizer.enable_calib()
    try:
        model.eval()
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibration batches", unit="batch", disable=not progress):
                model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
                num_batches += 1
                num_samples += int(batch["input_ids"].shape[0])
    finally:
        for quantizer in quantizers.values():
            quantizer.disable_calib()
        model.train(was_training)
    if num_batches == 0:
        raise ValueError("no calibration batches: pass at least one batch of model inputs")
    setattr(model, CALIBRATION_INFO_ATTR, {"num_samples": num_samples, "num_batches": num_batches})
    return num_samples


def compute_amax(
    model: nn.Module, method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE, *, progress: bool = True
) -> None:
    """amax of every enabled quantizer from the statistics collect_stats gathered; quantization on.

    Weights always take their per-channel max. For activations, "max" needs max calibrators and the
    other methods histograms (collect_stats(..., calibrator="histogram")).
    """
    check_method(method, percentile)
    quantizers = _enabled(model)
    activations = [(name, q) for name, q in quantizers.items() if weight_of(model, name) is None]
    for name, quantizer in quantizers.items():
        if weight_of(model, name) is not None:
            quantizer.load_calib_amax()
    for _, quantizer in tqdm(activations, desc=f"amax ({method})", unit="quantizer", disable=not progress):
        quantizer.load_calib_amax(None if method == "max" else method, percentile=percentile)
    for quantizer in quantizers.values():
        quantizer.enable_quant()
    collected = getattr(model, CALIBRATION_INFO_ATTR, None) or {}
    info: dict[str, Any] = {"method": method}
    if method == "percentile":
        info["percentile"] = percentile
    info["weights"] = "max per output channel"
    info.update({k: collected[k] for k in ("data", "num_samples", "num_batches") if k in collected})
    setattr(model, CALIBRATION_INFO_ATTR, info)


def finish_calibration(model: nn.Module) -> None:
    """Drop the collected statistics (histograms) and leave every quantizer in quant mode."""
    for quantizer in named_quantizers(model).values():
        quantizer.disable_calib()
        quantizer.enable_quant()
        quantizer.set_calibrator(quantizer.quant_desc.calib_method)
