"""The exporter's own arguments, known without torch: the opset range and the task names.

`python -m exporter` checks its arguments with these before it imports torch, so `--help` and argument
errors answer at once; `exporter.export` checks the same with the same functions. The quantization
settings are `models.quantization.recipe.QuantizationRecipe`'s.
"""

from __future__ import annotations

from exporter.errors import ExportError
from trt_runtime.contract.tasks import UnknownTaskError, canonical_task

MIN_OPSET = 17  # LayerNormalization; per-channel Q/DQ needs 13
MAX_OPSET = 20  # the newest opset torch's TorchScript exporter writes


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    return opset


def resolve_task(task: str | None) -> str | None:
    """Our task name for `task` (optimum's and transformers' synonyms included); None: infer from config.json."""
    try:
        return canonical_task(task)
    except UnknownTaskError as e:
        raise ExportError(str(e)) from None
