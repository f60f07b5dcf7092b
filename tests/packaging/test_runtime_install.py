"""A serving box: `pip install qbert-deploy[runtime]` alone in a fresh venv (no torch, no transformers) serves
exports made by the development venv, the quantized one on the CPU INT8 graph (onnx + sympy are declared)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SENTENCES
from tests.fixtures.fresh_venv import run
from tests.fixtures.runtime_exports import assert_results_close, hf_pipeline, save_checkpoint

pytestmark = pytest.mark.slow  # a fresh venv: about a minute

WHAT_IS_INSTALLED = (
    "import importlib.util, json; "
    "print(json.dumps({name: importlib.util.find_spec(name) is not None for name in "
    "('torch', 'transformers', 'onnx_graphsurgeon', 'onnxruntime', 'tokenizers', 'onnx', 'sympy')}))"
)
WHICH_GRAPH = (
    "import sys, trt_runtime; runner = trt_runtime.load(sys.argv[1], backend='onnxruntime'); "
    "print(runner.choice.graph)"
)


def test_runtime_extra_has_no_torch_and_pip_check_is_clean(runtime_python, tmp_path):
    installed = json.loads(run([str(runtime_python), "-c", WHAT_IS_INSTALLED], cwd=tmp_path).stdout)
    assert installed == {
        "torch": False, "transformers": False, "onnx_graphsurgeon": False,
        "onnxruntime": True, "tokenizers": True, "onnx": True, "sympy": True,
    }
    assert run([str(runtime_python), "-m", "pip", "check"], cwd=tmp_path).returncode == 0


def test_runtime_venv_serves_float_and_qdq_exports_made_elsewhere(runtime_python, tmp_path):
    import exporter

    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, "bert", "text-classification", sharpen=20.0)
    texts = SENTENCES[:3]
    expected = hf_pipeline("text-classification", checkpoint)(texts)
    for quantization in ("none", "qdq"):
        export_dir = tmp_path / quantization
        exporter.export(checkpoint, export_dir, task="text-classification", quantization=quantization, log=None)
        served = run([str(runtime_python.parent / "qbert-runtime"), "run", str(export_dir), "--backend", "onnxruntime", *texts], cwd=tmp_path)
        results = [json.loads(line) for line in served.stdout.splitlines()]
        if quantization == "none":
            assert_results_close(results, expected)
        else:  # INT8: the same labels as transformers' float model (the head is sharpened)
            assert [r["label"] for r in results] == [r["label"] for r in expected]
            graph = run([str(runtime_python), "-c", WHICH_GRAPH, str(export_dir)], cwd=tmp_path).stdout.strip()
            assert graph == "cpu-int8"
