"""The float graph that ONNX Runtime runs fastest on a CPU, derived from a float (`none`) export.

The exported float graph is the model op by op (MatMul, Add, Softmax, ... per attention head), and ONNX
Runtime's own session optimizer does not recognise our exporter's attention subgraph (issue 20: its level-2
fusion finds nothing). This derives the graph that onnxruntime.transformers' BERT optimizer makes of it, the
same two steps the CPU INT8 graph takes before its GEMMs are quantized (`cpu_int8`): fused Attention,
SkipLayerNormalization and BiasGelu (`fuse_transformer`), then SkipLayerNormalization back into Sum +
LayerNormalization (`split_skip_layer_norms`: ONNX Runtime's CPU kernel for the fused op is the slow one).
Weights and arithmetic stay float32; the answers are the exported graph's within float rounding.

Kept and checked like the CPU INT8 graph (`graphs`): `python -m trt_runtime build DIR --target cpu-float`,
or derived on first load into the cache, with a record of what it was made from.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import onnx

from trt_runtime.backends.onnxruntime.cpu_int8 import (
    fuse_transformer,
    load_exported_model,
    read_config,
    split_skip_layer_norms,
)
from trt_runtime.backends.onnxruntime.recipes import (  # noqa: F401  (CpuFloatError: re-exported)
    FLOAT_RECIPE_VERSION,
    CpuFloatError,
    check_float_applies,
)
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportInfo

logger = logging.getLogger(__name__)


def derive(export_dir: str | os.PathLike, info: ExportInfo, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The fused float graph of the float export in `export_dir` (in memory); `model`: its model.onnx, if loaded."""
    export_dir = Path(export_dir)
    check_float_applies(export_dir, info)
    source = model if model is not None else load_exported_model(export_dir)
    config = read_config(export_dir)
    fused = fuse_transformer(source, int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0)))
    split = split_skip_layer_norms(fused)
    ops = Counter(node.op_type for node in fused.graph.node)
    logger.info(
        "fused float graph of %s: %d Attention, %d BiasGelu, %d SkipLayerNormalization split into Sum + "
        "LayerNormalization",
        export_dir,
        ops["Attention"],
        ops["BiasGelu"],
        split,
    )
    fused.doc_string = (
        f"fused float graph (v{FLOAT_RECIPE_VERSION}) derived by trt_runtime.backends.onnxruntime.cpu_float "
        f"from {MODEL_ONNX} sha256 {info.onnx_sha256}"
    )
    return fused
