"""Graph clean-up after torch.onnx.export: constant folding, dead nodes, readable names, shapes, checks, saving.

The clean-up never folds Q/DQ nodes (they carry the quantization TensorRT needs) or `ibert` nodes
(ONNX Runtime cannot evaluate them outside a model that carries their function bodies).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trt_runtime.contract import ibert
from trt_runtime.contract.export_dir import MODEL_ONNX

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: protobuf cannot serialize a message over 2 GiB; bigger models keep their weights in one external file
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_FILE = MODEL_ONNX + ".data"


def _keep_unfolded(node: gs.Node) -> bool:
    return node.op in QDQ_OPS or node.domain == ibert.DOMAIN


def fold_and_prune(graph: gs.Graph) -> gs.Graph:
    """Fold constant subgraphs (shapes included where static), drop dead nodes, sort topologically."""
    from onnx_graphsurgeon.logger import G_LOGGER

    severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR  # its "large folded tensor" notes are
    try:  # about the narrow-range clamp of weights, which is meant to fold into them
        graph.fold_constants(should_exclude_node=_keep_unfolded, error_ok=False)
    finally:
        G_LOGGER.severity = severity
    remove_identity_casts(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the raw export, so every tensor's dtype is known to the clean-up passes."""
    if model.ByteSize() >= PROTOBUF_LIMIT:
        return model  # in-memory inference cannot serialize it; torch's own value_info has the dtypes
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def remove_identity_casts(graph: gs.Graph) -> int:
    """Drop Cast nodes to the type their input already has (`tensor.to(dtype)` in eager code is traced as one).

    They compute nothing, and between a DequantizeLinear and its MatMul they stop TensorRT's fusion.
    """
    removed = 0
    for node in graph.nodes:
        if node.op != "Cast" or not node.inputs or not node.outputs or node.outputs[0] in graph.outputs:
            continue
        source, target = node.inputs[0], node.outputs[0]
        to = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
        if source.dtype is None or np.dtype(source.dtype) != to:
            continue
        for consumer in list(target.outputs):
            consumer.inputs[consumer.inputs.index(target)] = source
        node.outputs.clear()
        removed += 1
    return removed


def strip_wrapper_prefix(graph: gs.Graph, prefix: str) -> None:
    """Names as in the checkpoint: `model.bert.encoder...` -> `bert.encoder...`, `/model/bert/...` -> `/bert/...`."""
    dotted, slashed = prefix + ".", "/" + prefix + "/"
    for tensor in graph.tensors().values():
        if tensor.name.startswith(dotted):
            tensor.name = tensor.name[len(dotted):]
        elif tensor.name.startswith(slashed):
            tensor.name = "/" + tensor.name[len(slashed):]
    for node in graph.nodes:
        if node.name.startswith(slashed):
            node.name = "/" + node.name[len(slashed):]


def name_anonymous_tensors(graph: gs.Graph) -> None:
    """Give torch's `onnx::MatMul_279`-style constants the name of what they are (`...query.weight.T`)."""
    taken = set(graph.tensors())
    for tensor in list(graph.tensors().values()):
        if not tensor.name.startswith("onnx::") or not isinstance(tensor, gs.Constant) or len(tensor.outputs) != 1:
            continue
        consumer = tensor.outputs[0]
        scope, _, op = consumer.name.rpartition("/")
        if not scope:
            continue
        index = next(i for i, t in enumerate(consumer.inputs) if t is tensor)
        role = "weight.T" if op.startswith("MatMul") and index == 1 else f"{op}.input{index}"
        name = scope.strip("/").replace("/", ".") + "." + role
        if name not in taken:
            taken.add(name)
            tensor.name = name


def name_nodes(graph: gs.Graph) -> None:
    """Every node gets a unique, non-empty name (TensorRT and polygraphy report layers by node name)."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        name = node.name or f"/{node.op}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def save_model(model: onnx.ModelProto, directory: Path) -> Path:
    """Write model.onnx into `directory`; over protobuf's 2 GiB limit the weights go to model.onnx.data."""
    path = directory / MODEL_ONNX
    if model.ByteSize() >= PROTOBUF_LIMIT:
        onnx.save_model(
            model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=EXTERNAL_DATA_FILE,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, path)
    return path


def infer_shapes_and_check(path: str | os.PathLike) -> None:
    """Strict ONNX shape inference into the file, then onnx.checker with full_check.

    Both work on the path, so a model with external data is fine. A type or shape error here is a bug
    in the export, never something to skip.
    """
    onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(str(path), full_check=True)


def custom_ops(model: onnx.ModelProto) -> list[str]:
    """`domain::op` of every node outside the standard domains, e.g. ["ibert::IntGELU"]."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
