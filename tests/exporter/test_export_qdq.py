"""qdq export: every architecture x task head through ONNX Runtime, and the Q/DQ layout TensorRT needs.

References: the PyTorch qdq module rebuilt from the export's own calibration.json (models.load), and the
Hugging Face float model (the quantization error the tolerance is measured against); weight integers
are recomputed in NumPy from the Hugging Face weights and calibration.json's amax.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import exporter
import models
from exporter.qdq import QdqLayoutError, layout_for_tensorrt
from exporter.validation import TOLERANCES
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import CASES, hf_outputs, padded_batch, save_tiny
from tests.fixtures.tiny_tokenizers import save_tiny_tokenizer
from trt_runtime.contract.export_dir import read_export_info

SHAPES = [(1, 6), (1, 21), (4, 6), (4, 21)]  # (batch, sequence); the export traced (2, 16)
FAST = {("bert", t) for t in ("feature-extraction", "text-generation", "next-sentence-prediction")} | {
    ("roberta", "fill-mask"), ("ibert", "question-answering"), ("squeezebert", "multiple-choice"),
    ("squeezebert", "token-classification"),
}
QDQ_CASES = [
    pytest.param(*case, marks=() if case in FAST else pytest.mark.slow, id="-".join(case)) for case in CASES
]
# keep_float=(): these tests check QDQBERT's full placement (every site quantized); the exporter's
# default smooths and keeps the residual adds float (test_default_keeps_sensitive_sites_float)
QUICK_CALIBRATION = QuantizationRecipe(mode="qdq", num_samples=8, batch_size=8, keep_float=())


def export_qdq(tmp_path, model_type, task, **kwargs):
    """Export without the built-in validation: these tests check the file themselves, independently."""
    directory, reference = save_tiny(tmp_path / "ckpt", model_type, task)
    out = exporter.export(
        directory, tmp_path / "out", task=task, recipe=QUICK_CALIBRATION, log=None, validate=False, **kwargs
    )
    return directory, reference, out


def feeds_for(model_type, task, batch, seq, names):
    feeds = padded_batch(model_type, batch=batch, seq=seq, choices=3 if task == "multiple-choice" else None, seed=seq)
    return {name: feeds[name] for name in names}


@pytest.mark.parametrize(("model_type", "task"), QDQ_CASES)
def test_qdq_export_matches_the_quantized_module(tmp_path, model_type, task):
    directory, reference, out = export_qdq(tmp_path, model_type, task)
    info = read_export_info(out)
    assert info.quantization == "qdq" and info.calibration["method"] == "percentile"
    quantized = models.load(directory, task=task, quantization="qdq", calibration=out / "calibration.json")
    session = ort.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"],
        sess_options=_no_optimizations(),
    )
    for batch, seq in SHAPES:
        feeds = feeds_for(model_type, task, batch, seq, info.input_names)
        with torch.no_grad():
            expected = quantized(**feeds)
        floats = hf_outputs(reference, task, feeds)
        got = dict(zip(info.output_names, session.run(None, {k: v.numpy() for k, v in feeds.items()})))
        for name in info.output_names:
            assert got[name].shape == tuple(expected[name].shape)
            problem = TOLERANCES["qdq"].violation(got[name], expected[name].numpy(), floats[name].numpy())
            assert problem is None, f"{name} at batch {batch}, sequence {seq}: {problem}"
            # a real check, not a vacuous one: the quantized module differs from the float one
            assert not np.allclose(expected[name].numpy(), floats[name].numpy(), atol=1e-6)


def _no_optimizations() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def test_reference_evaluator_runs_the_qdq_graph(tmp_path):
    # onnx.reference implements DequantizeLinear from opset 19 (the int8 semantics are those of opset 13)
    directory, _, out = export_qdq(tmp_path, "bert", "text-classification", opset=19)
    quantized = models.load(directory, task="text-classification", quantization="qdq", calibration=out / "calibration.json")
    feeds = feeds_for("bert", "text-classification", 2, 9, ["input_ids", "attention_mask", "token_type_ids"])
    got = ReferenceEvaluator(str(out / "model.onnx")).run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        expected = quantized(**feeds)["logits"].numpy()
    assert np.abs(got - expected).max() <= 1e-4  # one small batch: no rounding flips to cascade


def _producer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


@pytest.mark.parametrize(("model_type", "task"), [("bert", "question-answering"), ("squeezebert", "text-classification")])
def test_qdq_layout_is_what_tensorrt_takes(tmp_path, model_type, task):
    directory, reference, out = export_qdq(tmp_path, model_type, task)
    model = onnx.load(str(out / "model.onnx"))
    assert model.opset_import[0].version >= 13
    graph = gs.import_onnx(model)
    calibration = json.loads((out / "calibration.json").read_text())
    quantizers = calibration["quantizers"]
    weight_quantizers = [n for n in quantizers if n.endswith("_weight_quantizer")]

    quantize = [n for n in graph.nodes if n.op == "QuantizeLinear"]
    dequantize = [n for n in graph.nodes if n.op == "DequantizeLinear"]
    for node in quantize + dequantize:
        scale, zero_point = node.inputs[1], node.inputs[2]
        assert isinstance(scale, gs.Constant) and isinstance(zero_point, gs.Constant), node.name
        assert zero_point.values.dtype == np.int8 and not zero_point.values.any(), node.name
        assert (scale.values > 0).all(), node.name
    # activations: per-tensor pairs, never on a constant; no Cast or Transpose between DQ and its consumer
    for q in quantize:
        assert not isinstance(q.inputs[0], gs.Constant)
        assert q.inputs[1].values.size == 1
        assert {c.op for c in q.outputs[0].outputs} == {"DequantizeLinear"}
    consumers = {c.op for dq in dequantize for c in dq.outputs[0].outputs}
    assert consumers <= {"MatMul", "Conv", "Add", "Gemm"}, consumers
    # weights: int8 initializers + DequantizeLinear, per output channel; every weight quantizer is there
    weight_dqs = [dq for dq in dequantize if isinstance(dq.inputs[0], gs.Constant)]
    assert len(weight_dqs) == len(weight_quantizers)
    hf_weights = dict(reference.named_parameters())
    for dq in weight_dqs:
        integers, scale = dq.inputs[0].values, dq.inputs[1].values
        assert integers.dtype == np.int8
        (consumer,) = dq.outputs[0].outputs
        name = dq.inputs[0].name.removesuffix(".int8").removesuffix(".T")
        hf_name = name.removeprefix("bert.").removeprefix("transformer.") if model_type == "squeezebert" and task == "feature-extraction" else name
        weight = hf_weights[hf_name].detach().numpy()
        if name.removesuffix(".weight") in calibration.get("smoothing", {}):  # SmoothQuant's W diag(s) (docs/qdq.md)
            weight = weight * np.asarray(calibration["smoothing"][name.removesuffix(".weight")], np.float32)
        amax = np.asarray(quantizers[name.removesuffix(".weight") + "._weight_quantizer"], np.float32).reshape(-1)
        expected = np.clip(np.rint(weight / (amax / 127).reshape((-1,) + (1,) * (weight.ndim - 1))), -127, 127)
        if consumer.op == "MatMul":  # [in, out] operand: the output channels are axis 1
            assert dq.attrs["axis"] == 1 and scale.size == integers.shape[1]
            np.testing.assert_array_equal(integers, expected.T.astype(np.int8))
        else:  # Conv (SqueezeBERT) and Gemm take [out, in, ...]: axis 0
            assert consumer.op in ("Conv", "Gemm") and dq.attrs["axis"] == 0 and scale.size == integers.shape[0]
            np.testing.assert_array_equal(integers, expected.astype(np.int8))
        np.testing.assert_allclose(scale, amax / 127, rtol=1e-6)
    assert not any(i.data_type == TensorProto.FLOAT and i.name.endswith("weight") and "encoder" in i.name
                   and "LayerNorm" not in i.name and "layernorm" not in i.name for i in model.graph.initializer)
    # activation quantizers: one pair each, or merged with an equal one on the same tensor
    activation_quantizers = len(quantizers) - len(weight_quantizers)
    assert len(quantize) <= activation_quantizers
    reads = {q.inputs[0].name for q in quantize}
    assert len(reads) == len(quantize)  # nothing quantized twice with the same scale


def test_qdq_rewrite_changes_no_number(tmp_path):
    """int8 weights, folded transposes and merged pairs compute exactly what torch's raw Q/DQ graph computes."""
    from exporter.pipeline import _clean_up
    from exporter.sample_inputs import generated_feeds, trace_shape
    from exporter.signature import signature_of
    from exporter.torch_export import torchscript_export

    directory, _, out = export_qdq(tmp_path, "bert", "token-classification")
    model = models.load(directory, task="token-classification", quantization="qdq", calibration=out / "calibration.json")
    signature = signature_of(model)
    example = generated_feeds(signature, trace_shape(signature, 64), 99, 0)
    raw = torchscript_export(model, signature, example, tmp_path / "raw.onnx", 17)
    clean = _clean_up(raw, model, lambda _: None)
    assert sum(n.op_type == "QuantizeLinear" for n in clean.graph.node) < sum(
        n.op_type == "QuantizeLinear" for n in raw.graph.node
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    raw_session = ort.InferenceSession(str(tmp_path / "raw.onnx"), options)
    clean_session = ort.InferenceSession(clean.SerializeToString(), options)
    feeds = {k: v.numpy() for k, v in feeds_for("bert", "token-classification", 3, 11, signature.input_names).items()}
    np.testing.assert_array_equal(raw_session.run(None, feeds)[0], clean_session.run(None, feeds)[0])


def test_calibration_on_text_with_a_named_percentile(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "text-classification")
    save_tiny_tokenizer(directory, "bert")
    data = tmp_path / "calibration.txt"
    data.write_text("the movie was good\nthe film was bad\tnot good\nwhat a great day\n")
    out = exporter.export(
        directory, tmp_path / "out", task="text-classification", quantization="qdq", calibration_data=data,
        calibration_method="percentile-99.9", log=None,
    )
    info = read_export_info(out)
    assert info.calibration["method"] == "percentile" and info.calibration["percentile"] == 99.9
    assert info.calibration["data"] == str(data) and info.calibration["num_samples"] == 3
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["method"] == "percentile" and calibration["percentile"] == 99.9
    assert (out / "tokenizer.json").exists()


def test_bad_calibration_data_is_a_clear_error(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "text-classification")
    save_tiny_tokenizer(directory, "bert")
    bad = tmp_path / "samples.csv"
    bad.write_text("a,b\n")
    with pytest.raises(exporter.ExportError, match=r"samples.csv: calibration data must be a .txt or .jsonl"):
        exporter.export(directory, tmp_path / "out", task="text-classification", quantization="qdq",
                        calibration_data=bad, log=None)
    with pytest.raises(exporter.ExportError, match="calibration method 'ema' is not one of qdq's: percentile, max, mse, entropy"):
        exporter.export(directory, tmp_path / "out", task="text-classification", quantization="qdq",
                        calibration_method="ema", log=None)
    assert not (tmp_path / "out").exists()


def _qdq_graph(zero_point: np.ndarray) -> gs.Graph:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    zp = onnx.numpy_helper.from_array(zero_point, "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    return gs.import_onnx(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [scale, zp])))


def test_layout_rejects_what_tensorrt_cannot_take():
    with pytest.raises(QdqLayoutError, match="symmetric int8"):
        layout_for_tensorrt(_qdq_graph(np.array(0, np.uint8)))  # an unsigned quantizer
    with pytest.raises(QdqLayoutError, match="symmetric int8"):
        layout_for_tensorrt(_qdq_graph(np.array(3, np.int8)))
    summary = layout_for_tensorrt(_qdq_graph(np.array(0, np.int8)))
    assert summary.activation_pairs == 1 and summary.unfused  # DQ -> Relu: nothing for TensorRT to fuse into


@pytest.mark.parametrize("smoothing", [None, "none"], ids=["default", "unsmoothed"])
def test_default_keeps_sensitive_sites_float(tmp_path, smoothing):
    """docs/qdq.md: by default (SmoothQuant auto) only the residual adds stay float; unsmoothed, the FFN output
    projection's input too."""
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "text-classification")
    recipe = QuantizationRecipe(mode="qdq", num_samples=8, batch_size=8, smoothing=smoothing)  # the default sites
    out = exporter.export(directory, tmp_path / "out", task="text-classification", recipe=recipe, log=None)
    info = read_export_info(out)
    ffn_output_float = smoothing == "none"
    assert info.calibration["keep_float"] == (
        ["residual-adds", "ffn-output-input"] if ffn_output_float else ["residual-adds", "conv-ffn-output-input"]
    )
    calibration = json.loads((out / "calibration.json").read_text())
    kept = set(calibration["float_quantizers"])
    layers = range(2)
    sites = ["attention.output.add_local_input_quantizer", "attention.output.add_residual_input_quantizer",
             "output.add_local_input_quantizer", "output.add_residual_input_quantizer"]
    assert kept == {f"bert.encoder.layer.{i}.{site}" for i in layers
                    for site in sites + (["output.dense._input_quantizer"] if ffn_output_float else [])}
    assert not kept & set(calibration["quantizers"])
    graph = gs.import_onnx(onnx.load(str(out / "model.onnx")))
    # no activation Q/DQ feeds a residual Add any more
    dq_consumers = [c.op for n in graph.nodes if n.op == "DequantizeLinear" and not isinstance(n.inputs[0], gs.Constant)
                    for c in n.outputs[0].outputs]
    # per layer: the shared q/k/v input (3 MatMuls), attention output and FFN input projections (2), both
    # inputs of the two attention matmuls (4), and the FFN output projection unless it reads float
    assert "Add" not in dq_consumers
    assert dq_consumers.count("MatMul") == len(layers) * (3 + 2 + 4 + (0 if ffn_output_float else 1))
