"""Small hand-made ONNX models and export directories for the TensorRT tests (built with onnx.helper).

`ibert_graph_model()` is a graph with one node of each `ibert` op (attributes from the NumPy
reference's attribute builders), a Q/DQ pair, and model-local functions for the ibert ops whose
bodies call a helper function in a helper domain, like an export's. The bodies are placeholders
(Identity): these tests are about the graph surgery, not the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.export_dir import (
    EXPORT_JSON,
    MODEL_ONNX,
    ExportInfo,
    TensorSpec,
    sha256_file,
    write_json_atomic,
)

HIDDEN = 8
HELPER_DOMAIN = "ibert_impl"
OPSET = 17


def _identity_function(name: str, inputs: list[str], attributes: list[str]) -> onnx.FunctionProto:
    """ibert::<name>(inputs) -> Y, body Y = ibert_impl::Passthrough(X)."""
    return helper.make_function(
        "ibert",
        name,
        inputs,
        ["Y"],
        [helper.make_node("Passthrough", [inputs[0]], ["Y"], domain=HELPER_DOMAIN)],
        [helper.make_opsetid("", OPSET), helper.make_opsetid(HELPER_DOMAIN, 1)],
        attributes,
    )


def _passthrough() -> onnx.FunctionProto:
    return helper.make_function(
        HELPER_DOMAIN, "Passthrough", ["X"], ["Y"], [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_opsetid("", OPSET)],
    )


def ibert_attributes(seed: int = 0) -> dict[str, dict]:
    from models.quantization import integer_reference as ref  # imports torch (via models): only when needed

    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
    bias = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    gelu_scales = rng.uniform(0.01, 0.05, HIDDEN).astype(np.float32)
    softmax_scale = np.float32(0.05)
    c_int = int(np.floor((np.float32(1) / softmax_scale**2) * np.float32(ref.EXP_C)))
    exp_scale = float(np.float32(c_int * 2.0**30 / 32767))
    return {
        "weight": {"value": weight},
        "bias": {"value": bias},
        "IntLayerNorm": ref.layernorm_attributes(0.02, 1, weight),
        "IntGELU": ref.gelu_attributes(gelu_scales),
        "IntSoftmax": ref.softmax_attributes(float(softmax_scale), exp_scale),
    }


def ibert_graph_model(
    with_qdq: bool = True, with_functions: bool = True, seed: int = 0, exporter_bodies: bool = False
) -> onnx.ModelProto:
    """X [batch, seq, 8] -> (Q/DQ) -> IntLayerNorm -> IntGELU -> X X^T -> IntSoftmax -> probs [batch, seq, seq].

    exporter_bodies: the exporter's real function bodies (exporter.ibert_functions) instead of placeholders.
    """
    attrs = ibert_attributes(seed)
    nodes = []
    source = "X"
    initializers = [
        numpy_helper.from_array(attrs["weight"]["value"], "ln.weight"),
        numpy_helper.from_array(attrs["bias"]["value"], "ln.bias"),
    ]
    if with_qdq:
        initializers += [
            numpy_helper.from_array(np.array(0.02, np.float32), "x.scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x.zero_point"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["X", "x.scale", "x.zero_point"], ["X_q"], name="x/quantize"),
            helper.make_node("DequantizeLinear", ["X_q", "x.scale", "x.zero_point"], ["X_dq"], name="x/dequantize"),
        ]
        source = "X_dq"
    nodes += [
        helper.make_node(
            "IntLayerNorm", [source, "ln.weight", "ln.bias"], ["ln_out"], name="layer/ln", domain="ibert",
            **attrs["IntLayerNorm"],
        ),
        helper.make_node("IntGELU", ["ln_out"], ["gelu_out"], name="layer/gelu", domain="ibert", **attrs["IntGELU"]),
        helper.make_node("Transpose", ["gelu_out"], ["gelu_t"], perm=[0, 2, 1], name="layer/transpose"),
        helper.make_node("MatMul", ["gelu_out", "gelu_t"], ["scores"], name="layer/matmul"),
        helper.make_node("IntSoftmax", ["scores"], ["probs"], name="layer/softmax", domain="ibert", **attrs["IntSoftmax"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ibert_test",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch_size", "sequence_length", HIDDEN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch_size", "sequence_length", "sequence_length"])],
        initializers,
    )
    functions = []
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ibert", 1)]
    if with_functions and exporter_bodies:
        from exporter.ibert_functions import ibert_function

        functions = [ibert_function(op, OPSET) for op in ("IntGELU", "IntLayerNorm", "IntSoftmax")]
    elif with_functions:
        functions = [
            _identity_function("IntLayerNorm", ["X", "weight", "bias"], list(attrs["IntLayerNorm"])),
            _identity_function("IntGELU", ["X"], list(attrs["IntGELU"])),
            _identity_function("IntSoftmax", ["X"], list(attrs["IntSoftmax"])),
            _passthrough(),
        ]
        opsets.append(helper.make_opsetid(HELPER_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="tests")


def export_info(task: str = "feature-extraction", multiple_choice: bool = False, max_len: int = 64) -> ExportInfo:
    shape: tuple[int | str, ...] = (
        ("batch_size", "num_choices", "sequence_length") if multiple_choice else ("batch_size", "sequence_length")
    )
    inputs = [TensorSpec(name, "int64", shape) for name in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [TensorSpec("last_hidden_state", "float32", ("batch_size", "sequence_length", 32))]
    if multiple_choice:
        task = "multiple-choice"
        outputs = [TensorSpec("logits", "float32", ("batch_size", "num_choices"))]
    return ExportInfo(
        architecture="bert",
        model_type="ibert",
        task=task,
        quantization="integer",
        opset=OPSET,
        inputs=inputs,
        outputs=outputs,
        max_sequence_length=max_len,
        vocab_size=99,
        type_vocab_size=2,
    )


def write_export_dir(directory: Path, model: onnx.ModelProto, info: ExportInfo | None = None) -> Path:
    """A minimal export directory: model.onnx and export.json with its sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / MODEL_ONNX))
    info = info or export_info()
    info.onnx_sha256 = sha256_file(directory / MODEL_ONNX)
    write_json_atomic(directory / EXPORT_JSON, info.to_dict())
    return directory


def single_op_model(op: str, attributes: dict, channels: int, rank: int, weight=None, bias=None) -> onnx.ModelProto:
    """One ibert node X -> Y with the exporter's function body; X is [batch_size, ..., channels]."""
    from exporter.ibert_functions import ibert_function

    dims: list[int | str] = ["batch_size", "sequence_length", "num_choices"][: rank - 1] + [channels]
    inputs, initializers = ["X"], []
    if op == "IntLayerNorm":
        initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
        inputs += ["weight", "bias"]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["Y"], name=op.lower(), domain="ibert", **attributes)],
        op,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, dims)],
        initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ibert", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[ibert_function(op, OPSET)])


def single_op_export_info(rank: int, channels: int, max_len: int = 512) -> ExportInfo:
    dims: tuple[int | str, ...] = tuple(["batch_size", "sequence_length", "num_choices"][: rank - 1]) + (channels,)
    info = export_info(max_len=max_len)
    info.inputs = [TensorSpec("X", "float32", dims)]
    info.outputs = [TensorSpec("Y", "float32", dims)]
    return info
