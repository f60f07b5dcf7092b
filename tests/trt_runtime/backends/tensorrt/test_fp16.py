"""The FP16 form of the graph (trt_runtime.backends.tensorrt.fp16): what `build --fp16` hands TensorRT.

Checked with onnx.checker (full check) and by running the FP16 graph in ONNX Runtime against the FP32
one it came from, on hand-made graphs, tiny exports and, marked slow, all-MiniLM-L6-v2 on real sentences
(the figures quoted in docs/tensorrt.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.backends.tensorrt.fp16 import FP16_MAX, to_float16
from trt_runtime.backends.tensorrt.onnx_prep import OnnxForTensorRTError, prepare_for_tensorrt, value_types

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _small_qdq_model(opset: int = 17) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(DQ int8 weight) -> + bias -> masked by (1 - mask) * float32.min -> Softmax
    -> LayerNormalization -> ReduceMean(axes attribute) -> y; the shapes a BERT layer has, small."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (16, 16)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(weight, "w_int8"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 16).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(16, np.int8), "w_zero"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "min"),
        numpy_helper.from_array(np.ones(16, np.float32), "ln_scale"),
        numpy_helper.from_array(np.zeros(16, np.float32), "ln_bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w"], axis=1, name="w_dq"),
        helper.make_node("MatMul", ["xd", "w"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bias"], ["scores"], name="add_bias"),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=F, name="mask_cast"),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"], name="invert"),
        helper.make_node("Mul", ["inverted", "min"], ["additive"], name="to_additive"),
        helper.make_node("Add", ["scores", "additive"], ["masked"], name="apply_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("LayerNormalization", ["probs", "ln_scale", "ln_bias"], ["ln"], axis=-1, name="ln"),
        helper.make_node("ReduceMean", ["ln"], ["y"], axes=[-1], keepdims=1, name="mean"),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", F, ["b", 16]), helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", 16])],
        [helper.make_tensor_value_info("y", F, ["b", 1]), helper.make_tensor_value_info("probs", F, ["b", 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((batch, 16), np.int64)
    mask[0, 10:] = 0
    return {"x": rng.normal(0, 2, (batch, 16)).astype(np.float32), "mask": mask}


def test_small_qdq_graph_in_fp16():
    model = _small_qdq_model()
    onnx.checker.check_model(model, full_check=True)
    half, summary = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    assert summary.opset == 19 and {o.version for o in half.opset_import if o.domain == ""} == {19}
    types = value_types(half)
    # float parts in FP16: the Q/DQ scales, so DequantizeLinear's outputs, and everything after them...
    scales = {t.name: t.data_type for t in half.graph.initializer}
    assert scales["x_scale"] == scales["w_scale"] == scales["bias"] == H
    assert types["xd"] == types["w"] == types["scores"] == types["probs.fp16"] == types["masked"] == H
    # ...but LayerNormalization stays FP32 behind Casts, and the graph's inputs and outputs keep their types
    ln = next(n for n in half.graph.node if n.op_type == "LayerNormalization")
    assert [types[name] for name in ln.input] == [F, F, F] and types[ln.output[0]] == F
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [F, TensorProto.INT64]
    assert all(o.type.tensor_type.elem_type == F for o in half.graph.output)
    # ReduceMean's axes moved from the attribute (opset 17) to an input (opset 18+)
    mean = next(n for n in half.graph.node if n.op_type == "ReduceMean")
    assert len(mean.input) == 2 and not any(a.name == "axes" for a in mean.attribute)
    # float32.min became -65504: 0 x it stays 0, masked scores stay finite
    minimum = next(t for t in half.graph.initializer if t.name == "min")
    assert numpy_helper.to_array(minimum) == np.float16(-FP16_MAX) and summary.clamped == 1
    feeds = _feeds()
    reference, ours = _run(model, feeds), _run(half, feeds)
    for want, got in zip(reference, ours):
        assert np.isfinite(got).all() and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-2)
    assert ours[1][0, 10:].max() < 1e-3  # the masked positions are still masked


def test_shared_constants_are_copied_not_converted_in_place():
    model = _small_qdq_model()
    # ln_scale also read by an FP16 Mul: the FP32 LayerNormalization must keep its float32 copy
    model.graph.node.append(helper.make_node("Mul", ["probs", "ln_scale"], ["scaled"], name="scale"))
    model.graph.output.append(helper.make_tensor_value_info("scaled", F, ["b", 16]))
    half, _ = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    inits = {t.name: t.data_type for t in half.graph.initializer}
    assert inits["ln_scale"] == F and inits["ln_scale.fp16"] == H
    np.testing.assert_allclose(_run(half, _feeds())[2], _run(model, _feeds())[2], atol=2e-2)  # int8 rounding flips


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.graph.node.append(helper.make_node("IntGELU", ["y"], ["g"], domain="ibert")),
         "does not apply to integer"),
        (lambda m: m.functions.append(helper.make_function("f", "F", ["X"], ["Y"], [helper.make_node("Identity", ["X"], ["Y"])],
                                                            [helper.make_opsetid("", 17)])), "local functions"),
        (lambda m: m.graph.node.append(helper.make_node("RandomNormal", [], ["r"], shape=[2])), "RandomNormal"),
    ],
)
def test_graphs_the_pass_cannot_convert_are_refused(edit, message):
    model = _small_qdq_model()
    edit(model)
    with pytest.raises(OnnxForTensorRTError, match=message):
        to_float16(model)


def test_scales_float16_cannot_hold_are_refused():
    model = _small_qdq_model()
    scale = next(t for t in model.graph.initializer if t.name == "w_scale")
    scale.CopyFrom(numpy_helper.from_array(np.full(16, 1e-9, np.float32), "w_scale"))
    with pytest.raises(OnnxForTensorRTError, match="scale 'w_scale' has values .* float16 cannot hold"):
        to_float16(model)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint

    root = tmp_path_factory.mktemp("fp16")
    save_checkpoint(root / "ckpt", "bert", "text-classification")
    return {q: exporter.export(root / "ckpt", root / q, task="text-classification", quantization=q,
                               num_calibration_samples=8, calibration_batch_size=8, validate=False, log=None)
            for q in ("none", "qdq")}


@pytest.mark.parametrize("quantization", ["none", "qdq"])
def test_tiny_exports_in_fp16_against_fp32(tiny_exports, quantization):
    directory = tiny_exports[quantization]
    prepared = prepare_for_tensorrt(onnx.load(str(directory / "model.onnx")), base_dir=directory).model
    half, summary = to_float16(prepared, directory)
    onnx.checker.check_model(half, full_check=True)
    assert summary.float32_nodes  # the LayerNormalizations
    rng = np.random.default_rng(2)
    feeds = {"input_ids": rng.integers(3, 99, (3, 11)), "attention_mask": np.ones((3, 11), np.int64),
             "token_type_ids": np.zeros((3, 11), np.int64)}
    feeds["attention_mask"][2, 6:] = 0
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in prepared.graph.input}}
    want, got = _run(prepared, feeds)[0], _run(half, feeds)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())))


def _cosines(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None]
    ea, eb = (a * weights).sum(1) / weights.sum(1), (b * weights).sum(1) / weights.sum(1)
    return (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)


@pytest.mark.slow
def test_minilm_sentence_embeddings_in_fp16(minilm_dir, sentences, tmp_path):
    """all-MiniLM-L6-v2 on real sentences: the FP16 form of the float export against the FP32 one, and of the
    Q/DQ export against the float model (docs/tensorrt.md quotes the minima printed here)."""
    import transformers

    import exporter

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    encoded = tokenizer(sentences, padding=True, return_tensors="np")
    outputs = {}
    for quantization in ("none", "qdq"):
        directory = exporter.export(minilm_dir, tmp_path / quantization, task="feature-extraction",
                                    quantization=quantization, num_calibration_samples=64, log=None)
        prepared = prepare_for_tensorrt(onnx.load(str(directory / "model.onnx")), base_dir=directory).model
        feeds = {i.name: encoded[i.name].astype(np.int64) for i in prepared.graph.input}
        outputs[quantization] = _run(prepared, feeds)[0]
        outputs[quantization + "-fp16"] = _run(to_float16(prepared, directory)[0], feeds)[0]
    mask = encoded["attention_mask"]
    float_fp16 = _cosines(outputs["none-fp16"], outputs["none"], mask).min()
    qdq_fp32 = _cosines(outputs["qdq"], outputs["none"], mask).min()
    qdq_fp16 = _cosines(outputs["qdq-fp16"], outputs["none"], mask).min()
    print(f"min sentence cosine to the FP32 float export: float FP16 {float_fp16:.7f}, Q/DQ FP32 {qdq_fp32:.4f}, "
          f"Q/DQ FP16 {qdq_fp16:.4f}")
    assert float_fp16 > 0.9999
    assert qdq_fp16 > qdq_fp32 - 0.005  # FP16 outside the INT8 GEMMs costs no accuracy beyond the INT8 one
