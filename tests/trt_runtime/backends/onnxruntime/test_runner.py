"""OrtRunner and trt_runtime.load on float exports of tiny models: outputs against Hugging Face, the
optimized-graph cache, backend choice, and bad feeds that must never reach onnxruntime."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import trt_runtime
from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import save_checkpoint, tiny_export
from tests.fixtures.tiny_models import VOCAB, hf_outputs, padded_batch
from trt_runtime.backends.base import BackendChoice, BaseRunner, CacheStatus, Runner
from trt_runtime.backends.onnxruntime.options import OrtOptions
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.contract.export_dir import (
    ENGINE,
    ENGINE_JSON,
    ExportDirError,
    read_export_info,
)
from trt_runtime.loader import BackendUnavailableError, cpu_backends
from trt_runtime.validation import InputError

CASES = [
    ("bert", "text-classification"),
    ("bert", "feature-extraction"),
    ("roberta", "token-classification"),
    ("squeezebert", "question-answering"),
    ("bert", "multiple-choice"),
]


def fresh_copy(export_dir: Path, tmp_path: Path, name: str = "export") -> Path:
    """A copy of a shared export without its cache (tmp_path/name), for tests that watch the cache being made."""
    target = tmp_path / name
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_outputs_match_hugging_face(model_type, task):
    checkpoint, export_dir = tiny_export(model_type, task)
    runner = trt_runtime.load(export_dir, backend="onnxruntime")
    assert isinstance(runner, BaseRunner) and isinstance(runner, Runner) and runner.backend == "onnxruntime"
    import transformers

    reference = getattr(transformers, _hf_class(checkpoint)).from_pretrained(checkpoint).eval()
    feeds = padded_batch(model_type, batch=3, seq=12, choices=4 if task == "multiple-choice" else None)
    expected = hf_outputs(reference, task, feeds)
    names = [spec.name for spec in runner.input_specs]
    got = runner({name: feeds[name].numpy() for name in names})
    assert set(got) == set(runner.output_names)
    for name in runner.output_names:
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def _hf_class(checkpoint: Path) -> str:
    import json

    return json.loads((checkpoint / "config.json").read_text())["architectures"][0]


# --- ONNX Runtime's optimized-graph cache, with its record -----------------------------------------------


def _cache_dir(runner: OrtRunner) -> Path:
    """The runner's cache directory for this export: <export>/.cache/<sha256[:16] of model.onnx>."""
    return runner.export_dir / CACHE_DIR / runner.info.onnx_sha256[:16]


def _cached_graphs(directory: Path) -> list[Path]:
    return sorted(directory.glob("ort-*.onnx")) if directory.exists() else []


def test_optimized_graph_cache_is_created_once_with_its_record_and_reused(tmp_path):
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    first = OrtRunner(export_dir, graph="exported")
    cache = _cache_dir(first)
    files = _cached_graphs(cache)
    info = read_export_info(export_dir)
    assert [f.name for f in files] == [f"ort-{ort.__version__}-{info.onnx_sha256[:16]}-extended-cpu.onnx"]
    assert first.choice.session_cache is CacheStatus.CREATED and first.model_path == files[0]
    record = json.loads(files[0].with_suffix(".json").read_text())
    # the record vouches for what the file was made from and for the file itself (sha256 taken here, not by the code)
    assert record["source_sha256"] == info.onnx_sha256
    assert record["sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert record["made_with"]["onnxruntime_version"] == ort.__version__
    stamp = files[0].stat().st_mtime_ns

    second = OrtRunner(export_dir, graph="exported")
    assert second.choice.session_cache is CacheStatus.REUSED and second.model_path == files[0]
    assert _cached_graphs(cache) == files and files[0].stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.name != ".lock"], "no temporary left"

    uncached = OrtRunner(export_dir, graph="exported", cache=False)
    assert uncached.model_path == export_dir / "model.onnx" and uncached.choice.session_cache is CacheStatus.NOT_USED
    feeds = {k: v.numpy() for k, v in padded_batch("bert").items()}
    for runner in (first, second):
        np.testing.assert_allclose(runner(feeds)["logits"], uncached(feeds)["logits"], rtol=1e-5, atol=1e-6)


def test_cache_key_changes_with_the_onnx_file_and_the_level(tmp_path):
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    runner = OrtRunner(export_dir, graph="exported")
    OrtRunner(export_dir, graph="exported", graph_optimization_level="basic")
    names = [f.name for f in _cached_graphs(_cache_dir(runner))]
    assert len(names) == 2 and any(n.endswith("-basic-cpu.onnx") for n in names)
    # another export (another ONNX file) in the same place gets another key
    other = tiny_export("bert", "text-classification", seed=3)[1]
    shutil.copy(other / "model.onnx", export_dir / "model.onnx")
    shutil.copy(other / "export.json", export_dir / "export.json")
    again = OrtRunner(export_dir, graph="exported")
    sha = read_export_info(export_dir).onnx_sha256
    assert again.model_path is not None and sha[:16] in again.model_path.name
    assert again.choice.session_cache is CacheStatus.CREATED


def test_a_substituted_optimized_graph_is_detected_and_rebuilt(tmp_path):
    """Another export's optimized graph copied over this one's (its model.onnx still verifies) is never run."""
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    other_dir = fresh_copy(tiny_export("bert", "text-classification", seed=3)[1], tmp_path / "other")
    cached = OrtRunner(export_dir, graph="exported").model_path
    foreign = OrtRunner(other_dir, graph="exported").model_path
    assert cached is not None and foreign is not None
    shutil.copy(foreign, cached)
    runner = OrtRunner(export_dir, graph="exported")
    assert runner.choice.session_cache is CacheStatus.REBUILT
    assert "is not the file its record describes" in runner.choice.session_cache_detail
    feeds = {k: v.numpy() for k, v in padded_batch("bert").items()}
    reference = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner(feeds)["logits"], reference.run(["logits"], feeds)[0], rtol=1e-5, atol=1e-6)
    assert OrtRunner(export_dir, graph="exported").choice.session_cache is CacheStatus.REUSED


def test_a_verified_cache_that_does_not_load_is_set_aside_and_the_graph_used(tmp_path, caplog):
    """A cached file that matches its record but that ONNX Runtime cannot load (its own output, refused)."""
    from trt_runtime.backends.artefacts import record_path

    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    cached = OrtRunner(export_dir, graph="exported").model_path
    assert cached is not None
    cached.write_bytes(b"not an onnx model")
    record = json.loads(record_path(cached).read_text())
    record["sha256"] = hashlib.sha256(b"not an onnx model").hexdigest()
    record_path(cached).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        runner = OrtRunner(export_dir, graph="exported")
    assert "does not load" in caplog.text
    assert runner.model_path == export_dir / "model.onnx" and runner.choice.session_cache is CacheStatus.NOT_USED
    assert cached.with_suffix(".unusable").exists()
    feeds = {k: v.numpy() for k, v in padded_batch("bert").items()}
    np.testing.assert_allclose(
        runner(feeds)["logits"], OrtRunner(export_dir, graph="exported", cache=False)(feeds)["logits"], atol=1e-6
    )
    again = OrtRunner(export_dir, graph="exported")
    assert again.choice.session_cache is CacheStatus.NOT_USED, "a set-aside cache is not tried again"
    assert "records why" in again.choice.session_cache_detail


def test_unwritable_cache_runs_in_memory_and_says_so(tmp_path):
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    # a file where the cache directory should be: mkdir fails, even as root
    (export_dir / CACHE_DIR).write_text("a file where the cache directory should be")
    runner = OrtRunner(export_dir)
    assert runner.choice.session_cache is CacheStatus.IN_MEMORY
    assert runner.choice.cache is CacheStatus.IN_MEMORY and runner.choice.graph == "cpu-float"
    assert "cannot be" in runner.choice.session_cache_detail and runner.model_path is None
    feeds = {k: v.numpy() for k, v in padded_batch("bert").items()}
    assert runner(feeds)["logits"].shape == (3, 3)
    assert (export_dir / CACHE_DIR).read_text() == "a file where the cache directory should be"


@pytest.mark.parametrize(
    ("model_type", "quantization"),
    [("bert", "qdq"), pytest.param("ibert", "integer", id="ibert-integer")],
)
def test_cache_of_quantized_exports_loads_and_matches(tmp_path, model_type, quantization):
    """Q/DQ nodes and `ibert` function bodies survive the cached optimized graph."""
    import exporter

    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, model_type, "text-classification")
    export_dir = exporter.export(
        checkpoint,
        tmp_path / "export",
        task="text-classification",
        quantization=quantization,
        num_calibration_samples=32,
        log=None,
    )
    created, reused, uncached = (
        OrtRunner(export_dir, graph="exported"),
        OrtRunner(export_dir, graph="exported"),
        OrtRunner(export_dir, graph="exported", cache=False),
    )
    assert created.choice.session_cache is CacheStatus.CREATED
    assert reused.choice.session_cache is CacheStatus.REUSED
    if quantization == "integer":
        assert created.info.custom_ops, "the export has `ibert` nodes with function bodies"
    feeds = {k: v.numpy() for k, v in padded_batch(model_type).items() if k in created.info.input_names}
    expected = uncached(feeds)["logits"]
    for runner in (created, reused):
        np.testing.assert_allclose(runner(feeds)["logits"], expected, rtol=1e-5, atol=1e-5)


# --- options -----------------------------------------------------------------------------------------------


def test_options_are_a_typed_dataclass_and_keywords_alike(tmp_path):
    export_dir = tiny_export("bert", "text-classification")[1]
    by_class = OrtRunner(export_dir, OrtOptions(intra_op_num_threads=1, graph="exported"))
    by_keyword = OrtRunner(export_dir, intra_op_num_threads=1, graph="exported")
    assert by_class.options == by_keyword.options == OrtOptions(intra_op_num_threads=1, graph="exported")
    assert by_class.session.get_session_options().intra_op_num_threads == 1
    # keywords on top of an options object
    assert OrtRunner(export_dir, OrtOptions(graph="exported"), cache=False).options.cache is False
    with pytest.raises(TypeError, match="options must be a OrtOptions .*got \\{'graph'"):
        OrtRunner(export_dir, {"graph": "exported"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"graph_optimization_level": "max"}, "graph_optimization_level='max'; choose one of disable, basic"),
        ({"graph": "fast"}, "graph='fast'; choose one of auto, exported, cpu-int8, cpu-float, cpu-integer"),
        ({"intra_op_num_threads": -1}, "intra_op_num_threads must be a non-negative int"),
        ({"inter_op_num_threads": 1.5}, "inter_op_num_threads must be a non-negative int"),
        ({"cache": "yes"}, "cache must be True or False"),
        ({"cache_dir": 3}, "cache_dir must be a path"),
        ({"log_severity_level": 7}, "log_severity_level must be an int from 0"),
        ({"providers": "CPUExecutionProvider"}, "providers must be a list of execution provider names"),
    ],
)
def test_bad_option_values_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        OrtOptions(**options)
    with pytest.raises(ValueError, match=message):
        trt_runtime.load(tiny_export("bert", "text-classification")[1], backend="onnxruntime", **options)


def test_the_loader_knows_each_backends_options_without_importing_tensorrt():
    """Option names come from the options dataclasses (light modules), not from the runners' signatures."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from trt_runtime.loader import runner_options, all_runner_options\n"
        "assert runner_options('tensorrt') == {'device', 'cuda_graphs'}, runner_options('tensorrt')\n"
        "assert 'cache_dir' in runner_options('onnxruntime') and 'device' in all_runner_options()\n"
        "loaded = [m for m in ('trt_runtime.backends.tensorrt.runner', 'onnxruntime') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


# --- backend choice ---------------------------------------------------------------------------------


def test_auto_without_engine_falls_back_and_says_why(caplog):
    export_dir = tiny_export("bert", "text-classification")[1]
    with caplog.at_level(logging.INFO, logger="trt_runtime"):
        runner = trt_runtime.load(export_dir)
    assert runner.backend == cpu_backends("none")[0]  # the CPU backend of loader.CPU_BACKENDS installed here
    assert (
        "no TensorRT engine" in runner.choice.reason
        and "python -m trt_runtime build" in runner.choice.reason
    )
    assert f"{runner.backend} backend" in caplog.text


def test_auto_with_engine_but_no_tensorrt_falls_back(tmp_path):
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    (export_dir / ENGINE).write_bytes(b"\0")
    (export_dir / ENGINE_JSON).write_text("{}")
    runner = trt_runtime.load(export_dir)
    assert runner.backend == cpu_backends("none")[0] and "TensorRT is not available" in runner.choice.reason


def test_tensorrt_backend_without_tensorrt_is_a_clear_error():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(
        BackendUnavailableError, match="backend='tensorrt' cannot run here: .*backend='onnxruntime'"
    ):
        trt_runtime.load(export_dir, backend="tensorrt")


def test_unknown_backend_and_option():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(ValueError, match="backend='gpu'; choose one of auto, onnxruntime, tensorrt"):
        trt_runtime.load(export_dir, backend="gpu")
    with pytest.raises(
        TypeError,
        match="unknown option.*threads for the onnxruntime backend; it takes .*intra_op_num_threads",
    ):
        trt_runtime.load(export_dir, backend="onnxruntime", threads=2)
    with pytest.raises(TypeError, match="unknown option.*device for the onnxruntime backend"):
        trt_runtime.load(export_dir, backend="onnxruntime", device=0)


def test_unavailable_provider_names_the_installed_ones():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(ValueError, match="NoSuchExecutionProvider not available.*CPUExecutionProvider"):
        OrtRunner(export_dir, providers=["NoSuchExecutionProvider"])


def test_thread_settings_reach_the_session():
    export_dir = tiny_export("bert", "text-classification")[1]
    runner = OrtRunner(export_dir, intra_op_num_threads=1, inter_op_num_threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert runner.providers == ["CPUExecutionProvider"]


def test_deprecated_reason_properties_still_read_the_choice():
    runner = trt_runtime.load(tiny_export("bert", "text-classification")[1])
    with pytest.warns(DeprecationWarning, match="runner.backend_reason is deprecated; read runner.choice.reason"):
        assert runner.backend_reason == runner.choice.reason
    with pytest.warns(DeprecationWarning, match="graph_reason"):
        assert runner.graph_reason == runner.choice.graph_reason
    with pytest.warns(DeprecationWarning, match="cache_status"):
        assert runner.cache_status.startswith(runner.choice.session_cache.value)


def test_not_an_export_dir_and_a_changed_model(tmp_path):
    with pytest.raises(ExportDirError, match="not an export directory"):
        trt_runtime.load(tmp_path)
    export_dir = fresh_copy(tiny_export("bert", "text-classification")[1], tmp_path)
    with open(export_dir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportDirError, match="does not match the sha256"):
        trt_runtime.load(export_dir)


# --- bad feeds stop before onnxruntime --------------------------------------------------------------


def _bad_feeds() -> dict[str, tuple[dict, str]]:
    ids = np.array([[2, 10, 11, 3]], dtype=np.int64)
    ones = np.ones_like(ids)
    return {
        "unknown name": ({"input_ids": ids, "attention_mask": ones, "labels": ones}, "unknown input"),
        "missing name": ({"input_ids": ids}, "missing input"),
        "float ids": ({"input_ids": ids.astype(np.float32), "attention_mask": ones}, "dtype float32"),
        "rank 1": ({"input_ids": ids[0], "attention_mask": ones[0]}, "rank 2"),
        "empty batch": ({"input_ids": ids[:0], "attention_mask": ones[:0]}, "empty batch"),
        "too long": (
            {"input_ids": np.full((1, 65), 5), "attention_mask": np.ones((1, 65), np.int64)},
            "over the limit of 64",
        ),
        "id out of vocabulary": ({"input_ids": ids + 1000, "attention_mask": ones}, "out of range"),
        "mask value 3": ({"input_ids": ids, "attention_mask": ones * 3}, "0 or 1"),
        "token type 2": (
            {"input_ids": ids, "attention_mask": ones, "token_type_ids": ones * 2},
            "token type ids",
        ),
        "shape mismatch": ({"input_ids": ids, "attention_mask": ones[:, :2]}, "same shape"),
    }


@pytest.mark.parametrize("case", list(_bad_feeds()))
def test_bad_feeds_fail_before_onnxruntime(case):
    """InputError (not an onnxruntime error, not a crash) for every bad feed."""
    runner = trt_runtime.load(tiny_export("bert", "text-classification")[1], backend="onnxruntime")
    feeds, message = _bad_feeds()[case]
    with pytest.raises(InputError, match=message):
        runner(feeds)


def test_runner_is_torch_free():
    """trt_runtime's runtime path imports neither torch nor models/exporter."""
    import subprocess
    import sys

    export_dir = tiny_export("bert", "text-classification")[1]
    code = (
        "import sys, numpy as np, trt_runtime\n"
        f"p = trt_runtime.pipeline('text-classification', {str(export_dir)!r})\n"
        "p('john lives in paris')\n"
        "bad = [m for m in ('torch', 'models', 'exporter', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_an_onnxruntime_failure_at_run_time_is_a_documented_error_naming_the_file(tmp_path):
    """An export whose export.json (and its copy in model.onnx) claims 1000 positions for a model of 64: the
    feeds pass the checks and ONNX Runtime's Gather fails with its InvalidArgument, a plain Exception."""
    import onnx
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    from trt_runtime.backends.base import BackendRunError
    from trt_runtime.contract.files import sha256_file

    directory = fresh_copy(tiny_export("bert", "feature-extraction")[1], tmp_path)
    model = onnx.load(directory / "model.onnx")
    (copy,) = [p for p in model.metadata_props if p.key == "export"]
    copy.value = json.dumps({**json.loads(copy.value), "max_sequence_length": 1000})
    onnx.save(model, directory / "model.onnx")
    info = json.loads((directory / "export.json").read_text())
    info.update(max_sequence_length=1000, onnx_sha256=sha256_file(directory / "model.onnx"))
    (directory / "export.json").write_text(json.dumps(info))
    ids = np.ones((1, 100), np.int64)
    feeds = {"input_ids": ids, "attention_mask": ids, "token_type_ids": 0 * ids}
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(InvalidArgument):  # ONNX Runtime itself
        session.run(None, feeds)
    assert not issubclass(InvalidArgument, (ValueError, RuntimeError))
    runner = OrtRunner(directory, graph="exported", cache=False)
    with pytest.raises(BackendRunError) as raised:
        runner(feeds)
    message = str(raised.value)
    assert raised.value.code == "backend-run-failed" and isinstance(raised.value, RuntimeError)
    assert message.startswith(
        f"ONNX Runtime could not run {directory / 'model.onnx'} on inputs that passed the checks (input_ids [1, 100], "
        f"attention_mask [1, 100], token_type_ids [1, 100]): [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "
    )
    assert "indices element out of data bounds" in message
    assert message.endswith("Its graph and export.json disagree (re-export the model), or the machine is out of "
                            "memory (run a smaller batch)")


# --- threads and processes sharing a runner, a pipeline, a fresh export --------------------------------------
# Concurrency: one runner or pipeline shared by 8 threads x 50 requests answers every request exactly as a
# serial call does (ONNX Runtime sessions are thread-safe; the tokenizer's truncation state is per call, behind a
# lock); and many threads, or several processes, making runners on one fresh qdq export at once all get the graph
# serial use gets, bit for bit (one derives under the cache's lock, the others wait and reuse it).

THREADS, REQUESTS, PROCESSES = 8, 50, 4


def one_at_a_time(call: Callable[[int], Any], count: int) -> dict[int, Any]:
    """call(i) for every i in turn, an InputError kept as the answer (what the threads must reproduce)."""
    serial: dict[int, Any] = {}
    for i in range(count):
        try:
            serial[i] = call(i)
        except InputError as e:
            serial[i] = e
    return serial


def assert_answers_as_serial(
    results: dict[tuple[int, int], Any], serial: dict[int, Any], same: Callable[[Any, Any, str], None]
) -> None:
    """Every threaded call answered as the same request did alone: the same InputError, or `same` answers."""
    assert len(results) == THREADS * REQUESTS
    for (thread, n), (request, got) in results.items():
        expected = serial[request]
        if isinstance(expected, InputError):
            assert isinstance(got, InputError) and str(got) == str(expected), (thread, n, got)
        else:
            same(got, expected, f"thread {thread} call {n} (input {request})")


def hammer(call: Callable[[int], Any], requests: list[int]) -> dict[tuple[int, int], Any]:
    """Each of THREADS threads makes the calls in `requests` (indices into its inputs), all threads released
    at once; returns (thread, call) -> result (or the exception it raised)."""
    results: dict[tuple[int, int], Any] = {}
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        start.wait()
        for n, request in enumerate(_rotated(requests, thread)):
            try:
                results[(thread, n)] = (request, call(request))
            except Exception as e:  # kept, so the test reports it rather than losing it in a thread
                results[(thread, n)] = (request, e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return results


def _rotated(requests: list[int], thread: int) -> list[int]:
    """Every thread makes the same requests, in a different order, so different inputs run at the same time."""
    shift = (thread * 7) % len(requests)
    return requests[shift:] + requests[:shift]


def feeds_pool(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Ten feeds of different batch sizes and lengths, some padded, some with bad ids (refused)."""
    pool = []
    for i in range(10):
        batch, length = 1 + i % 4, 3 + (i * 5) % 40
        ids = rng.integers(3, 99, size=(batch, length))
        mask = np.ones_like(ids)
        mask[0, length // 2 :] = 0
        if i == 7:
            ids[0, 1] = 99  # out of the vocabulary: InputError, every time, from every thread
        pool.append(
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": (rng.random(ids.shape) < 0.3) * 1}
        )
    return pool


def test_shared_ort_runner_gives_serial_answers():
    runner = OrtRunner(tiny_export("bert", "text-classification")[1], cache=False)
    pool = feeds_pool(np.random.default_rng(0))

    def call(i: int) -> Any:
        return runner(pool[i])["logits"]

    serial = one_at_a_time(call, len(pool))
    requests = [i % len(pool) for i in range(REQUESTS)]
    results = hammer(call, requests)
    def same(got: Any, expected: Any, where: str) -> None:
        assert isinstance(got, np.ndarray), (where, got)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=where)

    assert_answers_as_serial(results, serial, same)


TEXTS = [
    "john lives in paris .",
    "the movie was not good",
    " ".join(["mary reads a book in the city"] * 12),  # over 64 tokens: truncated with a warning
    "what a great day",
    "",  # refused: InputError
    "the capital of france is paris and the river is big",
    ["a good day", "a bad night", "the book"],
]


@pytest.mark.parametrize("task", ["text-classification", "question-answering"])
def test_shared_pipeline_gives_serial_answers(task):
    if task == "text-classification":
        pipe = trt_runtime.pipeline(task, tiny_export("bert", task)[1], top_k=None)
        inputs: list[tuple[Any, dict[str, Any]]] = [(text, {}) for text in TEXTS]
    else:
        # question answering sets the tokenizer's truncation per call (max_seq_len, doc_stride): calls with
        # different settings run at the same time on the one tokenizer
        pipe = trt_runtime.pipeline(task, tiny_export("bert", task, sharpen=4.0)[1])
        context = " ".join(["john lives in paris and mary lives in berlin ."] * 6)
        inputs = [
            ({"question": question, "context": context}, {"max_seq_len": seq, "doc_stride": stride})
            for question in ("where does john live ?", "who lives in berlin ?")
            for seq, stride in ((24, 8), (40, 16), (64, 0))
        ] + [({"question": " ", "context": context}, {})]

    def call(i: int) -> Any:
        value, options = inputs[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return pipe(value, **options)

    serial = one_at_a_time(call, len(inputs))
    assert any(isinstance(v, InputError) for v in serial.values())
    results = hammer(call, [i % len(inputs) for i in range(REQUESTS)])
    def same(got: Any, expected: Any, where: str) -> None:
        assert got == expected, f"{where}: {got} != {expected}"

    assert_answers_as_serial(results, serial, same)


# --- many threads and processes making runners on one fresh qdq export at once (issue 21) ------------------


@pytest.fixture(scope="module")
def qdq_export(tmp_path_factory) -> Path:
    import exporter
    from tests.fixtures.runtime_exports import save_checkpoint

    root = tmp_path_factory.mktemp("concurrent-qdq")
    save_checkpoint(root / "checkpoint", "bert", "text-classification")
    return Path(
        exporter.export(
            root / "checkpoint", root / "export", task="text-classification", quantization="qdq",
            num_calibration_samples=16, validate=False, log=None,
        )
    )


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    ids = rng.integers(3, 99, size=(3, 14))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _no_temporaries(export_dir: Path) -> list[Path]:
    return [p for p in (export_dir / CACHE_DIR).rglob(".*") if p.name != ".lock"]


def test_threads_making_runners_on_a_fresh_export_all_get_the_serial_graph(qdq_export, tmp_path):
    feeds = _feeds()
    serial = trt_runtime.load(fresh_copy(qdq_export, tmp_path, "serial"), backend="onnxruntime")(feeds)["logits"]
    export_dir = fresh_copy(qdq_export, tmp_path, "fresh")
    start = threading.Barrier(THREADS)
    results: dict[int, Any] = {}

    def worker(thread: int) -> None:
        start.wait()
        try:
            runner = trt_runtime.load(export_dir, backend="onnxruntime")
            results[thread] = (runner.choice, runner(feeds)["logits"])
        except Exception as e:  # kept, so the test reports it
            results[thread] = (e, None)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == THREADS
    choices = [choice for choice, _ in results.values()]
    assert all(isinstance(c, BackendChoice) and c.graph == "cpu-int8" for c in choices), choices
    # one thread derived each artefact while the others waited on the lock, then reused it
    assert sorted(c.cache.value for c in choices) == ["created"] + ["reused"] * (THREADS - 1)
    assert sorted(c.session_cache.value for c in choices) == ["created"] + ["reused"] * (THREADS - 1)
    for thread, (_, logits) in results.items():
        np.testing.assert_array_equal(logits, serial, err_msg=f"thread {thread}")
    assert not _no_temporaries(export_dir)


_PROCESS = """
import json, sys, time
from pathlib import Path
import numpy as np
import trt_runtime
export_dir, go, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
feeds = dict(np.load(sys.argv[4]))
while not go.exists():
    time.sleep(0.005)
runner = trt_runtime.load(export_dir, backend="onnxruntime")
np.save(out.with_suffix(".npy"), runner(feeds)["logits"])
out.write_text(json.dumps([runner.choice.graph, runner.choice.cache.value, runner.choice.session_cache.value]))
"""


def test_processes_making_runners_on_a_fresh_export_all_get_the_serial_graph(qdq_export, tmp_path):
    feeds = _feeds()
    serial = trt_runtime.load(fresh_copy(qdq_export, tmp_path, "serial"), backend="onnxruntime")(feeds)["logits"]
    export_dir = fresh_copy(qdq_export, tmp_path, "fresh")
    np.savez(tmp_path / "feeds.npz", **feeds)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS, str(export_dir), str(go), str(tmp_path / f"out-{n}.json"),
             str(tmp_path / "feeds.npz")],
            env=env,
        )
        for n in range(PROCESSES)
    ]
    time.sleep(0.5)  # let them import; the go file releases them at once
    go.touch()
    assert [p.wait(timeout=300) for p in processes] == [0] * PROCESSES
    reports = [json.loads((tmp_path / f"out-{n}.json").read_text()) for n in range(PROCESSES)]
    assert all(graph == "cpu-int8" for graph, _, _ in reports), reports
    assert sorted(cache for _, cache, _ in reports) == ["created"] + ["reused"] * (PROCESSES - 1), reports
    for n in range(PROCESSES):
        np.testing.assert_array_equal(np.load(tmp_path / f"out-{n}.npy"), serial, err_msg=f"process {n}")
    assert not _no_temporaries(export_dir)


# --- out-of-range ids: ONNX Runtime alone answers wrongly; the runner refuses first --------------------------

@pytest.fixture(scope="module")
def clf_runner(clf_dir: Path) -> OrtRunner:
    return OrtRunner(clf_dir, cache=False)


def _ids_feeds(ids: list[list[int]], **overrides: Any) -> dict[str, np.ndarray]:
    input_ids = np.array(ids, dtype=np.int64)
    feeds = {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }
    feeds.update({name: np.asarray(value, dtype=np.int64) for name, value in overrides.items()})
    return feeds





GOOD = [[2, 10, 11, 3]]


def _raw_session(export_dir: Path) -> ort.InferenceSession:
    """A bare ONNX Runtime session on the export's model.onnx, with no validation in front of it."""
    return ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_negative_token_id_is_silently_another_token_in_onnxruntime_and_refused_by_the_runner(
    clf_dir, clf_runner
):
    """Gather takes -1 as the last row: ONNX Runtime alone answers for token 98, a silently wrong answer."""
    session = _raw_session(clf_dir)
    negative = _ids_feeds([[2, -1, 11, 3]])
    last_token = _ids_feeds([[2, VOCAB - 1, 11, 3]])
    np.testing.assert_array_equal(session.run(None, negative)[0], session.run(None, last_token)[0])
    with pytest.raises(
        InputError, match=r"input_ids\[0, 1\] = -1 is out of range: token ids must be in \[0, 99\)"
    ):
        clf_runner(negative)


def test_token_id_past_the_vocabulary_is_refused_before_the_gather(clf_dir, clf_runner):
    """ONNX Runtime's CPU Gather stops with its own error (a GPU Gather reads out of bounds); ours is first."""
    feeds = _ids_feeds([[2, VOCAB, 11, 3]])
    with pytest.raises(Exception, match="out of data bounds") as raw:
        _raw_session(clf_dir).run(None, feeds)
    assert not isinstance(raw.value, InputError)
    with pytest.raises(InputError, match=r"input_ids\[0, 1\] = 99 is out of range"):
        clf_runner(feeds)


def test_negative_token_type_is_silently_wrong_in_onnxruntime_and_refused_by_the_runner(clf_dir, clf_runner):
    """-1 is the last row of the token-type table: ONNX Runtime alone answers as for token type 1."""
    session = _raw_session(clf_dir)
    right = session.run(None, _ids_feeds(GOOD))[0]
    wrong = session.run(None, _ids_feeds(GOOD, token_type_ids=[[0, -1, 0, 0]]))[0]
    np.testing.assert_array_equal(wrong, session.run(None, _ids_feeds(GOOD, token_type_ids=[[0, 1, 0, 0]]))[0])
    assert not np.array_equal(wrong, right)
    with pytest.raises(InputError, match=r"token_type_ids\[0, 1\] = -1 is out of range"):
        clf_runner(_ids_feeds(GOOD, token_type_ids=[[0, -1, 0, 0]]))


def test_attention_mask_of_5_gives_nan_in_onnxruntime_and_is_refused_by_the_runner(clf_dir, clf_runner):
    session = _raw_session(clf_dir)
    assert np.isnan(session.run(None, _ids_feeds(GOOD, attention_mask=[[1, 5, 1, 1]]))[0]).any()
    with pytest.raises(InputError, match=r"attention_mask\[0, 1\] = 5 is out of range: .* 0 or 1"):
        clf_runner(_ids_feeds(GOOD, attention_mask=[[1, 5, 1, 1]]))


@pytest.mark.parametrize("name", ["input_ids", "attention_mask", "token_type_ids"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_float_feeds_with_nan_are_refused_by_dtype(clf_runner, name, dtype):
    """None of our exports take float inputs: a float array (NaN or not) is refused by its dtype."""
    feeds: dict[str, np.ndarray] = dict(_ids_feeds(GOOD))
    value = feeds[name].astype(dtype)
    value[0, 0] = np.nan
    feeds[name] = value
    with pytest.raises(
        InputError,
        match=rf"{name} has dtype {np.dtype(dtype).name}; expected integers .*astype\(np.int64\)",
    ):
        clf_runner(feeds)


def test_runner_result_does_not_depend_on_the_feed_layout(clf_runner):
    """Non-contiguous, big-endian, read-only and narrower feeds give the result of plain int64 ones."""
    plain = _ids_feeds([[2, 10, 11, 3], [2, 12, 3, 0]], attention_mask=[[1, 1, 1, 1], [1, 1, 1, 0]])
    expected = clf_runner(plain)["logits"]
    wide = {name: np.repeat(value, 2, axis=1)[:, ::2] for name, value in plain.items()}  # strided views
    big_endian = {name: value.astype(">i8") for name, value in plain.items()}
    read_only = {name: value.copy() for name, value in plain.items()}
    for value in read_only.values():
        value.flags.writeable = False
    narrow = {name: value.astype(np.uint8) for name, value in plain.items()}
    for feeds in (wide, big_endian, read_only, narrow):
        np.testing.assert_array_equal(clf_runner(feeds)["logits"], expected)
