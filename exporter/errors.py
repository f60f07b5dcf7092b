"""The exporter's errors: bad arguments (ExportError) and a graph that does not reproduce PyTorch."""

from __future__ import annotations

from trt_runtime.contract.errors import VALIDATION_FAILED, QbertError


class ExportError(QbertError, ValueError):
    """The export cannot run with these arguments; the message names the problem and the fix."""

    code = "export-invalid"


class ExportValidationError(QbertError, RuntimeError):
    """The exported ONNX does not reproduce the PyTorch module within tolerance (the message has the numbers)."""

    code = "export-validation-failed"
    exit_code = VALIDATION_FAILED
