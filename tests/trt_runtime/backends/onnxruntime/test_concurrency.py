"""Issue 11, concurrency: one runner or pipeline shared by 8 threads x 50 requests answers every request
exactly as a serial call does (ONNX Runtime sessions are thread-safe; the tokenizer's truncation state is
per call, behind a lock)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import trt_runtime
from tests.fixtures.runtime_exports import tiny_export
from trt_runtime.backends.onnxruntime.runner import OrtRunner
from trt_runtime.validation import InputError

THREADS, REQUESTS = 8, 50


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
