"""The quantization toolkit's errors, one class per kind for both modes (qdq and integer).

`QuantizationError` is their common base, so `except QuantizationError` catches everything the toolkit
raises about quantization; each subclass also derives from the builtin that says whose fault it is
(`ValueError`: the input or a file is wrong; `RuntimeError`: the model is not ready), as docs/errors.md
promises. `code` is stable (tests and callers may branch on it; messages may change).

Standard library only: the recipe (`models.quantization.recipe`) raises `RecipeError` without torch.
"""

from __future__ import annotations

from trt_runtime.contract.errors import QbertError


class QuantizationError(QbertError):
    """Base of the errors of `models.quantization` (calibration files, calibration state, recipes)."""

    code = "quantization"


class CalibrationError(QuantizationError, ValueError):
    """A calibration file cannot be applied to this model; the message says why and what to do."""

    code = "calibration-file"


class NotCalibratedError(QuantizationError, RuntimeError):
    """A qdq quantizer in quant mode has no amax, or an integer-mode module has no activation range yet."""

    code = "not-calibrated"


class RecipeError(QuantizationError, ValueError):
    """A quantization recipe field has a value it cannot take (the message names the field, its flag and the fix)."""

    code = "bad-recipe"
