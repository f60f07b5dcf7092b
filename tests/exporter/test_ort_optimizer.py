"""onnxruntime.transformers' optimizer (what optimum's ORTOptimizer runs) recognises our float export as the
torch export of a BERT: no producer warning, one fused Attention per layer, the same answers."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.transformers import optimizer

from tests.fixtures.runtime_exports import tiny_export
from tests.fixtures.tiny_models import padded_batch


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("opt_level", [0, 1])
def test_optimizer_fuses_one_attention_per_layer(model_type, opt_level, caplog):
    _, export_dir = tiny_export(model_type, "feature-extraction")
    config = json.loads((export_dir / "config.json").read_text(encoding="utf-8"))
    exported = onnx.load(str(export_dir / "model.onnx"))
    assert exported.producer_name == "pytorch"  # what torch's exporter writes; optimizer.py checks it
    with caplog.at_level(logging.WARNING):
        fused = optimizer.optimize_model(
            str(export_dir / "model.onnx"), model_type="bert", num_heads=config["num_attention_heads"],
            hidden_size=config["hidden_size"], opt_level=opt_level, use_gpu=False,
        ).model
    assert "producer not matched" not in caplog.text
    ops = Counter(node.op_type for node in fused.graph.node)
    layers = config["num_hidden_layers"]
    assert ops["Attention"] == layers and ops["SkipLayerNormalization"] == 2 * layers and ops["Softmax"] == 0
    feeds = {name: array.numpy() for name, array in padded_batch(model_type).items()}
    names = {i.name for i in exported.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in names}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = ort.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(fused.SerializeToString(), options, providers=["CPUExecutionProvider"])
    mask = feeds["attention_mask"].astype(bool)
    expected, got = theirs.run(["last_hidden_state"], feeds)[0], ours.run(["last_hidden_state"], feeds)[0]
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4)
