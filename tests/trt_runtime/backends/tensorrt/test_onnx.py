"""The builder's ONNX preparation (trt_runtime.backends.tensorrt.onnx_prep): function bodies out, plugin inputs in.

Checked with onnx.checker and read back with onnx-graphsurgeon; the constant tables are compared
with the NumPy reference's own constant derivations (trt_runtime.contract.ibert).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

from tests.fixtures.tensorrt_test_models import HELPER_DOMAIN, ibert_attributes, ibert_graph_model
from trt_runtime.backends.tensorrt.onnx_prep import (
    OnnxForTensorRTError,
    has_qdq,
    ibert_op_types,
    keep_function_bodies,
    prepare_for_tensorrt,
    strip_plugin_functions,
)
from trt_runtime.backends.tensorrt.plugins import PLUGIN_NAMESPACE, PLUGINS
from trt_runtime.contract import ibert as ref


def _node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op_type)


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_stripped_model_has_exactly_the_plugin_nodes_and_no_functions():
    model = ibert_graph_model()
    onnx.checker.check_model(model, full_check=True)
    prepared = strip_plugin_functions(model)
    stripped = prepared.model
    onnx.checker.check_model(stripped, full_check=True)

    assert len(stripped.functions) == 0  # the ibert bodies and the helper only they called
    graph = gs.import_onnx(stripped)
    custom = sorted(f"{n.domain}::{n.op}" for n in graph.nodes if n.domain not in (None, "", "ai.onnx"))
    assert custom == sorted(spec.plugin_id for spec in PLUGINS.values())
    assert prepared.plugins == sorted(spec.plugin_id for spec in PLUGINS.values())
    for node in graph.nodes:
        if node.domain == "ibert":
            assert node.attrs["plugin_namespace"] == PLUGIN_NAMESPACE
            assert node.attrs["plugin_version"] == "1"
    domains = {o.domain for o in stripped.opset_import}
    assert domains == {"", "ibert"}  # the helper domain went with the bodies
    assert HELPER_DOMAIN in {o.domain for o in model.opset_import}  # ...and the input model is untouched
    assert len(model.functions) == 4


def test_tables_are_the_reference_constants():
    attrs = ibert_attributes()
    stripped = strip_plugin_functions(ibert_graph_model()).model

    gelu = _node(stripped, "IntGELU")
    assert len(gelu.input) == 3
    ints, floats = _initializer(stripped, gelu.input[1]), _initializer(stripped, gelu.input[2])
    expected = ref.gelu_constants(attrs["IntGELU"]["input_scale"])
    assert ints.dtype == np.int64 and ints.shape == (3, 8)
    np.testing.assert_array_equal(ints, np.stack([expected.b_int, expected.c_int, expected.shift_int]))
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats[0], np.asarray(attrs["IntGELU"]["input_scale"], np.float32))
    np.testing.assert_array_equal(floats[1], expected.output_scale)

    layernorm = _node(stripped, "IntLayerNorm")
    assert list(layernorm.input[:3]) == ["X_dq", "ln.weight", "ln.bias"]
    expected_ln = ref.layernorm_constants(attrs["weight"]["value"], attrs["bias"]["value"])
    np.testing.assert_array_equal(_initializer(stripped, layernorm.input[3]), expected_ln.bias_int[None])
    np.testing.assert_array_equal(_initializer(stripped, layernorm.input[4]), expected_ln.output_scale[None])

    assert list(_node(stripped, "IntSoftmax").input) == ["scores"]  # scalar constants: compiled in


def test_node_attributes_are_kept_for_the_plugin_fields():
    attrs = ibert_attributes()
    stripped = strip_plugin_functions(ibert_graph_model()).model
    for op in PLUGINS:
        node = {a.name: helper.get_attribute_value(a) for a in _node(stripped, op).attribute}
        for name, _ in PLUGINS[op].attributes:
            np.testing.assert_array_equal(np.asarray(node[name]), np.asarray(attrs[op][name]))


def test_no_plugins_keeps_the_model_as_exported():
    model = ibert_graph_model()
    prepared = prepare_for_tensorrt(model, use_plugins=False)
    assert prepared.model is model and prepared.plugins == []
    assert prepared.ibert_ops == ["IntGELU", "IntLayerNorm", "IntSoftmax"]


def test_no_plugins_needs_the_function_bodies():
    with pytest.raises(OnnxForTensorRTError, match="--no-plugins needs the ONNX function bodies.*IntGELU"):
        keep_function_bodies(ibert_graph_model(with_functions=False))


def test_model_without_ibert_nodes_passes_through():
    model = ibert_graph_model()
    del model.graph.node[2:]
    model.graph.output[0].name = "X_dq"
    prepared = prepare_for_tensorrt(model)
    assert prepared.plugins == [] and prepared.has_qdq


def test_qdq_detection():
    assert has_qdq(ibert_graph_model(with_qdq=True))
    assert not has_qdq(ibert_graph_model(with_qdq=False))
    assert ibert_op_types(ibert_graph_model()) == ["IntGELU", "IntLayerNorm", "IntSoftmax"]


def _edit(op_type: str, edit) -> onnx.ModelProto:
    model = ibert_graph_model()
    edit(_node(model, op_type))
    return model


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.parametrize(
    ("op_type", "edit", "message"),
    [
        ("IntGELU", lambda n: setattr(n, "op_type", "IntTanh"), r"'layer/gelu' \(ibert::IntTanh\) has no TensorRT plugin.*--no-plugins"),
        ("IntSoftmax", lambda n: _set_attribute(n, "exp_scale", None), r"'layer/softmax'.*lacks the attribute 'exp_scale'"),
        ("IntSoftmax", lambda n: _set_attribute(n, "axis", 1.5), r"attribute 'axis' is FLOAT, the plugin needs INT"),
        ("IntGELU", lambda n: _set_attribute(n, "output_scale", [0.5] * 8), r"'layer/gelu'.*output_scale does not match"),
        ("IntSoftmax", lambda n: _set_attribute(n, "output_scale", 0.25), r"output_scale does not match"),
        ("IntLayerNorm", lambda n: _set_attribute(n, "shift", -1), r"'layer/ln'.*shift must be >= 0"),
        ("IntGELU", lambda n: _set_attribute(n, "input_scale", [0.0] * 8), r"input_scale must be positive"),
        ("IntLayerNorm", lambda n: n.input.append("extra"), r"has 4 inputs and 1 outputs; the plugin takes 3"),
        ("IntGELU", lambda n: _set_attribute(n, "plugin_namespace", "other"), r"already has plugin_namespace='other'"),
    ],
)
def test_bad_nodes_are_refused_with_the_node_and_the_fix(op_type, edit, message):
    with pytest.raises(OnnxForTensorRTError, match=message):
        strip_plugin_functions(_edit(op_type, edit))


def test_layernorm_weight_must_be_constant():
    model = ibert_graph_model()
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(weight.name, onnx.TensorProto.FLOAT, [8]))
    del model.graph.initializer[0]
    with pytest.raises(OnnxForTensorRTError, match="input 'ln.weight' must be a constant"):
        strip_plugin_functions(model)


def test_layernorm_weight_from_a_constant_node():
    model = ibert_graph_model()
    weight = model.graph.initializer[0]
    model.graph.node.insert(0, helper.make_node("Constant", [], [weight.name], value=weight))
    del model.graph.initializer[0]
    stripped = strip_plugin_functions(model).model
    onnx.checker.check_model(stripped, full_check=True)
    expected = ref.layernorm_constants(ibert_attributes()["weight"]["value"], ibert_attributes()["bias"]["value"])
    np.testing.assert_array_equal(_initializer(stripped, _node(stripped, "IntLayerNorm").input[3])[0], expected.bias_int)


def test_external_weights_are_read_from_the_model_directory(tmp_path):
    model = ibert_graph_model()
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    lazy = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    stripped = prepare_for_tensorrt(lazy, base_dir=tmp_path).model
    expected = ref.layernorm_constants(ibert_attributes()["weight"]["value"], ibert_attributes()["bias"]["value"])
    np.testing.assert_array_equal(_initializer(stripped, _node(stripped, "IntLayerNorm").input[3])[0], expected.bias_int)


def test_ibert_node_inside_another_function_is_refused():
    model = ibert_graph_model()
    wrapper = helper.make_function(
        "custom", "Wrap", ["X"], ["Y"], [helper.make_node("IntGELU", ["X"], ["Y"], domain="ibert")],
        [helper.make_opsetid("ibert", 1)],
    )
    model.functions.append(wrapper)
    with pytest.raises(OnnxForTensorRTError, match="custom::Wrap contains ibert nodes.*--no-plugins"):
        strip_plugin_functions(model)


def test_table_names_do_not_collide():
    model = ibert_graph_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "layer_gelu.ibert_int_constants"))
    stripped = strip_plugin_functions(model).model
    names = [t.name for t in stripped.graph.initializer]
    assert len(names) == len(set(names))
    assert _node(stripped, "IntGELU").input[1] == "layer_gelu.ibert_int_constants_2"


def test_exporter_function_bodies_are_stripped():
    model = ibert_graph_model(exporter_bodies=True)
    onnx.checker.check_model(model, full_check=True)
    assert {f.name for f in model.functions} == set(PLUGINS)
    prepared = strip_plugin_functions(model)
    onnx.checker.check_model(prepared.model, full_check=True)
    assert len(prepared.model.functions) == 0
    graph = gs.import_onnx(prepared.model)
    assert sorted(n.op for n in graph.nodes if n.domain == "ibert") == sorted(PLUGINS)


def test_attributes_left_at_their_defaults_are_written_out():
    """The exporter's functions default IntSoftmax's axis/output_bits and IntLayerNorm's axis; the parser
    passes a plugin only the attributes on the node, so the builder writes the defaults there."""
    model = ibert_graph_model(exporter_bodies=True)
    for op, names in (("IntSoftmax", ("axis", "output_bits")), ("IntLayerNorm", ("axis",))):
        for name in names:
            _set_attribute(_node(model, op), name, None)
    stripped = strip_plugin_functions(model).model
    softmax = {a.name: helper.get_attribute_value(a) for a in _node(stripped, "IntSoftmax").attribute}
    layernorm = {a.name: helper.get_attribute_value(a) for a in _node(stripped, "IntLayerNorm").attribute}
    assert (softmax["axis"], softmax["output_bits"], layernorm["axis"]) == (-1, 8, -1)


@pytest.fixture(scope="module")
def integer_export(tmp_path_factory):
    """A real I-BERT integer export of a tiny model (exporter.export), as the builder gets it."""
    import exporter
    from tests.fixtures.tiny_models import save_tiny

    root = tmp_path_factory.mktemp("integer")
    checkpoint, _ = save_tiny(root / "checkpoint", "ibert", "text-classification")
    return exporter.export(checkpoint, root / "export", task="text-classification", quantization="integer",
                           num_calibration_samples=16, validate=False, log=None)


def test_real_integer_export(integer_export):
    from trt_runtime.backends.tensorrt.integer_form import INTEGER_ONLY_OPS, tensorrt_form
    from trt_runtime.contract.export_dir import read_export_info

    model = onnx.load(str(integer_export / "model.onnx"), load_external_data=False)
    plugin_ids = sorted(spec.plugin_id for spec in PLUGINS.values())
    assert read_export_info(integer_export).custom_ops == sorted(plugin_ids + [f"ibert::{op}" for op in INTEGER_ONLY_OPS])
    # the builder parses the TensorRT form (integer GEMMs and requantizations as Q/DQ), its nonlinearities plugins
    before = sorted((n.name, n.op_type) for n in tensorrt_form(model).graph.node if n.domain == "ibert")
    prepared = prepare_for_tensorrt(model, base_dir=integer_export)
    stripped = prepared.model
    onnx.checker.check_model(stripped, full_check=True)
    assert len(stripped.functions) == 0 and prepared.has_qdq
    assert {o.domain for o in stripped.opset_import} == {"", "ibert"}
    graph = gs.import_onnx(stripped)
    after = sorted((n.name, n.op) for n in graph.nodes if n.domain == "ibert")
    assert after == before and {op for _, op in after} == set(PLUGINS)  # same nodes, now plugins
    values = {t.name: numpy_helper.to_array(t) for t in stripped.graph.initializer}
    for node in stripped.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "IntGELU":
            expected = ref.gelu_constants(attrs["input_scale"])
            np.testing.assert_array_equal(values[node.input[1]], np.stack([expected.b_int, expected.c_int, expected.shift_int]))
        elif node.op_type == "IntLayerNorm":
            expected_ln = ref.layernorm_constants(values[node.input[1]], values[node.input[2]])
            np.testing.assert_array_equal(values[node.input[3]][0], expected_ln.bias_int)
            np.testing.assert_array_equal(values[node.input[4]][0], expected_ln.output_scale)
    kept = prepare_for_tensorrt(model, use_plugins=False).model  # --no-plugins: the form with its function bodies
    assert sorted(f.name for f in kept.functions) == sorted(PLUGINS)


def test_the_aot_attribute_is_the_strict_request():
    """TensorRT 10.9+'s parser reads the node attribute `aot` (1: kSTRICT_AOT, 0: kSTRICT_JIT; onnx-tensorrt
    importerUtils.cpp `createPlugin`); NVIDIA's sample writes it as a bool, which ONNX stores as INT."""
    for aot, expected in ((True, 1), (False, 0)):
        stripped = strip_plugin_functions(ibert_graph_model(), aot=aot).model
        onnx.checker.check_model(stripped, full_check=True)
        for op in PLUGINS:
            attribute = next(a for a in _node(stripped, op).attribute if a.name == "aot")
            assert attribute.type == onnx.AttributeProto.INT and attribute.i == expected
    untouched = strip_plugin_functions(ibert_graph_model()).model  # TensorRT 10.6-10.8: no such attribute
    assert not any(a.name == "aot" for n in untouched.graph.node for a in n.attribute)
    assert helper.make_attribute("aot", True).type == onnx.AttributeProto.INT  # what the sample's bool becomes


def test_value_types_type_plugin_outputs_like_their_input():
    from trt_runtime.backends.tensorrt.onnx_prep import value_types

    stripped = strip_plugin_functions(ibert_graph_model()).model
    types = value_types(stripped)
    # X -> Q/DQ -> IntLayerNorm (plugin) -> IntGELU (plugin) -> Transpose/MatMul -> IntSoftmax (plugin)
    for name in ("X_dq", "ln_out", "gelu_out", "gelu_t", "scores", "probs"):
        assert types[name] == onnx.TensorProto.FLOAT, name
    assert types["X_q"] == onnx.TensorProto.INT8
