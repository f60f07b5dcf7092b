"""Float export: every architecture x task head, one ONNX file run at two batch sizes x two sequence lengths.

The reference is Hugging Face transformers (same weights, same inputs), independent of our torch module;
ONNX Runtime runs the file as the runtime will, onnx.reference.ReferenceEvaluator as the ONNX spec says.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

import exporter
from tests.fixtures.tiny_models import CASES, hf_outputs, padded_batch, save_tiny
from trt_runtime.contract.export_dir import read_export_info

FLOAT_TOLERANCE = 1e-4
SHAPES = [(1, 5), (1, 23), (4, 5), (4, 23)]  # (batch, sequence); the export traced (2, 16)


def feeds_for(model_type: str, task: str, batch: int, seq: int, input_names: list[str]) -> dict[str, np.ndarray]:
    feeds = padded_batch(model_type, batch=batch, seq=seq, choices=3 if task == "multiple-choice" else None, seed=seq)
    return {name: feeds[name].numpy() for name in input_names}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny Hugging Face checkpoints, saved once for the module: {(model_type, task): (dir, hf_model)}."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {case: save_tiny(root / "-".join(case), *case) for case in CASES}


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_float_export_matches_transformers(tmp_path, checkpoints, model_type, task):
    directory, reference = checkpoints[(model_type, task)]
    out = exporter.export(directory, tmp_path / "export", task=task, log=None)
    info = read_export_info(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == info.input_names
    assert [o.name for o in session.get_outputs()] == info.output_names
    for batch, seq in SHAPES:
        feeds = feeds_for(model_type, task, batch, seq, info.input_names)
        expected = hf_outputs(reference, task, {k: torch.from_numpy(v) for k, v in feeds.items()})
        got = dict(zip(info.output_names, session.run(None, feeds)))
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == tuple(value.shape), (name, batch, seq)
            diff = np.abs(got[name] - value.numpy()).max()
            assert diff <= FLOAT_TOLERANCE, f"{name} at batch {batch}, sequence {seq}: max |onnx - hf| = {diff:.3g}"


@pytest.mark.parametrize(
    ("model_type", "task"),
    [("bert", "feature-extraction"), ("roberta", "multiple-choice"), ("squeezebert", "token-classification"),
     ("bert", "text-generation")],
)
def test_reference_evaluator_agrees(tmp_path, checkpoints, model_type, task):
    """The ONNX spec's own evaluator computes what ONNX Runtime computes (no ORT-specific behaviour relied on)."""
    directory, reference = checkpoints[(model_type, task)]
    out = exporter.export(directory, tmp_path / "export", task=task, log=None)
    info = read_export_info(out)
    evaluator = ReferenceEvaluator(str(out / "model.onnx"))
    for batch, seq in [(1, 6), (3, 11)]:
        feeds = feeds_for(model_type, task, batch, seq, info.input_names)
        expected = hf_outputs(reference, task, {k: torch.from_numpy(v) for k, v in feeds.items()})
        got = dict(zip(info.output_names, evaluator.run(None, feeds)))
        for name, value in expected.items():
            assert np.abs(got[name] - value.numpy()).max() <= FLOAT_TOLERANCE, name


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# What optimum's ONNX export names for these tasks (its OnnxConfig inputs/outputs and dynamic axes).
OPTIMUM_SIGNATURES = {
    ("bert", "feature-extraction"): (
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"],
         "token_type_ids": ["batch_size", "sequence_length"]},
        {"last_hidden_state": ["batch_size", "sequence_length", 32], "pooler_output": ["batch_size", 32]},
    ),
    ("roberta", "text-classification"): (
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"]},
        {"logits": ["batch_size", 3]},
    ),
    ("squeezebert", "multiple-choice"): (
        {name: ["batch_size", "num_choices", "sequence_length"] for name in ("input_ids", "attention_mask", "token_type_ids")},
        {"logits": ["batch_size", "num_choices"]},
    ),
    ("ibert", "question-answering"): (
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"]},
        {"start_logits": ["batch_size", "sequence_length"], "end_logits": ["batch_size", "sequence_length"]},
    ),
    ("bert", "fill-mask"): (
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"],
         "token_type_ids": ["batch_size", "sequence_length"]},
        {"logits": ["batch_size", "sequence_length", 99]},
    ),
    ("bert", "token-classification"): (
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"],
         "token_type_ids": ["batch_size", "sequence_length"]},
        {"logits": ["batch_size", "sequence_length", 3]},
    ),
}


@pytest.mark.parametrize(("model_type", "task"), list(OPTIMUM_SIGNATURES))
def test_names_and_dynamic_axes_follow_optimum(tmp_path, checkpoints, model_type, task):
    directory, _ = checkpoints[(model_type, task)]
    out = exporter.export(directory, tmp_path / "export", task=task, log=None, validate=False)
    model = onnx.load(str(out / "model.onnx"))
    inputs, outputs = OPTIMUM_SIGNATURES[(model_type, task)]
    assert {i.name: _dims(i) for i in model.graph.input} == inputs
    assert [i.name for i in model.graph.input] == list(inputs)  # order: input_ids, attention_mask, token_type_ids
    assert {o.name: _dims(o) for o in model.graph.output} == outputs
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    info = json.loads((out / "export.json").read_text())
    assert {i["name"]: i["shape"] for i in info["inputs"]} == inputs
    assert {o["name"]: o["shape"] for o in info["outputs"]} == outputs


def test_graph_is_clean(tmp_path, checkpoints):
    """Folded, checked, named: no Constant nodes left, every node named uniquely, weights under checkpoint names."""
    directory, _ = checkpoints[("roberta", "fill-mask")]
    out = exporter.export(directory, tmp_path / "export", task="fill-mask", log=None)
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    names = [n.name for n in model.graph.node]
    assert all(names) and len(names) == len(set(names))
    assert "Constant" not in {n.op_type for n in model.graph.node}
    initializers = {i.name for i in model.graph.initializer}
    assert "roberta.embeddings.word_embeddings.weight" in initializers
    assert "roberta.encoder.layer.0.attention.self.query.weight.T" in initializers
    assert not any(name.startswith(("model.", "onnx::")) for name in initializers)
    assert not any(name.startswith("/model/") for name in names)
    # shape inference ran: intermediate tensors carry types
    assert len(model.graph.value_info) > len(model.graph.node) // 2


def test_opset_choice(tmp_path, checkpoints):
    directory, _ = checkpoints[("bert", "text-classification")]
    out = exporter.export(directory, tmp_path / "export", task="text-classification", opset=19, log=None)
    assert onnx.load(str(out / "model.onnx")).opset_import[0].version == 19
    assert read_export_info(out).opset == 19
