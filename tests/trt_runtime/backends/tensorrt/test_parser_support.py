"""The TensorRT-parser check (trt_runtime.backends.tensorrt.parser_support, `build DIR --check`).

The rules come from onnx-tensorrt's docs/operators.md at release/10.0-GA, kept as data: the tests first
check that data against facts quoted from that file, then run the check on small graphs made with
onnx.helper (each one valid ONNX by onnx.checker, so only TensorRT's limits can reject it) and on tiny
float, Q/DQ and integer exports in both the plugin and the --no-plugins form.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.__main__ import build_parser
from trt_runtime.backends.tensorrt.builder import BuildOptions, check_export
from trt_runtime.backends.tensorrt.parser_support import check_parser_support, operator_matrix

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def test_the_matrix_is_onnx_tensorrts_10_0_table():
    matrix = operator_matrix()
    assert (matrix.tag, matrix.tensorrt, matrix.opset_range) == ("release/10.0-GA", "10.0", (9, 20))
    ops = matrix.operators
    # rows as docs/operators.md at release/10.0-GA has them
    assert not ops["BitShift"].supported and not ops["MatMulInteger"].supported
    assert ops["MatMul"].types == {"FP32", "FP16", "BF16"}
    assert ops["Clip"].types == {"FP32", "FP16", "BF16"} and ops["Floor"].types == ops["Round"].types == ops["Clip"].types
    assert ops["Cast"].types == {"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"}
    assert ops["ReduceSum"].constant_inputs == ("axes",) and ops["Unsqueeze"].constant_inputs == ("axes",)
    assert ops["CumSum"].constant_inputs == ("axis",) and ops["QuantizeLinear"].zero_inputs == ("y_zero_point",)
    assert ops["DequantizeLinear"].types == {"INT8", "FP8", "INT4"}
    assert "UINT64" not in matrix.data_types and {"FP32", "FP16", "INT64", "INT8", "BOOL"} <= matrix.data_types
    assert len(ops) == 195


def _model(nodes, inputs, outputs, initializers=(), opset=17, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              functions=list(functions))
    return model


def _checked(model, form="test"):
    if not any(n.domain == "ibert" and not model.functions for n in model.graph.node):
        onnx.checker.check_model(model, full_check=True)  # valid ONNX: only TensorRT's limits may reject it
    return check_parser_support(model, form)


def _problems(report):
    return [(p.node, p.op_type) for p in report.problems]


def x(name="x", kind=F, shape=("b", 8)):
    return helper.make_tensor_value_info(name, kind, list(shape))


def test_a_plain_float_graph_passes():
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Relu", ["m"], ["y"], name="relu")]
    report = _checked(_model(nodes, [x()], [x("y")], [w]))
    assert report.ok and report.nodes_checked == 2 and "passes" in report.format()


def test_unsupported_op_cast_target_and_type():
    nodes = [
        helper.make_node("Cast", ["i"], ["u"], to=TensorProto.UINT64, name="to_u64"),
        helper.make_node("BitShift", ["u", "u"], ["s"], direction="LEFT", name="shift"),
        helper.make_node("Cast", ["s"], ["k"], to=I64, name="back"),
        helper.make_node("Clip", ["k"], ["y"], name="clip_int"),
    ]
    report = _checked(_model(nodes, [x("i", I64)], [x("y", I64)]))
    assert _problems(report) == [("to_u64", "Cast"), ("shift", "BitShift"), ("back", "Cast"), ("clip_int", "Clip")]
    reasons = [p.reason for p in report.problems]
    assert "Cast to UINT64: TensorRT has no UINT64 type" in reasons[0]
    assert "not supported by TensorRT's ONNX parser (operators.md: N)" in reasons[1]
    assert "Clip on INT64" in reasons[3] and "BF16, FP16, FP32" in reasons[3]


def test_reduce_axes_must_be_an_initializer_or_constant():
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes_init")
    nodes = [
        helper.make_node("Constant", [], ["axes_const"], value=numpy_helper.from_array(np.array([-1], np.int64)), name="c"),
        helper.make_node("ReduceSum", ["x", "axes_init"], ["a"], name="from_initializer"),
        helper.make_node("ReduceSum", ["x", "axes_const"], ["b"], name="from_constant"),
        helper.make_node("Reshape", ["axes_const", "one"], ["axes_computed"], name="reshape"),
        helper.make_node("ReduceSum", ["x", "axes_computed"], ["c2"], name="from_reshape"),
        helper.make_node("Sum", ["a", "b", "c2"], ["y"], name="sum"),
    ]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    report = _checked(_model(nodes, [x()], [x("y", shape=("b", 1))], [axes, one]))
    assert _problems(report) == [("from_reshape", "ReduceSum")]
    assert "must be an initializer or a Constant" in report.problems[0].reason
    assert "the output of Reshape 'reshape'" in report.problems[0].reason


def test_custom_ops_other_than_the_ibert_plugins():
    nodes = [
        helper.make_node("IntGELU", ["x"], ["g"], domain="ibert", name="gelu", plugin_namespace="ibert",
                         input_scale=[0.1], output_scale=[0.1]),
        helper.make_node("IntGELU", ["g"], ["g2"], domain="ibert", name="no_namespace", input_scale=[0.1], output_scale=[0.1]),
        helper.make_node("FastGelu", ["g2"], ["f"], domain="com.microsoft", name="ort_op"),
        helper.make_node("Relu", ["f"], ["y"], domain="my.domain", name="shadowing"),
    ]
    opsets = [helper.make_opsetid(d, 1) for d in ("ibert", "com.microsoft", "my.domain")]
    report = check_parser_support(_model(nodes, [x()], [x("y")], extra_opsets=opsets))
    assert _problems(report) == [("no_namespace", "IntGELU"), ("ort_op", "FastGelu"), ("shadowing", "Relu")]
    assert "without plugin_namespace='ibert'" in report.problems[0].reason
    assert "not one of the ibert plugins" in report.problems[1].reason and "Plugin not found" in report.problems[1].reason
    assert "ignores the domain" in report.problems[2].reason
    assert report.plugins == {"gelu": "ibert::IntGELU"}


def test_plugin_inputs_must_be_float32():
    nodes = [helper.make_node("IntSoftmax", ["x"], ["y"], domain="ibert", name="softmax", plugin_namespace="ibert")]
    report = check_parser_support(_model(nodes, [x("x", TensorProto.INT32)], [x("y", TensorProto.INT32)],
                                         extra_opsets=[helper.make_opsetid("ibert", 1)]))
    assert _problems(report) == [("softmax", "IntSoftmax")]
    assert "is INT32; ibert::IntSoftmax takes FLOAT there" in report.problems[0].reason


def test_quantized_and_io_only_types():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("Identity", ["q"], ["q2"], name="int8_passthrough"),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["d"], name="dq"),
        helper.make_node("Cast", ["d"], ["u8"], to=TensorProto.UINT8, name="to_uint8"),
        helper.make_node("Cast", ["u8"], ["y"], to=F, name="from_uint8"),
    ]
    report = _checked(_model(nodes, [x()], [x("y")], [scale, zero]))
    assert _problems(report) == [("int8_passthrough", "Identity")] * 3 + [("to_uint8", "Cast")]
    reasons = [p.reason for p in report.problems]
    assert "Identity on INT8 ('q')" in reasons[0]  # not in the Identity row's types
    assert "only into DequantizeLinear" in reasons[1] and "only as QuantizeLinear's output" in reasons[2]
    assert "only as a network input or output" in reasons[3]


def test_zero_points_must_be_zero():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(3, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    report = _checked(_model(nodes, [x()], [x("y")], [scale, zero]))
    assert _problems(report) == [("q", "QuantizeLinear"), ("dq", "DequantizeLinear")]


def test_opset_outside_tensorrts_range():
    report = _checked(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [x()], [x("y")], opset=21))
    assert [p.reason for p in report.problems] == ["opset 21: TensorRT 10.0 supports ONNX opsets 9 to 20 (operators.md)"]


def test_documented_gaps_the_importer_fills_are_warnings():
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("ConstantOfShape", ["shape"], ["y"], value=numpy_helper.from_array(np.array([1], np.int64)),
                              name="ones")]
    report = _checked(_model(nodes, [x()], [x("y", I64)]))
    assert report.ok and [(w.node, w.op_type) for w in report.warnings] == [("ones", "ConstantOfShape")]
    assert "onnxOpImporters.cpp:724-735" in report.warnings[0].reason


def test_function_bodies_are_checked_per_call():
    body = [helper.make_node("Cast", ["X"], ["u"], to=TensorProto.UINT64, name="body_cast"),
            helper.make_node("Cast", ["u"], ["Y"], to=F, name="body_back")]
    function = helper.make_function("custom", "Roundtrip", ["X"], ["Y"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Roundtrip", ["x"], ["m"], domain="custom", name="call_a"),
             helper.make_node("Roundtrip", ["m"], ["y"], domain="custom", name="call_b")]
    model = _model(nodes, [x()], [x("y")], functions=[function], extra_opsets=[helper.make_opsetid("custom", 1)])
    report = _checked(model)
    assert _problems(report) == [("call_a > body_cast", "Cast"), ("call_a > body_back", "Cast"),
                                 ("call_b > body_cast", "Cast"), ("call_b > body_back", "Cast")]
    assert {p.function for p in report.problems} == {"custom::Roundtrip"}
    text = report.format()
    assert "custom::Roundtrip body node 'body_cast' (Cast): Cast to UINT64" in text and "2 call(s): 'call_a', 'call_b'" in text


# --------------------------------------------------------------------------------------------------
# exports: the graph the builder hands the parser, in both forms


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint

    root = tmp_path_factory.mktemp("parser-check")
    made = {}
    for name, model_type, quantization in [("float", "bert", "none"), ("qdq", "bert", "qdq"),
                                           ("integer", "ibert", "integer")]:
        save_checkpoint(root / f"ckpt-{name}", model_type, "text-classification")
        made[name] = exporter.export(root / f"ckpt-{name}", root / name, task="text-classification",
                                     quantization=quantization, num_calibration_samples=8, calibration_batch_size=8,
                                     validate=False, log=None)
    return made


@pytest.mark.parametrize("name", ["float", "qdq", "integer"])
def test_exports_pass_in_the_plugin_form(exports, name):
    report = check_export(exports[name], BuildOptions())
    assert report.ok, report.format()
    if name == "integer":
        assert sorted(set(report.plugins.values())) == ["ibert::IntGELU", "ibert::IntLayerNorm", "ibert::IntSoftmax"]


@pytest.mark.parametrize("name", ["float", "qdq"])
def test_float_and_qdq_exports_pass_in_fp16(exports, name):
    report = check_export(exports[name], BuildOptions(fp16=True))
    assert report.ok, report.format()
    assert report.form == "standard ops, FP16"


def test_integer_bodies_pass_the_no_plugins_form(exports):
    """Issue 16 / review D2: the TensorRT form's --no-plugins bodies use only what onnx-tensorrt's parser takes
    (no BitShift, no UINT64 casts, Reduce* axes as constants, Clip only on float)."""
    report = check_export(exports["integer"], BuildOptions(use_plugins=False))
    assert report.ok, report.format()


def test_check_command(exports, capsys):
    parser, commands = build_parser()
    ok = commands["build"].main(parser.parse_args(["build", str(exports["qdq"]), "--check"]))
    assert ok == 0 and "passes" in capsys.readouterr().out
    args = parser.parse_args(["build", str(exports["integer"]), "--check", "--no-plugins"])
    assert commands["build"].main(args) == 0 and "passes" in capsys.readouterr().out
    args = parser.parse_args(["build", str(exports["integer"]), "--check", "--fp16"])
    assert commands["build"].main(args) == 2  # a bad option, not a failed check
    assert "--fp16 does not apply to integer (I-BERT) exports" in capsys.readouterr().err


def test_build_prints_the_int8_share_of_the_graph_it_hands_tensorrt(exports, capsys):
    """Before TensorRT is needed (`--check`, and a build on a machine without it), in the export log's words:
    a qdq export's line is the one its export recorded; an integer export's is its TensorRT form's, where
    the 16-bit sites (Q, K, V, FFN input, FFN output: 5 of a layer's 6 linears) and probabilities x V are two INT8
    GEMMs each (counted from the config: RoBERTa's classification head is two float linears, no pooler)."""
    from tests.fixtures.tiny_models import tiny_config
    from trt_runtime.contract.export_dir import read_export_info
    from trt_runtime.contract.int8_share import summary_line

    parser, commands = build_parser()
    assert commands["build"].main(parser.parse_args(["build", str(exports["qdq"]), "--check"])) == 0
    recorded = summary_line(read_export_info(exports["qdq"]).int8_share)
    assert capsys.readouterr().out.splitlines()[-1] == f"{recorded} [the graph handed to TensorRT, by its Q/DQ rule]"

    layers = tiny_config("ibert", "text-classification").num_hidden_layers
    expected = (f"INT8 share: encoder linear GEMM work 100.0 % ({11 * layers} of {11 * layers} GEMMs), attention matmuls "
                f"{3 * layers} of {3 * layers}, heads and pooler 0 of 2 [the TensorRT form of the integer export handed "
                "to TensorRT, by its Q/DQ rule]")
    for flags in ([], ["--no-plugins"]):
        assert commands["build"].main(parser.parse_args(["build", str(exports["integer"]), "--check", *flags])) == 0
        assert capsys.readouterr().out.splitlines()[-1] == expected
    if importlib.util.find_spec("tensorrt") is None:  # the build itself says it first, then what it lacks
        assert commands["build"].main(parser.parse_args(["build", str(exports["integer"])])) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0] == expected and err[-1].startswith("error: TensorRT is not installed")
