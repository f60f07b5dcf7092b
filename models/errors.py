"""The errors of loading checkpoints and reading data (torch-free, so `models.CheckpointError` imports at once).

The quantization toolkit has its own (`models.quantization.errors`); all derive from the project's one base,
`trt_runtime.contract.errors.QbertError`, with a stable `code` (docs/errors.md).
"""

from __future__ import annotations

from trt_runtime.contract.errors import QbertError


class CheckpointError(QbertError, ValueError):
    """The checkpoint directory cannot be loaded into the requested model (message says why and what to do).

    `problem` and `fix`: the message's two parts (the message is "PROBLEM. (FIX)" where a fix is given), so a
    caller that offers another fix says its own. `head_missing`: the only problem is that the checkpoint has
    no weights for the task head asked for (the fix `models.load` offers is `init_missing_head=True`; the
    exporter, which exports trained heads only, offers another)."""

    code = "checkpoint-invalid"

    def __init__(self, message: str, *, fix: str | None = None, head_missing: bool = False) -> None:
        super().__init__(f"{message}. ({fix})" if fix else message)
        self.problem, self.fix, self.head_missing = message, fix, head_missing


class DataError(QbertError, ValueError):
    """Calibration or evaluation data cannot be read; the message names the file, the line and the fix."""

    code = "data-invalid"
