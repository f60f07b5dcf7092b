"""TensorRT's explicit-quantization rule (trt_runtime.contract.int8_share) on hand-built graphs.

The rule (TensorRT developer guide, "Explicit Quantization"): a GEMM runs in INT8 only when every data
input comes from an int8 DequantizeLinear, through shape-only ops. The exports of tiny models are checked
in tests/exporter/test_report.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.contract.int8_share import TENSOR_INT8, format_report, int8_share

# --- the rule on hand-built graphs ---------------------------------------------------------------------


def _graph(nodes, initializers, name="rule"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, name, [x], [y], initializers), opset_imports=[helper.make_opsetid("", 17)])


def _scalar(name, value, dtype):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _activation_qdq(source, prefix, zero_point=True):
    """Q -> DQ of `source` (per tensor; int8 with a zero point, uint8 without one as ONNX defines)."""
    inputs = [source, "s"] + ([f"{prefix}.zp"] if zero_point else [])
    dq_inputs = [f"{prefix}.q", "s"] + ([f"{prefix}.zp"] if zero_point else [])
    return [
        helper.make_node("QuantizeLinear", inputs, [f"{prefix}.q"], name=f"{prefix}/Q"),
        helper.make_node("DequantizeLinear", dq_inputs, [f"{prefix}.dq"], name=f"{prefix}/DQ"),
    ], ([_scalar(f"{prefix}.zp", 0, np.int8)] if zero_point else [])


def _weight(prefix, shape=(8, 8)):
    w = numpy_helper.from_array(np.ones(shape, np.int8), f"{prefix}.w.int8")
    scale = numpy_helper.from_array(np.full(shape[1], 0.1, np.float32), f"{prefix}.w.scale")
    dq = helper.make_node("DequantizeLinear", [w.name, scale.name], [f"{prefix}.w"], name=f"{prefix}/wDQ", axis=1)
    return dq, [w, scale]


def test_a_gemm_is_int8_when_both_inputs_are_int8_dequantized_through_shape_only_ops():
    qdq, zp = _activation_qdq("x", "a")
    wdq, weights = _weight("a")
    nodes = [
        *qdq, wdq,
        helper.make_node("Reshape", ["a.dq", "shape"], ["a.r"], name="/encoder/layer.0/Reshape"),
        helper.make_node("MatMul", ["a.r", "a.w"], ["y"], name="/encoder/layer.0/dense/MatMul"),
    ]
    shape = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")
    model = _graph(nodes, [_scalar("s", 0.1, np.float32), *zp, *weights, shape])
    (gemm,) = int8_share(model).gemms
    assert (gemm.group, gemm.precision, gemm.work) == ("linear", "int8", 64)


@pytest.mark.parametrize("breaker", ["Relu", "uint8"])
def test_a_gemm_with_one_input_not_int8_qdq_is_float(breaker):
    """A float op between DQ and GEMM, or a uint8 DequantizeLinear (no zero point), makes the GEMM float."""
    qdq, zp = _activation_qdq("x", "a", zero_point=breaker != "uint8")
    wdq, weights = _weight("a")
    activation = "a.dq"
    nodes = [*qdq, wdq]
    if breaker == "Relu":
        nodes.append(helper.make_node("Relu", ["a.dq"], ["a.relu"], name="/encoder/Relu"))
        activation = "a.relu"
    nodes.append(helper.make_node("MatMul", [activation, "a.w"], ["y"], name="/encoder/dense/MatMul"))
    model = _graph(nodes, [_scalar("s", 0.1, np.float32), *zp, *weights])
    (gemm,) = int8_share(model).gemms
    assert gemm.precision == "float" and gemm.group == "linear"
    assert ("Relu" in gemm.reason) if breaker == "Relu" else ("non-int8" in gemm.reason)


def test_a_matmul_of_two_computed_tensors_is_an_attention_matmul_and_float_heads_are_apart():
    q1, zp1 = _activation_qdq("x", "a")
    q2, zp2 = _activation_qdq("x", "b")
    nodes = [
        *q1, *q2,
        helper.make_node("Transpose", ["b.dq"], ["b.t"], name="/encoder/T", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["a.dq", "b.t"], ["scores"], name="/encoder/attention/MatMul"),
        helper.make_node("MatMul", ["scores", "head.w"], ["y"], name="/classifier/MatMul"),
    ]
    head = numpy_helper.from_array(np.ones((4, 3), np.float32), "head.w")
    model = _graph(nodes, [_scalar("s", 0.1, np.float32), *zp1, *zp2, head])
    attention, classifier = int8_share(model).gemms
    assert (attention.group, attention.precision) == ("attention", "int8")
    assert (classifier.group, classifier.precision, classifier.work) == ("heads", "float", 12)


def test_the_contract_reads_onnx_int8_by_its_proto_number():
    assert TENSOR_INT8 == onnx.TensorProto.INT8


def test_split_gemms_are_reported_without_a_float_note():
    """An integer graph's IntMatMulWide counts as INT8 ("split"): the report states it and says nothing of
    float GEMMs in TensorRT (its TensorRT form is two INT8 GEMMs: tests/trt_runtime/backends/tensorrt)."""
    a = helper.make_tensor_value_info("a", TensorProto.INT32, ["batch", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    weight = numpy_helper.from_array(np.ones((8, 8), np.int8), "w")
    node = helper.make_node("IntMatMulWide", ["a", "w"], ["y"], name="/encoder/layer.0/query/IntMatMulWide",
                            domain="ibert", a_scale=0.1, b_scale=[0.1])
    model = helper.make_model(helper.make_graph([node], "wide", [a], [y], [weight]))
    report = int8_share(model).to_dict()
    assert report["linear"] == {"gemms": 1, "int8_gemms": 1, "split_gemms": 1, "work": 64, "int8_work": 64, "split_work": 64}
    text = format_report(report)
    assert "1 as two 8-bit GEMMs: 100.0 % of the work" in text and "float" not in text.lower()
