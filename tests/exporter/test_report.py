"""The INT8 share report: TensorRT's explicit-quantization rule on hand-built graphs, and the exports of tiny
models of the three architectures, whose expected shares are counted from the model's config (the GEMMs
of a BERT / SqueezeBERT layer and their weight sizes), not from the code under test.

The rule (TensorRT developer guide, "Explicit Quantization"): a GEMM runs in INT8 only when every data
input comes from an int8 DequantizeLinear, through shape-only ops; docs/integer.md: 8-bit integer GEMMs
are IntMatMul, 16-bit inputs and attention probabilities IntMatMulWide.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import exporter
from exporter.__main__ import main as exporter_main
from exporter.report import format_report, int8_share
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import save_tiny, tiny_config
from trt_runtime.contract.export_dir import read_export_info

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


# --- tiny models of the three architectures --------------------------------------------------------------


def _bert_layer_weights(config):
    """Weight elements of one BERT layer's linear GEMMs, by role (Q, K, V, attention output, FFN in, FFN out)."""
    h, i = config.hidden_size, config.intermediate_size
    return {"query": h * h, "key": h * h, "value": h * h, "attention-output": h * h, "ffn-input": h * i, "ffn-output": i * h}


def _squeezebert_layer_weights(config):
    """SqueezeBERT's grouped 1x1 convolutions: out x in / groups elements each."""
    h, i = config.hidden_size, config.intermediate_size
    return {
        "query": h * h // config.q_groups, "key": h * h // config.k_groups, "value": h * h // config.v_groups,
        "attention-output": h * h // config.post_attention_groups, "ffn-input": h * i // config.intermediate_groups,
        "ffn-output": i * h // config.output_groups,
    }


def _share(weights, roles):
    return sum(weights[r] for r in roles) / sum(weights.values())


def _export(tmp_path, model_type, task, recipe):
    directory, _ = save_tiny(tmp_path / "ckpt", model_type, task)
    out = exporter.export(directory, tmp_path / "out", task=task, recipe=recipe, log=None, validate=False)
    return read_export_info(out).int8_share, out


QUICK = {"num_samples": 8, "batch_size": 8}
ADDS = ("residual-adds",)
ALL_ROLES = ("query", "key", "value", "attention-output", "ffn-input", "ffn-output")


@pytest.mark.parametrize(
    ("model_type", "task", "recipe", "int8_roles", "heads"),
    [
        # the qdq default keeps the FFN output projection's input float (DEFAULT_KEEP_FLOAT)
        ("bert", "text-classification", QuantizationRecipe(mode="qdq", **QUICK), ALL_ROLES[:5], 2),
        # residual adds float, smoothed: a Div before each smoothed site's QuantizeLinear, every linear INT8
        ("bert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=ADDS, smoothing="auto", **QUICK), ALL_ROLES, 1),
        ("bert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=(), **QUICK), ALL_ROLES, 1),
        ("squeezebert", "feature-extraction", QuantizationRecipe(mode="qdq", **QUICK), ALL_ROLES[:5], 1),
        ("squeezebert", "feature-extraction", QuantizationRecipe(mode="qdq", keep_float=ADDS, **QUICK), ALL_ROLES, 1),
        ("bert", "feature-extraction", QuantizationRecipe(mode="none"), (), 1),
    ],
    ids=["bert-qdq-default", "bert-qdq-smoothed", "bert-qdq-quantize-all", "squeezebert-qdq-default",
         "squeezebert-qdq-adds-float", "bert-float"],
)
def test_qdq_and_float_exports_report_the_share_counted_from_the_config(tmp_path, model_type, task, recipe, int8_roles, heads):
    share, _ = _export(tmp_path, model_type, task, recipe)
    config = tiny_config(model_type, task)
    layers = config.num_hidden_layers
    weights = (_squeezebert_layer_weights if model_type == "squeezebert" else _bert_layer_weights)(config)
    linear = share["linear"]
    assert linear["gemms"] == 6 * layers and linear["work"] == layers * sum(weights.values())
    assert linear["int8_work"] / linear["work"] == pytest.approx(_share(weights, int8_roles))
    assert linear["int8_gemms"] == len(int8_roles) * layers and linear["split_gemms"] == 0
    attention = share["attention"]  # scores and context per layer; both quantized unless the export is float
    assert attention["gemms"] == 2 * layers
    assert attention["int8_gemms"] == (0 if recipe.mode == "none" else 2 * layers)
    assert share["heads"] == {**share["heads"], "gemms": heads, "int8_gemms": 0}  # heads and pooler stay float
    assert len(share["float_gemms"]) == share["linear"]["gemms"] - linear["int8_gemms"] + heads + (
        attention["gemms"] - attention["int8_gemms"]
    )


@pytest.mark.parametrize(
    ("model_type", "wide", "split_roles"),
    [
        # hidden-states widens what Q, K, V read; ffn-output-input what the FFN output projection reads
        ("roberta", None, ("query", "key", "value", "ffn-output")),
        ("ibert", (), ()),
    ],
    ids=["roberta-integer-default", "ibert-integer-8-bit"],
)
def test_integer_exports_count_integer_gemms_and_split_16_bit_gemms_as_int8(tmp_path, model_type, wide, split_roles):
    recipe = QuantizationRecipe(mode="integer", wide_activations=wide, **QUICK)
    share, _ = _export(tmp_path, model_type, "feature-extraction", recipe)
    config = tiny_config(model_type)
    layers, weights = config.num_hidden_layers, _bert_layer_weights(config)
    linear, attention = share["linear"], share["attention"]
    assert linear["int8_work"] == linear["work"] == layers * sum(weights.values())
    assert linear["split_work"] / linear["work"] == pytest.approx(_share(weights, split_roles))
    assert linear["split_gemms"] == len(split_roles) * layers
    # the probabilities (0..256, 9 bits) enter the context matmul through IntMatMulWide in every layer
    assert attention["int8_gemms"] == attention["gemms"] == 2 * layers and attention["split_gemms"] == layers
    assert share["heads"]["gemms"] == 1 and share["heads"]["int8_gemms"] == 0  # the float pooler


def test_report_flag_prints_the_report_and_export_json_matches_the_graph(tmp_path, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    out = tmp_path / "out"
    argv = ["--model", str(directory), "--output", str(out), "--quantization", "qdq", "--no-validate", "--quiet",
            "--num-calibration-samples", "8", "--calibration-batch-size", "8", "--report"]
    assert exporter_main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out)  # the path stays the last line
    recorded = json.loads((out / "export.json").read_text())["int8_share"]
    assert "\n".join(printed[:-1]) == format_report(recorded)
    assert recorded == int8_share(onnx.load(str(out / "model.onnx"))).to_dict()
    assert printed[0].startswith("INT8 share: encoder linear GEMM work 75.0 % (10 of 12 GEMMs)")


def test_export_json_int8_share_is_optional_and_must_be_an_object():
    from trt_runtime.contract.export_dir import ExportDirError, ExportInfo

    spec = {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
    base = {"architecture": "bert", "model_type": "bert", "task": "feature-extraction", "quantization": "qdq",
            "opset": 17, "inputs": [spec], "outputs": [{**spec, "name": "last_hidden_state"}],
            "max_sequence_length": 64, "vocab_size": 99}
    assert ExportInfo.from_dict(base).int8_share is None  # exports made before the report
    assert ExportInfo.from_dict({**base, "int8_share": {"rule": "r"}}).int8_share == {"rule": "r"}
    with pytest.raises(ExportDirError, match="int8_share must be an object"):
        ExportInfo.from_dict({**base, "int8_share": 0.66})
