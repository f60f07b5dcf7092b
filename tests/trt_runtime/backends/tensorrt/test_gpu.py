"""End to end with TensorRT on a GPU (marked `tensorrt` and `gpu`; skipped elsewhere with the reason).

- single ibert ops: engines built by `python -m trt_runtime build`'s code with the plugins (AOT where
  TensorRT >= 10.9, else JIT; and JIT on request) and with --no-plugins (TensorRT runs the exporter's
  function bodies), compared bit for bit with the NumPy int64 reference; the recorded implementation
  and PTX version, and the plugin layers in the layer report;
- a tiny exported BERT (QDQ): TensorRTRunner against ONNX Runtime in FP32 and FP16, the layer report
  (INT8 GEMMs), sequence-length buckets, CUDA graphs, the timing cache reused, the profile and engine.json
  checks, one execution context per thread, and `trt_runtime.load(backend="auto")` choosing TensorRT;
- trtexec on that engine, where trtexec is installed, summarised by the same code as scripts/trtexec_bench.sh.

On a GPU machine: scripts/gpu_check.sh, or PYTHONPATH=. python3 -m pytest -m gpu tests/trt_runtime/backends/tensorrt
(record the result in tests/GPU_RESULTS.md)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import ROOT
from trt_runtime.backends.tensorrt.libs import tensorrt_available

_OK, _REASON = tensorrt_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.tensorrt,
    pytest.mark.skipif(not _OK, reason=f"needs TensorRT, cuda-python and a CUDA GPU: {_REASON}"),
]


def run_engine(directory: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run model.engine on `feeds` with plain TensorRT calls and torch CUDA buffers (any input names)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine((directory / "model.engine").read_bytes())
    context = engine.create_execution_context()
    keep = []
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, tensor.data_ptr())
            outputs[name] = tensor
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def _engine_cases():
    from tests.fixtures.ibert_kernel_cases import gelu_cases, layernorm_cases, softmax_cases

    return [gelu_cases()[0], gelu_cases()[1], softmax_cases()[0], softmax_cases()[3], layernorm_cases()[1]]


ENGINE_CASES = _engine_cases()


@pytest.mark.parametrize("use_plugins", [True, False], ids=["plugins", "no-plugins"])
@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c.id for c in ENGINE_CASES])
def test_single_op_engine_matches_reference_exactly(tmp_path, case, use_plugins):
    from tests.fixtures.ibert_kernel_cases import assert_bitwise_equal
    from tests.fixtures.tensorrt_test_models import single_op_export_info, single_op_model, write_export_dir
    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    rank, channels = case.x.ndim, case.x.shape[-1]
    model = single_op_model(case.op, case.attributes, channels, rank, case.weight, case.bias)
    directory = write_export_dir(tmp_path / "export", model, single_op_export_info(rank, channels))
    result = build_engine(directory, BuildOptions(use_plugins=use_plugins, progress=False))
    assert result.info.plugins == ([f"ibert::{case.op}"] if use_plugins else [])
    if use_plugins:
        import tensorrt as trt

        aot = hasattr(trt, "QuickPluginCreationRequest")
        assert result.info.plugin_implementation == ("aot" if aot else "jit")
        assert (result.info.plugin_ptx_version is not None) == aot
        assert result.info.layers is not None and result.info.layers["ibert_plugins"] == {f"ibert::{case.op}": 1}
    outputs = run_engine(directory, {"X": case.x})
    assert_bitwise_equal(outputs["Y"], case.expected())


def test_jit_plugins_on_request(tmp_path):
    """--plugin-implementation jit (aot=0, kSTRICT_JIT): the Python implementation runs at every enqueue."""
    import tensorrt as trt

    from tests.fixtures.ibert_kernel_cases import assert_bitwise_equal, gelu_cases
    from tests.fixtures.tensorrt_test_models import single_op_export_info, single_op_model, write_export_dir
    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine
    from trt_runtime.backends.tensorrt.plugins import registration

    if not hasattr(trt, "QuickPluginCreationRequest"):
        pytest.skip(f"TensorRT {trt.__version__} has JIT plugins only: covered above")
    case = gelu_cases()[0]
    model = single_op_model(case.op, case.attributes, case.x.shape[-1], case.x.ndim)
    directory = write_export_dir(tmp_path / "export", model, single_op_export_info(case.x.ndim, case.x.shape[-1]))
    result = build_engine(directory, BuildOptions(plugin_implementation="jit", progress=False))
    assert result.info.plugin_implementation == "jit" and result.info.plugin_ptx_version is None
    before = registration.CALLS["ibert::IntGELU", "jit"]
    assert_bitwise_equal(run_engine(directory, {"X": case.x})["Y"], case.expected())
    assert registration.CALLS["ibert::IntGELU", "jit"] > before


RUN_WITHOUT_PLUGINS = r"""
import sys
from pathlib import Path
import numpy as np
{run_engine}
x = np.load(sys.argv[2])
np.save(sys.argv[3], run_engine(Path(sys.argv[1]), {{"X": x}})["Y"])
print(sorted(n for n in sys.modules if n.startswith(("triton", "tensorrt.plugin", "trt_runtime"))))
"""


def test_aot_engine_runs_without_python_plugins(tmp_path):
    """An engine with AOT plugins carries its kernels: a process that never registers them can run it."""
    import inspect
    import subprocess
    import sys

    import tensorrt as trt

    from tests.fixtures.ibert_kernel_cases import assert_bitwise_equal, gelu_cases
    from tests.fixtures.tensorrt_test_models import single_op_export_info, single_op_model, write_export_dir
    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    if not hasattr(trt, "QuickPluginCreationRequest"):
        pytest.skip(f"TensorRT {trt.__version__} has no AOT plugins (10.9+)")
    case = gelu_cases()[0]
    model = single_op_model(case.op, case.attributes, case.x.shape[-1], case.x.ndim)
    directory = write_export_dir(tmp_path / "export", model, single_op_export_info(case.x.ndim, case.x.shape[-1]))
    assert build_engine(directory, BuildOptions(progress=False)).info.plugin_implementation == "aot"
    np.save(tmp_path / "x.npy", case.x)
    repo = ROOT
    run = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_PLUGINS.format(run_engine=inspect.getsource(run_engine)), str(directory),
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=repo, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"  # neither Triton, the Python plugins nor trt_runtime
    assert_bitwise_equal(np.load(tmp_path / "y.npy"), case.expected())


# --------------------------------------------------------------------------------------------------
# a tiny exported model through TensorRTRunner


@pytest.fixture(scope="module")
def qdq_export(tmp_path_factory):
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint
    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    root = tmp_path_factory.mktemp("qdq")
    save_checkpoint(root / "checkpoint", "bert", "text-classification")
    directory = exporter.export(root / "checkpoint", root / "export", task="text-classification",
                                quantization="qdq", num_calibration_samples=32, log=None)
    build_engine(directory, BuildOptions(max_shapes="input_ids:8x64", progress=False, timing_cache=str(root / "cache")))
    assert (root / "cache").exists()
    return Path(directory)


def _feeds(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[0, length // 2 :] = 0
    return {"input_ids": rng.integers(0, 99, (batch, length)), "attention_mask": mask}


def test_runner_agrees_with_onnxruntime(qdq_export):
    from trt_runtime.backends.onnxruntime.runner import OrtRunner
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    runner = TensorRTRunner(qdq_export)
    assert runner.backend == "tensorrt" and runner.output_names == ["logits"]
    reference = OrtRunner(qdq_export)
    for batch, length in [(1, 5), (3, 17), (8, 64), (2, 9)]:  # grows, then shrinks the reused buffers
        feeds = _feeds(batch, length)
        ours, theirs = runner(feeds), reference(feeds)
        assert ours["logits"].shape == theirs["logits"].shape == (batch, 3)
        np.testing.assert_allclose(ours["logits"], theirs["logits"], atol=5e-2)  # INT8 kernels differ in rounding
    runner.close()


def test_runner_refuses_shapes_outside_the_profile(qdq_export):
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner
    from trt_runtime.validation import InputError

    runner = TensorRTRunner(qdq_export)
    with pytest.raises(InputError, match="batch of 9 is over this backend's limit of 8"):
        runner(_feeds(9, 8))
    with pytest.raises(InputError, match="over the limit of 64 tokens"):
        runner(_feeds(1, 65))


def test_runner_threads_have_their_own_contexts(qdq_export):
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    runner = TensorRTRunner(qdq_export)
    expected = {seed: runner(_feeds(2, 16, seed))["logits"] for seed in range(4)}
    results: dict[int, np.ndarray] = {}

    def work(seed: int) -> None:
        for _ in range(5):
            results[seed] = runner(_feeds(2, 16, seed))["logits"]

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(4):
        np.testing.assert_array_equal(results[seed], expected[seed])
    assert len(runner._states) == 5  # the main thread and four workers


def test_runner_refuses_a_foreign_engine(qdq_export, tmp_path):
    import shutil

    from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    copy = Path(shutil.copytree(qdq_export, tmp_path / "copy"))
    data = json.loads((copy / "engine.json").read_text())
    data["tensorrt_version"] = "9.0.0"
    (copy / "engine.json").write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="built with TensorRT 9.0.0 but TensorRT .* is installed.*python -m trt_runtime build"):
        TensorRTRunner(copy)


def test_load_auto_picks_tensorrt(qdq_export):
    import trt_runtime

    runner = trt_runtime.load(qdq_export, backend="auto")
    assert runner.backend == "tensorrt"


def test_layer_report_shows_int8_gemms(qdq_export):
    """The Q/DQ MatMuls must have become INT8 GEMMs: the inspector's JSON says so (layer_report.py)."""
    from trt_runtime.backends.tensorrt.engine_info import ENGINE_LAYERS, read_engine_info

    layers = read_engine_info(qdq_export).layers
    assert layers is not None and (qdq_export / ENGINE_LAYERS).exists()
    print("layer report:", json.dumps(layers))
    assert layers["gemm"]["work_share"].get("INT8", 0) > 0.5, layers


def test_timing_cache_is_reused(qdq_export, tmp_path):
    """A second build with the first one's cache finds it (set_timing_cache accepts it) and merges into it."""
    import shutil

    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    copy = Path(shutil.copytree(qdq_export, tmp_path / "copy"))
    cache = qdq_export.parent / "cache"
    size = cache.stat().st_size
    build_engine(copy, BuildOptions(max_shapes="input_ids:8x64", progress=False, timing_cache=str(cache)))
    assert cache.stat().st_size >= size and (cache.parent / "cache.lock").exists()


@pytest.fixture(scope="module")
def fp16_export(qdq_export, tmp_path_factory):
    import shutil

    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine

    copy = Path(shutil.copytree(qdq_export, tmp_path_factory.mktemp("fp16") / "export"))
    build_engine(copy, BuildOptions(fp16=True, max_shapes="input_ids:8x64", progress=False))
    return copy


def test_fp16_engine_agrees_with_onnxruntime(fp16_export):
    """INT8 GEMMs with FP16 elsewhere (the strongly typed FP16 graph) against ONNX Runtime's FP32 run."""
    from trt_runtime.backends.onnxruntime.runner import OrtRunner
    from trt_runtime.backends.tensorrt.engine_info import read_engine_info
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    info = read_engine_info(fp16_export)
    assert info.fp16 and info.strongly_typed and info.builder["fp16_graph"]["opset"] == 19
    assert info.layers is not None and "FP16" in info.layers["precision"]
    runner, reference = TensorRTRunner(fp16_export), OrtRunner(fp16_export)
    for batch, length in [(1, 5), (8, 64)]:
        feeds = _feeds(batch, length)
        np.testing.assert_allclose(runner(feeds)["logits"], reference(feeds)["logits"], atol=5e-2)
    runner.close()


def test_sequence_buckets_and_cuda_graphs(qdq_export, tmp_path):
    """One profile per bucket, the smallest that fits chosen per call; CUDA graphs replay the same results."""
    import shutil

    from trt_runtime.backends.tensorrt.builder import BuildOptions, build_engine
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    copy = Path(shutil.copytree(qdq_export, tmp_path / "buckets"))
    result = build_engine(copy, BuildOptions(max_shapes="input_ids:8x64", sequence_buckets="16,32", progress=False))
    assert len(result.info.profiles) == 3
    plain, graphed = TensorRTRunner(copy), TensorRTRunner(copy, cuda_graphs=True)
    for batch, length in [(2, 10), (2, 10), (3, 30), (3, 30), (8, 64), (2, 10)]:
        feeds = _feeds(batch, length)
        np.testing.assert_array_equal(graphed(feeds)["logits"], plain(feeds)["logits"])
    state = graphed._states[0]
    assert sorted(state.contexts) == [0, 1, 2]  # one context per profile used
    assert len(state.graphs) == 3  # one graph per shape
    graphed.close()
    plain.close()


def test_trtexec_runs_the_engine(qdq_export, tmp_path):
    """trtexec (where installed) on the engine, summarised as scripts/trtexec_bench.sh does."""
    import shutil
    import subprocess

    from trt_runtime.backends.tensorrt.trtexec import summarize, trtexec_args

    trtexec = shutil.which("trtexec") or ("/usr/src/tensorrt/bin/trtexec" if Path("/usr/src/tensorrt/bin/trtexec").exists() else None)
    if trtexec is None:
        pytest.skip("trtexec is not installed")
    args = trtexec_args(qdq_export, export_prefix=str(tmp_path / "run"), iterations=50, warmup_ms=200)
    run = subprocess.run([trtexec, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = summarize(qdq_export, tmp_path / "run-times.json", tmp_path / "run-profile.json", "gpu-test", args,
                       "engine", tmp_path / "run-layers.json")
    print("trtexec:", json.dumps({k: result[k] for k in ("latency_ms", "throughput_sequences_per_s", "batch_size")}))
    assert result["inferences"] >= 50 and result["throughput_sequences_per_s"] > 0
