"""Concurrency: one runner or pipeline shared by 8 threads x 50 requests answers every request exactly as a
serial call does (ONNX Runtime sessions are thread-safe; the tokenizer's truncation state is per call, behind a
lock); and many threads, or several processes, making runners on one fresh qdq export at once all get the graph
serial use gets, bit for bit (one derives under the cache's lock, the others wait and reuse it)."""

from __future__ import annotations

import json
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
import pytest

import trt_runtime
from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import tiny_export
from trt_runtime.backends.base import BackendChoice
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.validation import InputError

THREADS, REQUESTS, PROCESSES = 8, 50, 4


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

    serial: dict[int, Any] = {}
    for i in range(len(pool)):
        try:
            serial[i] = call(i)
        except InputError as e:
            serial[i] = e
    requests = [i % len(pool) for i in range(REQUESTS)]
    results = hammer(call, requests)
    assert len(results) == THREADS * REQUESTS
    for (thread, n), (request, got) in results.items():
        expected = serial[request]
        if isinstance(expected, InputError):
            assert isinstance(got, InputError) and str(got) == str(expected), (thread, n, got)
        else:
            assert isinstance(got, np.ndarray), (thread, n, got)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"thread {thread} call {n}")


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

    serial: dict[int, Any] = {}
    for i in range(len(inputs)):
        try:
            serial[i] = call(i)
        except InputError as e:
            serial[i] = e
    assert any(isinstance(v, InputError) for v in serial.values())
    results = hammer(call, [i % len(inputs) for i in range(REQUESTS)])
    assert len(results) == THREADS * REQUESTS
    for (thread, n), (request, got) in results.items():
        expected = serial[request]
        if isinstance(expected, InputError):
            assert isinstance(got, InputError) and str(got) == str(expected), (thread, n, got)
        else:
            assert got == expected, f"thread {thread} call {n} (input {request}): {got} != {expected}"


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


def _fresh_copy(export_dir: Path, target: Path) -> Path:
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


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
    serial = trt_runtime.load(_fresh_copy(qdq_export, tmp_path / "serial"), backend="onnxruntime")(feeds)["logits"]
    export_dir = _fresh_copy(qdq_export, tmp_path / "fresh")
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
    serial = trt_runtime.load(_fresh_copy(qdq_export, tmp_path / "serial"), backend="onnxruntime")(feeds)["logits"]
    export_dir = _fresh_copy(qdq_export, tmp_path / "fresh")
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
