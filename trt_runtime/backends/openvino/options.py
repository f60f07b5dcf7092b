"""`OpenVinoOptions`: the OpenVINO backend's options, checked when they are made (no openvino import here, so
`trt_runtime.load` and `trt_runtime.pipeline` can sort options by backend without loading any backend)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from trt_runtime.backends.base import RunnerOptions

#: precision -> INFERENCE_PRECISION_HINT
PRECISIONS = {"f32": "f32", "bf16": "bf16"}
#: performance_hint -> PERFORMANCE_HINT
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def _int_option(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum} or None (OpenVINO's default), got {value!r}")


@dataclass(frozen=True)
class OpenVinoOptions(RunnerOptions):
    """precision: "f32" (default) | "bf16" (INFERENCE_PRECISION_HINT; bf16 only where OpenVINO lists BF16 in
        the CPU's OPTIMIZATION_CAPABILITIES). performance_hint: "latency" (default) | "throughput".
    intra_op_num_threads: INFERENCE_NUM_THREADS (None: OpenVINO's default, the cores of one NUMA node).
    dynamic_quantization_group_size: DYNAMIC_QUANTIZATION_GROUP_SIZE (None: OpenVINO's default; 0: off).
    cache: use the compiled-model cache; cache_dir: its root (default <export>/.cache).
    """

    precision: str = "f32"
    performance_hint: str = "latency"
    intra_op_num_threads: int | None = None
    dynamic_quantization_group_size: int | None = None
    cache: bool = True
    cache_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise ValueError(
                f"performance_hint={self.performance_hint!r}; choose one of {', '.join(PERFORMANCE_HINTS)}"
            )
        _int_option("intra_op_num_threads", self.intra_op_num_threads, 1)
        _int_option("dynamic_quantization_group_size", self.dynamic_quantization_group_size, 0)
        if not isinstance(self.cache, bool):
            raise ValueError(f"cache must be True or False, got {self.cache!r}")
        if self.cache_dir is not None and not (isinstance(self.cache_dir, (str, os.PathLike)) and str(self.cache_dir)):
            raise ValueError(f"cache_dir must be a directory path (or None for the default), got {self.cache_dir!r}")
