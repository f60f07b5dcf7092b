"""The fused float graph (trt_runtime.backends.onnxruntime.cpu_float): what graph="auto" runs for float BERT-style
exports on the CPU, its answers against transformers and the exported graph, where it does not apply, and the
same record discipline as the CPU INT8 graph (`build --target cpu-float`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.fixtures.runtime_exports import tiny_export
from tests.fixtures.tiny_models import hf_outputs, padded_batch
from trt_runtime.backends.base import CacheStatus
from trt_runtime.backends.onnxruntime.graphs import choose_graph
from trt_runtime.backends.onnxruntime.recipes import CpuFloatError, float_recipe_record
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.contract.export_dir import CPU_FLOAT_JSON, CPU_FLOAT_ONNX, MODEL_ONNX, read_export_info

#: the float tests' tolerance against transformers (tests/trt_runtime/backends/onnxruntime/test_runner.py)
TOLERANCE = 1e-4


def _fresh(export_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def _hf_reference(checkpoint: Path):
    import transformers

    architecture = json.loads((checkpoint / "config.json").read_text())["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(checkpoint).eval()


@pytest.mark.parametrize(
    ("model_type", "task"), [("bert", "feature-extraction"), ("roberta", "token-classification")]
)
def test_auto_runs_the_fused_float_graph_with_the_exported_graphs_answers(model_type, task, tmp_path):
    checkpoint, shared = tiny_export(model_type, task)
    export_dir = _fresh(shared, tmp_path)
    fused = OrtRunner(export_dir)
    assert fused.choice.graph == "cpu-float" and fused.choice.cache is CacheStatus.CREATED
    assert fused.graph_path is not None
    ops = [node.op_type for node in onnx.load(str(fused.graph_path)).graph.node]
    assert ops.count("Attention") == 2, "one fused attention per layer"
    assert "SkipLayerNormalization" not in ops, "split back into Sum + LayerNormalization (the fast CPU kernels)"
    exported = OrtRunner(export_dir, graph="exported")
    assert exported.graph_path == export_dir / MODEL_ONNX and exported.choice.graph == "exported"
    batch = {k: v for k, v in padded_batch(model_type, batch=3, seq=12).items() if k in fused.info.input_names}
    expected = hf_outputs(_hf_reference(checkpoint), task, batch)
    feeds = {k: v.numpy() for k, v in batch.items()}
    ours, theirs = fused(feeds), exported(feeds)
    mask = feeds["attention_mask"].astype(bool)
    for name in fused.output_names:
        got, want = ours[name], theirs[name]
        if got.ndim == 3:  # per-token outputs: compare the real tokens (padding positions are undefined)
            got, want, reference = got[mask], want[mask], expected[name].numpy()[mask]
        else:
            reference = expected[name].numpy()
        np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)
        np.testing.assert_allclose(got, reference, rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


def test_where_the_fused_float_graph_does_not_apply():
    float_dir = tiny_export("bert", "feature-extraction")[1]
    info = read_export_info(float_dir)
    on_cuda = choose_graph(float_dir, info, providers=["CUDAExecutionProvider"])
    assert on_cuda.name == "exported" and "CPUExecutionProvider" in on_cuda.reason
    squeeze_dir = tiny_export("squeezebert", "question-answering")[1]
    runner = OrtRunner(squeeze_dir)
    assert runner.choice.graph == "exported" and runner.graph_path == squeeze_dir / MODEL_ONNX
    with pytest.raises(CpuFloatError, match="squeezebert export; ONNX Runtime's transformer fusions know"):
        OrtRunner(squeeze_dir, graph="cpu-float")


def test_cpu_float_on_a_quantized_export_is_refused(tmp_path):
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint", "bert", "text-classification")
    qdq = exporter.export(
        tmp_path / "checkpoint", tmp_path / "qdq", task="text-classification", quantization="qdq",
        num_calibration_samples=16, validate=False, log=None,
    )
    with pytest.raises(CpuFloatError, match="is a 'qdq' export; the fused float graph is derived from float"):
        OrtRunner(qdq, graph="cpu-float")


def test_build_target_cpu_float_is_used_as_prebuilt(tmp_path, capsys):
    from trt_runtime.__main__ import main

    export_dir = _fresh(tiny_export("bert", "text-classification")[1], tmp_path)
    assert main(["build", str(export_dir), "--target", "cpu-float"]) == 0
    built = export_dir / CPU_FLOAT_ONNX
    assert f"wrote {built}" in capsys.readouterr().out
    record = json.loads((export_dir / CPU_FLOAT_JSON).read_text())
    assert record["kind"] == "cpu-float" and record["sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert record["made_with"] == {"onnxruntime_version": ort.__version__, "recipe": float_recipe_record()}
    runner = OrtRunner(export_dir)
    assert runner.choice.graph == "cpu-float" and runner.choice.cache is CacheStatus.PREBUILT
    assert runner.graph_path == built
    # an edited record (another onnxruntime) is not trusted: derived again into the cache, and said why
    record["made_with"]["onnxruntime_version"] = "1.0.0"
    (export_dir / CPU_FLOAT_JSON).write_text(json.dumps(record))
    again = OrtRunner(export_dir)
    assert again.choice.cache is CacheStatus.REBUILT and "onnxruntime_version 1.0.0" in again.choice.cache_detail
    assert again.graph_path is not None and again.graph_path.parent.parent == export_dir / CACHE_DIR


def test_a_model_with_external_data_runs_as_exported(tmp_path):
    """Weights in model.onnx.data (the exporter's layout over protobuf's 2 GB): no derived graph (it could not
    be saved), no optimized-graph cache; the exported graph runs."""
    export_dir = _fresh(tiny_export("bert", "feature-extraction")[1], tmp_path)
    model = onnx.load(str(export_dir / MODEL_ONNX))
    onnx.save_model(
        model, str(export_dir / MODEL_ONNX), save_as_external_data=True, all_tensors_to_one_file=True,
        location="model.onnx.data", size_threshold=1024,
    )
    data = json.loads((export_dir / "export.json").read_text())
    data["onnx_sha256"] = hashlib.sha256((export_dir / MODEL_ONNX).read_bytes()).hexdigest()
    (export_dir / "export.json").write_text(json.dumps(data))
    runner = OrtRunner(export_dir)
    assert runner.choice.graph == "exported" and "external data" in runner.choice.graph_reason
    assert runner.choice.session_cache is CacheStatus.NOT_USED
    with pytest.raises(CpuFloatError, match="external data"):
        OrtRunner(export_dir, graph="cpu-float")
    feeds = {k: v.numpy() for k, v in padded_batch("bert", batch=2, seq=8).items()}
    reference = ort.InferenceSession(str(export_dir / MODEL_ONNX), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        runner(feeds)["last_hidden_state"], reference.run(["last_hidden_state"], feeds)[0], rtol=1e-5, atol=1e-6
    )
