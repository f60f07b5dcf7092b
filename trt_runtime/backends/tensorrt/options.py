"""`TensorRTOptions`: the TensorRT backend's options (importable without TensorRT, so that `trt_runtime.load`
and `trt_runtime.pipeline` can sort options by backend on a machine that has none)."""

from __future__ import annotations

from dataclasses import dataclass

from trt_runtime.backends.base import RunnerOptions


@dataclass(frozen=True)
class TensorRTOptions(RunnerOptions):
    """device: the CUDA device (ordinal) that runs the engine. cuda_graphs: replay each (profile, shapes) call
    as a captured CUDA graph after its first run (opt-in; refused for engines with JIT Python plugins)."""

    device: int = 0
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise ValueError(f"device must be a CUDA device ordinal (an int >= 0), got {self.device!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
