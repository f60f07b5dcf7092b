"""torch module -> raw ONNX with the TorchScript exporter (dynamo=False).

The TorchScript exporter is the one that turns `fake_quantize_per_*_affine` into QuantizeLinear /
DequantizeLinear pairs and that takes `register_custom_op_symbolic` for the `ibert` ops; the raw graph
it writes is cleaned up afterwards (exporter.graph, exporter.qdq).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch

from exporter.ibert_symbolic import register_ibert_symbolics
from exporter.signature import OnnxSignatureModule, Signature
from models import TaskModel
from trt_runtime.contract import ibert

#: the wrapper's attribute that holds the task model; stripped from ONNX names afterwards
WRAPPED = "model"


def torchscript_export(
    model: TaskModel, signature: Signature, example: Mapping[str, np.ndarray], path: Path, opset: int
) -> onnx.ModelProto:
    """Trace `model` on `example` and write the raw ONNX to `path` (weights beside it when over 2 GB)."""
    register_ibert_symbolics(opset)
    wrapper = OnnxSignatureModule(model, signature).eval()
    assert getattr(wrapper, WRAPPED) is model
    kwargs = {name: torch.from_numpy(example[name]) for name in signature.input_names}
    with warnings.catch_warnings():
        # TracerWarnings ("converting a tensor to a Python integer ...") flag shapes the trace may have
        # baked in; the validation at four other shapes is the real check, so they are noise here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            wrapper,
            (),
            str(path),
            kwargs=kwargs,
            input_names=signature.input_names,
            output_names=signature.output_names,
            dynamic_axes=signature.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            custom_opsets={ibert.DOMAIN: ibert.DOMAIN_VERSION} if model.quantization == "integer" else None,
        )
    return onnx.load(str(path))
