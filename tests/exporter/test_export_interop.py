"""Interop: NVIDIA's polygraphy (the TensorRT team's ONNX tool) reads and runs every kind of export.

`polygraphy run --onnxrt` feeds its own generated inputs at a shape of our choosing and saves inputs and
outputs. Float: the saved outputs match the PyTorch module on the saved inputs. Quantized: polygraphy
runs ONNX Runtime with its default optimizations, which compute quantized graphs their own way
(exporter.validation); its outputs must equal those of an ONNX Runtime session with the same options.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from polygraphy.json import load_json

import exporter
import models
from exporter.validation import TOLERANCES
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import VOCAB, save_tiny
from trt_runtime.contract.export_dir import read_export_info

POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")

CASES = [
    ("bert", "feature-extraction", "none"),
    ("squeezebert", "multiple-choice", "none"),
    ("bert", "text-classification", "qdq"),
    ("ibert", "question-answering", "integer"),
]


def _polygraphy(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([POLYGRAPHY, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize(("model_type", "task", "quantization"), CASES)
def test_polygraphy_runs_and_inspects(tmp_path, model_type, task, quantization):
    directory, _ = save_tiny(tmp_path / "ckpt", model_type, task)
    recipe = QuantizationRecipe(mode=quantization) if quantization == "none" else QuantizationRecipe(
        mode=quantization, num_samples=8, batch_size=8
    )
    out = exporter.export(directory, tmp_path / "out", task=task, recipe=recipe, log=None, validate=False)
    info = read_export_info(out)
    onnx_path = str(out / "model.onnx")

    inspected = _polygraphy("inspect", "model", onnx_path).stdout
    for spec in (*info.inputs, *info.outputs):
        assert spec.name in inspected
    assert "batch_size" in inspected and "sequence_length" in inspected

    shape = "[2,3,9]" if task == "multiple-choice" else "[3,9]"
    ranges = {"input_ids": f"[0,{VOCAB - 1}]", "attention_mask": "[1,1]", "token_type_ids": "[0,1]"}
    _polygraphy(
        "run", onnx_path, "--onnxrt",
        "--input-shapes", *(f"{name}:{shape}" for name in info.input_names),
        "--val-range", *(f"{name}:{ranges[name]}" for name in info.input_names),
        "--save-inputs", str(tmp_path / "inputs.json"), "--save-outputs", str(tmp_path / "outputs.json"),
    )
    feeds = load_json(str(tmp_path / "inputs.json"))[0]
    outputs = load_json(str(tmp_path / "outputs.json"))[0]  # RunResults: [(runner name, [iteration outputs])]
    got = outputs[1][0]
    if quantization == "none":
        model = models.load(directory, task=task)
        with torch.no_grad():
            expected = model(**{name: torch.from_numpy(np.asarray(value)) for name, value in feeds.items()})
        for name in info.output_names:
            problem = TOLERANCES["none"].violation(np.asarray(got[name]), expected[name].numpy())
            assert problem is None, f"{name}: {problem}"
    else:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        same = dict(zip(info.output_names, session.run(None, {k: np.asarray(v) for k, v in feeds.items()})))
        for name in info.output_names:
            np.testing.assert_allclose(np.asarray(got[name]), same[name], rtol=0, atol=1e-6)
    if quantization == "integer":
        assert "ibert" in inspected  # the custom domain is listed
