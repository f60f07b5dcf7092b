"""Quantization of the BERT-family models: the recipe, QDQBERT's fake-quantization toolkit (pytorch-quantization's
concepts and names) and I-BERT's integer-only calibration.

    import models
    from models.quantization import QuantizationRecipe, calibrate_model, recipe_batches, save_model_calibration

    recipe = QuantizationRecipe.default("qdq")           # or "integer"; every default lives in the recipe
    model = models.load("ckpt_dir", quantization=recipe.mode)
    done = calibrate_model(model, recipe_batches(recipe, "ckpt_dir"), recipe)
    save_model_calibration(model, "calibration.json", done)    # models.load(..., calibration=...) reads it

The toolkits' own steps stay public:

    from models.quantization import calibrate, keep_float, save_calibration
    keep_float(model, ["softmax-output"])                 # sensitive sites stay float
    calibrate(model, calibration_batches(load_texts(), "ckpt_dir"), method="percentile")
    save_calibration(model, "calibration.json")

    model = models.load("ckpt_dir", quantization="integer")
    calibrate_integer(model, calibration_batches(load_texts(), "ckpt_dir"))   # method="minmax"
    save_integer_calibration(model, "calibration.json")

`load_calibration` applies a calibration.json of either mode. Imports are lazy: `import models.quantization`
and the recipe and error names load no torch; any other name imports the toolkits (and registers both
modes' calibration files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trt_runtime.contract import compat as _compat

if TYPE_CHECKING:
    from models.quantization.calibration import (
        Calibrated,
        calibrate_model,
        recipe_batches,
        save_model_calibration,
    )
    from models.quantization.calibration_file import load_calibration, read_calibration
    from models.quantization.errors import (
        CalibrationError,
        NotCalibratedError,
        QuantizationError,
        RecipeError,
    )
    from models.quantization.integer.calibration import (
        calibrate_integer,
        load_integer_calibration,
        save_integer_calibration,
    )
    from models.quantization.qdq.calibrate import calibrate, collect_stats, compute_amax, finish_calibration
    from models.quantization.qdq.calibration import save_calibration
    from models.quantization.qdq.calibrators import HistogramCalibrator, MaxCalibrator
    from models.quantization.qdq.descriptor import (
        QUANT_DESC_8BIT_PER_CHANNEL_AXIS0,
        QUANT_DESC_8BIT_PER_TENSOR,
        QuantDescriptor,
    )
    from models.quantization.qdq.nn import QuantConv1d, QuantLinear
    from models.quantization.qdq.quantized_model import (
        QuantizerCounts,
        check_calibrated,
        keep_float,
        load_quantization_state,
        named_quantizers,
        quantizer_counts,
        set_quantization,
        uncalibrated_quantizers,
    )
    from models.quantization.qdq.tensor_quantizer import TensorQuantizer
    from models.quantization.recipe import SENSITIVE_SITES, QuantizationRecipe

_compat.install()  # the previous release's module names keep importing, with a DeprecationWarning

#: name -> its module; the torch-free ones first
_LAZY = {
    "QuantizationRecipe": "models.quantization.recipe",
    "SENSITIVE_SITES": "models.quantization.recipe",
    "QuantizationError": "models.quantization.errors",
    "CalibrationError": "models.quantization.errors",
    "NotCalibratedError": "models.quantization.errors",
    "RecipeError": "models.quantization.errors",
    "Calibrated": "models.quantization.calibration",
    "calibrate_model": "models.quantization.calibration",
    "recipe_batches": "models.quantization.calibration",
    "save_model_calibration": "models.quantization.calibration",
    "load_calibration": "models.quantization.calibration_file",
    "read_calibration": "models.quantization.calibration_file",
    "calibrate_integer": "models.quantization.integer.calibration",
    "load_integer_calibration": "models.quantization.integer.calibration",
    "save_integer_calibration": "models.quantization.integer.calibration",
    "calibrate": "models.quantization.qdq.calibrate",
    "collect_stats": "models.quantization.qdq.calibrate",
    "compute_amax": "models.quantization.qdq.calibrate",
    "finish_calibration": "models.quantization.qdq.calibrate",
    "save_calibration": "models.quantization.qdq.calibration",
    "HistogramCalibrator": "models.quantization.qdq.calibrators",
    "MaxCalibrator": "models.quantization.qdq.calibrators",
    "QUANT_DESC_8BIT_PER_CHANNEL_AXIS0": "models.quantization.qdq.descriptor",
    "QUANT_DESC_8BIT_PER_TENSOR": "models.quantization.qdq.descriptor",
    "QuantDescriptor": "models.quantization.qdq.descriptor",
    "QuantConv1d": "models.quantization.qdq.nn",
    "QuantLinear": "models.quantization.qdq.nn",
    "QuantizerCounts": "models.quantization.qdq.quantized_model",
    "check_calibrated": "models.quantization.qdq.quantized_model",
    "keep_float": "models.quantization.qdq.quantized_model",
    "load_quantization_state": "models.quantization.qdq.quantized_model",
    "named_quantizers": "models.quantization.qdq.quantized_model",
    "quantizer_counts": "models.quantization.qdq.quantized_model",
    "set_quantization": "models.quantization.qdq.quantized_model",
    "uncalibrated_quantizers": "models.quantization.qdq.quantized_model",
    "TensorQuantizer": "models.quantization.qdq.tensor_quantizer",
}
_TORCH_FREE = ("models.quantization.recipe", "models.quantization.errors")

__all__ = [
    "Calibrated",
    "CalibrationError",
    "HistogramCalibrator",
    "MaxCalibrator",
    "NotCalibratedError",
    "QUANT_DESC_8BIT_PER_CHANNEL_AXIS0",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QuantConv1d",
    "QuantDescriptor",
    "QuantLinear",
    "QuantizationError",
    "QuantizationRecipe",
    "QuantizerCounts",
    "RecipeError",
    "SENSITIVE_SITES",
    "TensorQuantizer",
    "calibrate",
    "calibrate_integer",
    "calibrate_model",
    "check_calibrated",
    "collect_stats",
    "compute_amax",
    "finish_calibration",
    "keep_float",
    "load_calibration",
    "load_integer_calibration",
    "load_quantization_state",
    "named_quantizers",
    "quantizer_counts",
    "read_calibration",
    "recipe_batches",
    "save_calibration",
    "save_integer_calibration",
    "save_model_calibration",
    "set_quantization",
    "uncalibrated_quantizers",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'models.quantization' has no attribute {name!r}")
    import importlib

    if _LAZY[name] not in _TORCH_FREE:
        # the mode-independent front: importing it registers both modes' calibration files, so that
        # load_calibration (and models.load(..., calibration=)) reads either kind whichever name came first
        import models.quantization.calibration  # noqa: F401
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # resolved once
    return value
