"""torch module -> ONNX export directory (model.onnx + export.json + checkpoint files), checked in ONNX Runtime.

    import exporter
    exporter.export("ckpt_dir", "out_dir", task="text-classification", quantization="qdq",
                    calibration_data="calibration_data/", calibration_method="percentile")

Command line: `python -m exporter --model DIR --task T --quantization Q --output OUT` (see --help).
"""

from exporter.errors import ExportError, ExportValidationError
from exporter.pipeline import export

__all__ = ["ExportError", "ExportValidationError", "export"]
