"""Module names of the previous release that keep importing, with a DeprecationWarning, for one more release.

`import trt_runtime.export_dir` still works and gives the module now at `trt_runtime.contract.export_dir`
(the same module object, so `isinstance` and monkeypatching agree). The mapping below is the whole list; the
packages that lost a module install the finder (`install()`) when they are imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old name -> new name (release 0.2 moved them; 0.3 drops the old names)
MOVED = {
    "trt_runtime.export_dir": "trt_runtime.contract.export_dir",
    "trt_runtime.runner": "trt_runtime.backends.base",
    "trt_runtime.ort_runner": "trt_runtime.backends.onnxruntime.runner",
    "trt_runtime.cpu_int8": "trt_runtime.backends.onnxruntime.cpu_int8",
    "trt_runtime.tensorrt_runner": "trt_runtime.backends.tensorrt.runner",
    "trt_runtime.builder": "trt_runtime.backends.tensorrt.builder",
    "trt_runtime.engine_info": "trt_runtime.backends.tensorrt.engine_info",
    "trt_runtime.onnx_for_tensorrt": "trt_runtime.backends.tensorrt.onnx_prep",
    "trt_runtime.profiles": "trt_runtime.backends.tensorrt.profiles",
    "trt_runtime.tensorrt_libs": "trt_runtime.backends.tensorrt.libs",
    "trt_runtime.trtexec": "trt_runtime.backends.tensorrt.trtexec",
    "trt_runtime.plugins": "trt_runtime.backends.tensorrt.plugins",
    "trt_runtime.plugins.aot": "trt_runtime.backends.tensorrt.plugins.aot",
    "trt_runtime.plugins.kernels": "trt_runtime.backends.tensorrt.plugins.kernels",
    "trt_runtime.plugins.launchers": "trt_runtime.backends.tensorrt.plugins.launchers",
    "trt_runtime.plugins.registration": "trt_runtime.backends.tensorrt.plugins.registration",
    "trt_runtime.plugins.constants": "trt_runtime.contract.ibert",
    "models.quantization.integer_reference": "trt_runtime.contract.ibert",
    "models.quantization.integer_ops": "models.quantization.integer.ops",
    "models.quantization.integer_calibration": "models.quantization.integer.calibration",
    "models.quantization.descriptor": "models.quantization.qdq.descriptor",
    "models.quantization.calibrators": "models.quantization.qdq.calibrators",
    "models.quantization.tensor_quantizer": "models.quantization.qdq.tensor_quantizer",
    "models.quantization.nn": "models.quantization.qdq.nn",
    "models.quantization.quantized_model": "models.quantization.qdq.quantized_model",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and hands back the module under its new name."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {new}; import it from there (the old name goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module under its new name is already executed


def install() -> None:
    """Put the finder first on sys.meta_path (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
