"""torch module -> ONNX export directory (model.onnx + export.json + checkpoint files), checked in ONNX Runtime.

    import exporter
    from models.quantization import QuantizationRecipe

    exporter.export("ckpt_dir", "out_dir", task="text-classification", recipe=QuantizationRecipe(mode="qdq"))
    exporter.export("ckpt_dir", "out_dir", task="text-classification", quantization="qdq",
                    calibration_data="calibration_data/", calibration_method="percentile")   # DESIGN.md's shorthand

Command line: `python -m exporter --model DIR --task T --quantization Q --output OUT` (see --help; exit status
0 done, 1 validation failed, 2 bad arguments or inputs).

Imports are lazy: `import exporter` (and `python -m exporter --help`) loads neither torch nor onnx; the
first use of `exporter.export` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.errors import ExportError, ExportValidationError
    from exporter.pipeline import export

__all__ = ["ExportError", "ExportValidationError", "export"]

_LAZY = {
    "ExportError": "exporter.errors",
    "ExportValidationError": "exporter.errors",
    "export": "exporter.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
