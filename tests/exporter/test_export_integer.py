"""integer export: the `ibert` function bodies against the NumPy integer reference, and I-BERT models end to end.

The function bodies must match `trt_runtime.contract.ibert` exactly (bitwise), in ONNX
Runtime and in onnx.reference, on random integer inputs at several scales. Whole models are checked
against the PyTorch integer module rebuilt from the export's calibration.json, with the Hugging Face
float model giving the quantization error the tolerance is measured against.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import exporter
import models
from exporter.__main__ import main
from exporter.ibert_functions import ibert_function
from exporter.validation import TOLERANCES
from models.ibert import DEFAULT_WIDE_ACTIVATIONS
from models.quantization.integer.modules import uncalibrated
from models.quantization.integer.ops import exp_values
from tests.fixtures.tiny_models import CASES, hf_outputs, padded_batch, save_tiny
from trt_runtime.contract import ibert as ref
from trt_runtime.contract.export_dir import read_export_info

# --- the function bodies -----------------------------------------------------------------------------


def single_op_model(op_type: str, attributes: dict, rank: int, opset: int) -> onnx.ModelProto:
    names = ["X", "weight", "bias"] if op_type == "IntLayerNorm" else ["X"]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None] * rank)]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in names[1:]]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * rank)
    node = helper.make_node(op_type, names, ["Y"], domain="ibert", **attributes)
    model = helper.make_model(
        helper.make_graph([node], op_type, inputs, [output]),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ibert", 1)],
        functions=[ibert_function(op_type, opset)],
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0]


def assert_exact(model, feeds, expected):
    from_ort, from_reference = run_both(model, feeds)
    np.testing.assert_array_equal(from_ort, expected)
    np.testing.assert_array_equal(from_reference, expected)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("scale", [3e-4, 2e-3, 0.01, 0.1])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int_gelu_body_is_the_reference(scale, per_channel, opset):
    rng = np.random.default_rng(int(scale * 1e5) + opset)
    channels = 24
    scales = (scale * rng.uniform(0.5, 2.0, channels if per_channel else 1)).astype(np.float32)
    attributes = ref.gelu_attributes(scales)
    x = (rng.integers(-int(8 / scale), int(8 / scale), (3, 5, channels)) * scales).astype(np.float32)
    x[0, 0, :4] = [0.0, -0.0, scales[0] * 1e6, -scales[0] * 1e6]  # zero, and saturation of the erf range
    assert_exact(single_op_model("IntGELU", attributes, 3, opset), {"X": x}, ref.ibert_op("IntGELU", x, **attributes))


@pytest.mark.filterwarnings("ignore:overflow encountered in divide")  # -3.4e38 / scale -> -inf, then clipped
@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize(("scale", "axis", "output_bits"), [(0.08, -1, 8), (0.02, -1, 8), (0.004, 3, 8), (0.05, 1, 16)])
def test_int_softmax_body_is_the_reference(scale, axis, output_bits, opset):
    rng = np.random.default_rng(int(scale * 1e4) + opset)
    x = (rng.integers(-int(12 / scale), int(12 / scale), (2, 3, 6, 7)) * scale).astype(np.float32)
    x[0, 0, 0] = -3.4e38  # a masked row entry (the attention mask adds float32's minimum)
    # exp_scale as the model's 16-bit QuantAct sets it: from the largest exp integer
    exp_scale = float(np.float32(exp_values(torch.from_numpy(x), scale, axis).max().item() / (2**15 - 1)))
    attributes = ref.softmax_attributes(scale, exp_scale, output_bits, axis)
    expected = ref.ibert_op("IntSoftmax", x, **attributes)
    assert expected.max() > 0.1  # a real softmax, not all zeros
    assert_exact(single_op_model("IntSoftmax", attributes, 4, opset), {"X": x}, expected)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize(("scale", "shift", "axis"), [(0.05, 0, -1), (2e-3, 3, -1), (1e-4, 8, -1), (0.01, 1, 1)])
def test_int_layernorm_body_is_the_reference(scale, shift, axis, opset):
    rng = np.random.default_rng(shift + opset)
    channels = 32
    shape = (2, 5, channels) if axis == -1 else (2, channels, 5)
    weight = rng.uniform(0.3, 2.0, channels).astype(np.float32)
    bias = rng.normal(0.0, 0.2, channels).astype(np.float32)
    x = (rng.integers(-int(6 / scale), int(6 / scale), shape) * scale).astype(np.float32)
    x[0, 0] = scale * 7  # a constant row: variance 0
    attributes = ref.layernorm_attributes(scale, shift, weight, axis)
    expected = ref.ibert_op("IntLayerNorm", x, weight, bias, **attributes)
    assert_exact(single_op_model("IntLayerNorm", attributes, 3, opset), {"X": x, "weight": weight, "bias": bias}, expected)


def test_function_defaults_and_contract():
    softmax = ibert_function("IntSoftmax", 17)
    assert (softmax.domain, softmax.name) == ("ibert", "IntSoftmax")
    assert {a.name: a.i for a in softmax.attribute_proto} == {"axis": -1, "output_bits": 8}
    assert set(softmax.attribute) == {"input_scale", "exp_scale", "output_scale"}
    assert list(ibert_function("IntLayerNorm", 17).input) == ["X", "weight", "bias"]
    for op in ("IntGELU", "IntSoftmax", "IntLayerNorm"):
        assert {n.domain for n in ibert_function(op, 17).node} == {""}  # standard ops only


# --- whole models ------------------------------------------------------------------------------------

INTEGER_CASES = [case for case in CASES if case[0] != "squeezebert"]
FAST = {("ibert", "feature-extraction"), ("roberta", "text-classification"), ("bert", "multiple-choice"),
        ("ibert", "fill-mask"), ("bert", "text-generation")}
SHAPES = [(1, 6), (1, 21), (4, 6), (4, 21)]


def rebuilt_integer_module(directory, task, out):
    """The PyTorch integer module with the export's calibration.json (its force_dequant and wide_activations)."""
    model = models.load(directory, task=task, quantization="integer", calibration=out / "calibration.json")
    assert not uncalibrated(model)
    return model


@pytest.mark.parametrize(
    ("model_type", "task"),
    [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow, id="-".join(c)) for c in INTEGER_CASES],
)
def test_integer_export_matches_the_integer_module(tmp_path, model_type, task):
    directory, reference = save_tiny(tmp_path / "ckpt", model_type, task)
    out = exporter.export(
        directory, tmp_path / "out", task=task, quantization="integer", num_calibration_samples=8,
        calibration_batch_size=8, validate=False, log=None,
    )
    info = read_export_info(out)
    assert info.quantization == "integer" and info.force_dequant == "none"
    assert info.custom_ops == ["ibert::IntGELU", "ibert::IntLayerNorm", "ibert::IntSoftmax"]
    integer = rebuilt_integer_module(directory, task, out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    for batch, seq in SHAPES:
        feeds = padded_batch(model_type, batch=batch, seq=seq, choices=3 if task == "multiple-choice" else None, seed=seq)
        feeds = {name: feeds[name] for name in info.input_names}
        with torch.no_grad():
            expected = integer(**feeds)
        floats = hf_outputs(reference, task, feeds)
        got = dict(zip(info.output_names, session.run(None, {k: v.numpy() for k, v in feeds.items()})))
        for name in info.output_names:
            problem = TOLERANCES["integer"].violation(got[name], expected[name].numpy(), floats[name].numpy())
            assert problem is None, f"{name} at batch {batch}, sequence {seq}: {problem}"


@pytest.mark.filterwarnings("ignore:overflow encountered in divide")  # masked scores / scale -> -inf, clipped
def test_integer_graph_carries_its_functions(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "ibert", "text-classification")
    out = exporter.export(directory, tmp_path / "out", task="text-classification", quantization="integer",
                          num_calibration_samples=8, calibration_batch_size=8, opset=19, log=None)
    model = onnx.load(str(out / "model.onnx"))
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 19), ("ibert", 1)}
    assert sorted((f.domain, f.name) for f in model.functions) == [
        ("ibert", "IntGELU"), ("ibert", "IntLayerNorm"), ("ibert", "IntSoftmax")]
    ops = [n for n in model.graph.node if n.domain == "ibert"]
    assert sorted({n.op_type for n in ops}) == ["IntGELU", "IntLayerNorm", "IntSoftmax"]
    assert len([n for n in ops if n.op_type == "IntSoftmax"]) == 2  # one per layer
    # onnx.reference runs the whole model through the function bodies (its DequantizeLinear needs opset 19)
    integer = rebuilt_integer_module(directory, "text-classification", out)
    feeds = {k: v for k, v in padded_batch("ibert", batch=2, seq=8).items() if k != "token_type_ids"}
    got = ReferenceEvaluator(str(out / "model.onnx")).run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        expected = integer(**feeds)["logits"].numpy()
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize(("force_dequant", "ops"), [("gelu", ["IntLayerNorm", "IntSoftmax"]), ("nonlinear", [])])
def test_force_dequant_keeps_those_ops_in_float(tmp_path, force_dequant, ops):
    directory, _ = save_tiny(tmp_path / "ckpt", "roberta", "feature-extraction")
    out = exporter.export(directory, tmp_path / "out", quantization="integer", force_dequant=force_dequant,
                          num_calibration_samples=8, calibration_batch_size=8, log=None)
    info = read_export_info(out)
    assert info.force_dequant == force_dequant
    assert info.custom_ops == [f"ibert::{op}" for op in ops]
    model = onnx.load(str(out / "model.onnx"))
    assert sorted({n.op_type for n in model.graph.node if n.domain == "ibert"}) == ops
    assert sorted(f.name for f in model.functions) == ops


# --- wide (16-bit) activation sites ------------------------------------------------------------------

LINEARS = ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
           "intermediate/dense", "output/dense")
#: the linears each site feeds (their activation input is then a 16-bit Round/Clip/Mul, not an int8 Q/DQ)
FED_BY = {"hidden-states": LINEARS[:3], "ffn-output-input": LINEARS[5:]}


def linear_input_producers(model: onnx.ModelProto) -> dict[str, str]:
    """{"layer.N/<linear>": op type producing its MatMul's activation input}."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        for linear in LINEARS:
            layer = node.name.split("/encoder/")[-1].split("/")[0]
            if node.op_type == "MatMul" and node.name.endswith(f"/{layer}/{linear}/MatMul"):
                found[f"{layer}/{linear}"] = producers[node.input[0]].op_type
    return found


@pytest.mark.parametrize("sites", [None, ["none"], ["ffn-output-input"]], ids=["default", "none", "ffn-output-input"])
def test_wide_activations_through_the_command_line(tmp_path, sites, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    out = tmp_path / "out"
    argv = ["--model", str(directory), "--output", str(out), "--quantization", "integer", "--quiet",
            "--num-calibration-samples", "8", "--calibration-batch-size", "8"]
    for site in sites or []:
        argv += ["--wide-activations", site]
    assert main(argv) == 0, capsys.readouterr().err  # validation included
    wide = list(DEFAULT_WIDE_ACTIVATIONS) if sites is None else [s for s in sites if s != "none"]
    assert read_export_info(out).calibration["wide_activations"] == wide
    calibration = json.loads((out / "calibration.json").read_text())
    assert (calibration["mode"], calibration["method"], calibration["wide_activations"]) == ("integer", "ibert-minmax", wide)

    producers = linear_input_producers(onnx.load(str(out / "model.onnx")))
    assert len(producers) == 2 * len(LINEARS)
    widened = {linear for site in wide for linear in FED_BY[site]}
    for name, op_type in producers.items():
        # int8 Q/DQ -> MatMul (TensorRT: INT8 GEMM), or 16-bit round(x / s) * s in plain ops (a float GEMM)
        assert op_type == ("Mul" if name.split("/", 1)[1] in widened else "DequantizeLinear"), name


def test_wide_activations_errors_on_the_command_line(tmp_path, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    base = ["--model", str(directory), "--output", str(tmp_path / "out")]
    assert main([*base, "--quantization", "qdq", "--wide-activations", "hidden-states"]) == 2
    assert "--wide-activations applies to --quantization integer only" in capsys.readouterr().err
    assert main([*base, "--quantization", "integer", "--wide-activations", "none", "--wide-activations",
                 "hidden-states"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quantization", ["integer", "qdq"])
def test_quantized_tolerance_accepts_flip_cascades_but_not_extra_error(quantization):
    """Quantized validation: beyond 0.75 x the quantization error, ONNX Runtime must be as close to float as torch."""
    rng = np.random.default_rng(0)
    floats = rng.normal(0, 1, (4, 16, 32)).astype(np.float32)
    torch_out = floats + rng.normal(0, 0.2, floats.shape).astype(np.float32)  # quantization error ~0.2
    # another sample of the same quantization noise (what a cascade of one-step flips gives): 1.4 x q from torch
    cascade = floats + rng.normal(0, 0.2, floats.shape).astype(np.float32)
    tolerance = TOLERANCES[quantization]
    assert tolerance.violation(cascade, torch_out, floats) is None
    without_float_rule = dataclasses.replace(tolerance, float_error_ratio=None)
    assert "relative L2 error" in without_float_rule.violation(cascade, torch_out, floats)  # the first rule alone refuses
    # an export bug adds its own error on top: 1.6 x further from float than torch
    broken = cascade + rng.normal(0, 0.25, floats.shape).astype(np.float32)
    assert "error to float is 1.6" in tolerance.violation(broken, torch_out, floats)
    # and one that lost its quantization (the float model itself) is as wrong
    assert "error to float is 0 x" in tolerance.violation(floats, torch_out, floats)
