"""The `Runner` protocol shared by the ONNX Runtime and TensorRT backends (DESIGN.md, Runtime)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from trt_runtime.export_dir import ExportInfo, TensorSpec


@runtime_checkable
class Runner(Protocol):
    """Runs one export directory's model: named NumPy arrays in, named NumPy arrays out.

    Implementations validate `feeds` against `input_specs` before the backend sees them
    (`trt_runtime.validation`), so every backend fails the same way on the same bad input.
    """

    #: "onnxruntime" or "tensorrt"
    backend: str
    #: what export.json says about the model (task, labels, limits, ...)
    info: ExportInfo

    @property
    def input_specs(self) -> list[TensorSpec]: ...

    @property
    def output_names(self) -> list[str]: ...

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
