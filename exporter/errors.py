"""The exporter's errors: bad arguments (ExportError) and a graph that does not reproduce PyTorch."""

from __future__ import annotations


class ExportError(ValueError):
    """The export cannot run with these arguments; the message names the problem and the fix."""


class ExportValidationError(RuntimeError):
    """The exported ONNX does not reproduce the PyTorch module within tolerance (the message has the numbers)."""
