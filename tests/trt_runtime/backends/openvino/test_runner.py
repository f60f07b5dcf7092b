"""OpenVinoRunner: answers against ONNX Runtime on the same model.onnx (float and qdq exports, both hints,
two shapes through the dynamic axes), precision, the compiled-model cache (created, reused, checked,
rebuilt, refused through a link, in memory where it cannot be written), options, the integer export's
refusal and `backend="auto"`'s choice, concurrent calls, and the message where openvino is not installed
(the module hidden in a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import trt_runtime
from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import save_checkpoint
from tests.fixtures.tiny_models import padded_batch, save_tiny
from trt_runtime import loader
from trt_runtime.backends.base import CacheStatus
from trt_runtime.contract.export_dir import MODEL_ONNX
from trt_runtime.loader import BackendUnavailableError

openvino = pytest.importorskip("openvino")

from trt_runtime.backends.artefacts import CACHE_DIR_ENV, record_path  # noqa: E402
from trt_runtime.backends.openvino.runner import OpenVinoRunner, OpenVinoUnavailable  # noqa: E402
from trt_runtime.contract.export_dir import CACHE_DIR  # noqa: E402

#: relative L2 distance to ONNX Runtime on the same graph. Float: the same float32 arithmetic in another
#: order. qdq: OpenVINO runs the Q/DQ layers as int8 kernels and quantizes the float input of the FFN output
#: projection on the fly (DYNAMIC_QUANTIZATION_GROUP_SIZE), ONNX Runtime runs the Q/DQ graph node by node;
#: on this tiny model with 10x wide weights a scale off by 10 % in one GEMM moves the output by 0.04
#: (tests/trt_runtime/backends/onnxruntime/test_cpu_int8.py), so 0.02 still catches a wrong layer.
TOLERANCE = {"float": 1e-5, "qdq": 0.02}
SHAPES = [(5, 16), (1, 7)]


def relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Tiny exports: BERT float and qdq (feature-extraction), I-BERT integer (text-classification)."""
    import exporter

    root = tmp_path_factory.mktemp("openvino")
    save_checkpoint(root / "bert", "bert", "feature-extraction", initializer_range=0.2)
    common = dict(validate=False, log=None)
    made = {
        "float": exporter.export(root / "bert", root / "float", task="feature-extraction", **common),
        "qdq": exporter.export(
            root / "bert", root / "qdq", task="feature-extraction", quantization="qdq",
            num_calibration_samples=32, **common,
        ),
    }
    ibert, _ = save_tiny(root / "ibert", "ibert", "text-classification")
    made["integer"] = exporter.export(
        ibert, root / "integer", task="text-classification", quantization="integer",
        num_calibration_samples=8, calibration_batch_size=8, **common,
    )
    return {name: Path(path) for name, path in made.items()}


def fresh_copy(export_dir: Path, target: Path) -> Path:
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def feeds(batch: int, seq: int, model_type: str = "bert") -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in padded_batch(model_type, batch=batch, seq=seq, seed=batch + seq).items()}


def onnxruntime_outputs(export_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(export_dir / MODEL_ONNX), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def cpu_has_bf16() -> bool:
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# --- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["latency", "throughput"])
@pytest.mark.parametrize("mode", ["float", "qdq"])
def test_answers_match_onnx_runtime_on_the_same_graph(exports, tmp_path, mode, hint):
    runner = OpenVinoRunner(exports[mode], performance_hint=hint, intra_op_num_threads=2, cache_dir=tmp_path)
    assert runner.choice.backend == "openvino" and runner.choice.graph == "exported"
    assert runner.properties["INFERENCE_PRECISION_HINT"] == "f32"  # explicit, not OpenVINO's bf16 default
    assert runner.properties["PERFORMANCE_HINT"] == hint.upper()
    assert runner.properties["INFERENCE_NUM_THREADS"] == "2"
    for batch, seq in SHAPES:  # two shapes through the same compiled model: dynamic batch and sequence
        inputs = feeds(batch, seq)
        ours, theirs = runner(inputs), onnxruntime_outputs(exports[mode], inputs)
        assert set(ours) == {"last_hidden_state", "pooler_output"}
        for name, expected in theirs.items():
            assert ours[name].shape == expected.shape and ours[name].dtype == np.float32
            assert relative_l2(ours[name], expected) < TOLERANCE[mode], (name, batch, seq)


def test_throughput_hint_splits_a_batch_across_its_streams_and_answers_alike(exports, tmp_path):
    latency = OpenVinoRunner(exports["qdq"], intra_op_num_threads=2, cache_dir=tmp_path)
    throughput = OpenVinoRunner(
        exports["qdq"], performance_hint="throughput", intra_op_num_threads=2, cache_dir=tmp_path
    )
    # OpenVINO's own figure; with 2 threads its throughput hint makes one stream per thread or fewer
    assert 1 <= int(throughput.properties["NUM_STREAMS"]) <= 2
    inputs = feeds(5, 16)
    a, b = latency(inputs), throughput(inputs)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-4)


def test_results_are_copies_and_concurrent_calls_answer_as_serial_ones(exports, tmp_path):
    runner = OpenVinoRunner(exports["float"], intra_op_num_threads=1, cache_dir=tmp_path)
    inputs = [feeds(2 + i % 3, 8 + i) for i in range(6)]
    serial = [runner(x)["last_hidden_state"] for x in inputs]
    first = serial[0].copy()
    runner(inputs[1])  # a later call must not overwrite an earlier result (share_outputs=False)
    np.testing.assert_array_equal(serial[0], first)
    results: dict[tuple[int, int], np.ndarray] = {}
    start = threading.Barrier(4)

    def worker(thread: int) -> None:
        start.wait()
        for n in range(len(inputs)):
            results[(thread, n)] = runner(inputs[(n + thread) % len(inputs)])["last_hidden_state"]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (thread, n), result in results.items():
        np.testing.assert_array_equal(result, serial[(n + thread) % len(inputs)])


def test_pipeline_runs_on_openvino_like_onnx_runtime(exports, tmp_path):
    export_dir = fresh_copy(exports["float"], tmp_path / "float")
    texts = ["hello world", "a much longer sentence than the first one"]
    ov = trt_runtime.pipeline("feature-extraction", export_dir, backend="openvino", intra_op_num_threads=1)
    ref = trt_runtime.pipeline("feature-extraction", export_dir, backend="onnxruntime", graph="exported")
    assert ov.runner.backend == "openvino"
    for a, b in zip(ov(texts), ref(texts)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_bf16_is_opt_in_and_only_where_the_cpu_has_it(exports, tmp_path):
    if not cpu_has_bf16():
        with pytest.raises(ValueError, match="no bf16 on this CPU.*precision='f32'"):
            OpenVinoRunner(exports["float"], precision="bf16", cache_dir=tmp_path)
        return
    f32 = OpenVinoRunner(exports["float"], intra_op_num_threads=1, cache_dir=tmp_path)
    # made after the f32 cache, in the same cache root: OpenVINO would import the f32 blob and answer NaN
    # (the module doc), so bf16 gets a blob of its own
    bf16 = OpenVinoRunner(exports["float"], precision="bf16", intra_op_num_threads=1, cache_dir=tmp_path)
    assert bf16.choice.cache == CacheStatus.CREATED and cache_of(bf16) != cache_of(f32)
    assert bf16.properties["INFERENCE_PRECISION_HINT"] == "bf16"
    again = OpenVinoRunner(exports["float"], precision="bf16", intra_op_num_threads=1, cache_dir=tmp_path)
    assert again.choice.cache == CacheStatus.REUSED
    inputs = feeds(5, 16)
    reference = onnxruntime_outputs(exports["float"], inputs)["last_hidden_state"]
    f32_error = relative_l2(f32(inputs)["last_hidden_state"], reference)
    bf16_error = relative_l2(bf16(inputs)["last_hidden_state"], reference)
    # bf16 keeps 8 bits of mantissa: visibly less exact than f32, still close (a wrong model is off by ~1)
    assert f32_error < 1e-5 < bf16_error < 0.05
    assert relative_l2(again(inputs)["last_hidden_state"], reference) == pytest.approx(bf16_error, rel=1e-3)


# --- the compiled-model cache ------------------------------------------------------------------------------


def cache_of(runner: OpenVinoRunner) -> Path:
    return Path(runner.choice.cache_detail.split(":")[0])


def test_cache_is_created_reused_and_checked_before_use(exports, tmp_path):
    export_dir = fresh_copy(exports["qdq"], tmp_path / "qdq")
    inputs = feeds(5, 16)
    expected = onnxruntime_outputs(export_dir, inputs)["last_hidden_state"]

    first = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    directory = cache_of(first)
    assert first.choice.cache == CacheStatus.CREATED
    # the ONNX Runtime backend's layout (trt_runtime.backends.artefacts): <export>/.cache/<sha256[:16]>/
    assert directory.parent == export_dir / CACHE_DIR / first.info.onnx_sha256[:16]
    assert directory.name.startswith("openvino-f32-")
    record = json.loads(record_path(directory).read_text())
    blobs = sorted(p.name for p in directory.iterdir())
    assert blobs and all(name.endswith(".blob") for name in blobs)
    assert record["kind"] == "openvino-compiled" and record["source_sha256"] == first.info.onnx_sha256
    assert record["made_with"]["precision"] == "f32"
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".") and p.name != ".lock"], (
        "no staging left behind"
    )

    second = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    assert second.choice.cache == CacheStatus.REUSED
    assert bool(second.compiled_model.get_property("LOADED_FROM_CACHE"))  # OpenVINO's own account
    assert relative_l2(second(inputs)["last_hidden_state"], expected) < TOLERANCE["qdq"]

    # a substituted blob (same name, other bytes) is never imported: rebuilt, and the choice says why
    blob = directory / blobs[0]
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    third = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    assert third.choice.cache == CacheStatus.REBUILT
    assert "does not hold the files its record describes" in third.choice.cache_detail
    assert relative_l2(third(inputs)["last_hidden_state"], expected) < TOLERANCE["qdq"]
    assert OpenVinoRunner(export_dir, intra_op_num_threads=1).choice.cache == CacheStatus.REUSED

    # a record made by another OpenVINO (or for another CPU, another model file) is rebuilt too
    record = json.loads(record_path(directory).read_text())
    record["made_with"]["openvino"] = "2020.1.0"
    record_path(directory).write_text(json.dumps(record))
    fourth = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    assert fourth.choice.cache == CacheStatus.REBUILT
    assert "it was made with openvino 2020.1.0" in fourth.choice.cache_detail

    # touching model.onnx (same bytes, new mtime: OpenVINO's blob header would no longer match) rebuilds
    os.utime(export_dir / MODEL_ONNX, ns=(1, 1))
    assert OpenVinoRunner(export_dir, intra_op_num_threads=1).choice.cache == CacheStatus.REBUILT

    # other compile properties (OpenVINO's blob hash covers them) keep their own entry: neither evicts the
    # other, and each is imported by OpenVINO itself when reused
    two = OpenVinoRunner(export_dir, intra_op_num_threads=2)
    assert two.choice.cache == CacheStatus.CREATED and cache_of(two) != directory
    for threads in (1, 2):
        again = OpenVinoRunner(export_dir, intra_op_num_threads=threads)
        assert again.choice.cache == CacheStatus.REUSED and bool(again.compiled_model.get_property("LOADED_FROM_CACHE"))

    assert OpenVinoRunner(export_dir, cache=False).choice.cache == CacheStatus.NOT_USED


def test_cache_dir_option_keeps_the_export_untouched(exports, tmp_path):
    export_dir = fresh_copy(exports["float"], tmp_path / "float")
    before = sorted(p.relative_to(export_dir) for p in export_dir.rglob("*"))
    runner = OpenVinoRunner(export_dir, cache_dir=tmp_path / "cache")
    assert runner.choice.cache == CacheStatus.CREATED
    assert cache_of(runner).parent == tmp_path / "cache" / runner.info.onnx_sha256[:16]
    assert sorted(p.relative_to(export_dir) for p in export_dir.rglob("*")) == before
    assert OpenVinoRunner(export_dir, cache_dir=tmp_path / "cache").choice.cache == CacheStatus.REUSED


def test_qbert_cache_dir_means_for_openvino_what_it_means_for_onnxruntime(exports, tmp_path, monkeypatch):
    """$QBERT_CACHE_DIR names one cache for both CPU backends: each keeps its artefacts in the entry of the
    model.onnx's sha256, and the export is not written to."""
    from trt_runtime.backends.onnxruntime.runner import OrtRunner

    export_dir = fresh_copy(exports["float"], tmp_path / "float")
    before = sorted(p.relative_to(export_dir) for p in export_dir.rglob("*"))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "shared"))
    openvino_runner = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    ort_runner = OrtRunner(export_dir)
    entry = tmp_path / "shared" / openvino_runner.info.onnx_sha256[:16]
    assert cache_of(openvino_runner).parent == entry and openvino_runner.choice.cache == CacheStatus.CREATED
    assert ort_runner.choice.cache == CacheStatus.CREATED and str(entry) in ort_runner.choice.cache_detail
    assert sorted(p.relative_to(export_dir) for p in export_dir.rglob("*")) == before
    assert OpenVinoRunner(export_dir, intra_op_num_threads=1).choice.cache == CacheStatus.REUSED


def test_a_symlinked_cache_directory_is_never_written_through(exports, tmp_path):
    export_dir = fresh_copy(exports["float"], tmp_path / "float")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (export_dir / CACHE_DIR).symlink_to(elsewhere)
    runner = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    assert runner.choice.cache == CacheStatus.IN_MEMORY and "symbolic link" in runner.choice.cache_detail
    assert list(elsewhere.iterdir()) == []
    inputs = feeds(2, 8)
    expected = onnxruntime_outputs(export_dir, inputs)["last_hidden_state"]
    assert relative_l2(runner(inputs)["last_hidden_state"], expected) < TOLERANCE["float"]


def test_an_unwritable_cache_location_compiles_in_memory(exports, tmp_path):
    """Where the cache cannot be made (here a file stands where .cache should be; a read-only export
    fails the same way), the model is compiled in memory and runs at full speed."""
    export_dir = fresh_copy(exports["float"], tmp_path / "float")
    (export_dir / CACHE_DIR).write_text("a file, not a directory")
    runner = OpenVinoRunner(export_dir, intra_op_num_threads=1)
    assert runner.choice.cache == CacheStatus.IN_MEMORY and "cannot be written" in runner.choice.cache_detail
    assert runner(feeds(2, 8))["last_hidden_state"].shape == (2, 8, 32)


# --- options, refusals, the backend choice ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("precision", "fp16", "precision='fp16'; choose one of f32, bf16"),
        ("performance_hint", "fast", "performance_hint='fast'; choose one of latency, throughput"),
        ("intra_op_num_threads", 0, "intra_op_num_threads must be an int >= 1"),
        ("intra_op_num_threads", True, "intra_op_num_threads must be an int >= 1"),
        ("intra_op_num_threads", "2", "intra_op_num_threads must be an int >= 1"),
        ("dynamic_quantization_group_size", -1, "dynamic_quantization_group_size must be an int >= 0"),
    ],
)
def test_options_are_validated(exports, option, value, message):
    with pytest.raises(ValueError, match=message):
        OpenVinoRunner(exports["float"], **{option: value})


def test_load_passes_options_and_refuses_unknown_ones(exports, tmp_path):
    runner = trt_runtime.load(exports["float"], backend="openvino", intra_op_num_threads=1, cache_dir=tmp_path)
    assert runner.backend == "openvino" and runner.choice.reason == "asked for"
    with pytest.raises(TypeError, match="unknown option.*graph_optimization_level.*openvino.*precision"):
        trt_runtime.load(exports["float"], backend="openvino", graph_optimization_level="all")


def test_loading_from_many_threads_at_once_leaves_the_process_locale_alone(exports, tmp_path):
    """OpenVINO's compile_model, run from several threads at once with a cache directory, left the process's C
    locale at "C" (text-mode subprocess output then failed to decode); the runner serializes compiling."""
    import locale

    before = locale.getpreferredencoding(False)
    export_dir = fresh_copy(exports["qdq"], tmp_path / "fresh")
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        OpenVinoRunner(export_dir)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert locale.getpreferredencoding(False) == before


def test_integer_export_is_refused_naming_the_ops_and_auto_runs_it_on_onnx_runtime(exports, monkeypatch):
    with pytest.raises(OpenVinoUnavailable, match=r"cannot convert .*ibert\.IntGELU.*backend='onnxruntime'"):
        OpenVinoRunner(exports["integer"])
    with pytest.raises(BackendUnavailableError, match=r"ibert\.Int.*backend='auto' does"):
        trt_runtime.load(exports["integer"], backend="openvino")
    # even with OpenVINO first in the table for integer exports, auto ends on ONNX Runtime and says why
    monkeypatch.setitem(loader.CPU_BACKENDS, "integer", ("openvino", "onnxruntime"))
    runner = trt_runtime.load(exports["integer"])
    assert runner.backend == "onnxruntime" and "cannot convert" in runner.choice.reason
    inputs = {k: v for k, v in feeds(2, 8, "ibert").items() if k in runner.info.input_names}
    np.testing.assert_allclose(
        runner(inputs)["logits"], onnxruntime_outputs(exports["integer"], inputs)["logits"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["float", "qdq", "integer"])
def test_auto_picks_the_first_installed_backend_of_the_table(exports, mode, tmp_path):
    export_dir = fresh_copy(exports[mode], tmp_path / mode)
    runner = trt_runtime.load(export_dir)
    expected = loader.CPU_BACKENDS[loader.read_export_info(export_dir).quantization][0]
    assert runner.backend == expected  # openvino is installed in this test (importorskip above)
    assert ("fastest CPU backend" in runner.choice.reason) == (expected != "onnxruntime")


def test_without_openvino_installed_the_message_says_how_to_install_it(exports):
    """openvino hidden (sys.modules entry None: `import openvino` raises ImportError) in a fresh interpreter."""
    code = f"""
import sys
sys.modules["openvino"] = None
import trt_runtime
from trt_runtime.loader import BackendUnavailableError, CPU_BACKENDS
from trt_runtime.backends.openvino.runner import OpenVinoRunner, OpenVinoUnavailable
try:
    trt_runtime.load({str(exports["qdq"])!r}, backend="openvino")
except BackendUnavailableError as e:
    print("LOAD:", e)
try:
    OpenVinoRunner({str(exports["qdq"])!r})
except OpenVinoUnavailable as e:
    print("RUNNER:", e)
runner = trt_runtime.load({str(exports["qdq"])!r})
print("AUTO:", runner.backend, "|", runner.choice.reason, "|", CPU_BACKENDS["qdq"][0])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert "pip install qbert-deploy[openvino]" in lines["LOAD"]
    assert "pip install qbert-deploy[openvino]" in lines["RUNNER"]
    backend, reason, first = lines["AUTO"].split(" | ")
    assert backend == "onnxruntime"
    if first == "openvino":  # the table prefers OpenVINO here: the reason says why it was passed over
        assert "OpenVINO, measured faster" in reason and "not installed" in reason


def test_importing_and_loading_on_onnx_runtime_never_imports_openvino(exports):
    code = (
        "import sys, trt_runtime; r = trt_runtime.load(sys.argv[1], backend='onnxruntime'); "
        "print('openvino' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(exports["float"])], capture_output=True, text=True, cwd=ROOT,
        timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_closed_runner_refuses_calls(exports, tmp_path):
    from trt_runtime.backends.base import RunnerClosedError

    with OpenVinoRunner(exports["float"], cache_dir=tmp_path) as runner:
        runner(feeds(1, 4))
    with pytest.raises(RunnerClosedError):
        runner(feeds(1, 4))
