"""Thin runtime for exported BERT-family models: TensorRT engines on a GPU, ONNX Runtime on the CPU.

    import trt_runtime
    runner = trt_runtime.load("out_dir", backend="auto")     # Runner: dict of arrays in, dict out
    clf = trt_runtime.pipeline("text-classification", "out_dir")
    clf("a great movie")                                      # [{"label": ..., "score": ...}]

Imports are lazy: `import trt_runtime` loads neither onnxruntime nor tensorrt, and nothing here
needs torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trt_runtime.contract import compat as _compat

_compat.install()  # the previous release's module names keep importing, with a DeprecationWarning

if TYPE_CHECKING:
    from trt_runtime.backends.base import Runner
    from trt_runtime.loader import load
    from trt_runtime.pipelines import pipeline

__all__ = ["Runner", "load", "pipeline"]

_LAZY = {
    "load": "trt_runtime.loader",
    "pipeline": "trt_runtime.pipelines",
    "Runner": "trt_runtime.backends.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trt_runtime' has no attribute {name!r}")
