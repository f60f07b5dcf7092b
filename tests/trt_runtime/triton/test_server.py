"""A real Triton Inference Server (nvidia-pytriton's tritonserver) on a repository made by triton-repo, on
free loopback ports: text in over HTTP and gRPC gives what trt_runtime.pipeline gives in-process, the ONNX
model served through the Python backend gives what OrtRunner gives, the live server's model configs match
the exports' ONNX signatures, dynamic batching merges concurrent requests, and the server stops in
bounded time."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest

import exporter
import trt_runtime
from tests.conftest import SENTENCES
from tests.fixtures.runtime_exports import assert_results_close, save_checkpoint, tiny_export
from tests.fixtures.triton_helpers import ROOT, config_signature, environment, onnx_signature, run_client
from trt_runtime.contract.export_dir import MODEL_ONNX
from trt_runtime.triton.repository import RepositoryOptions, write_repository
from trt_runtime.triton.server import TritonServer, binary_problem

QUEUE_DELAY_US = 100_000  # long enough that concurrent requests always meet in the queue
QA_INPUTS = [
    {"question": "where is the capital?", "context": "the capital of france is paris, on the river."},
    {"question": "who was good?", "context": "she was good at night and he was bad in the day."},
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-server-exports")
    # an I-BERT integer export: ibert custom ops (ONNX functions) run by ONNX Runtime in the server
    checkpoint = root / "ibert-checkpoint"
    save_checkpoint(checkpoint, "ibert", "text-classification", sharpen=20.0)
    ibert = exporter.export(
        checkpoint,
        root / "ibert",
        task="text-classification",
        quantization="integer",
        num_calibration_samples=8,
        calibration_batch_size=8,
        log=None,
    )
    return {
        "sst2": tiny_export("bert", "text-classification", sharpen=20.0)[1],
        "qa": tiny_export("bert", "question-answering", sharpen=4.0)[1],
        "ibert": ibert,
    }


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    env = environment()
    problem = binary_problem(env)
    if problem:
        pytest.skip(problem)
    repo = tmp_path_factory.mktemp("triton-server") / "repo"
    options = RepositoryOptions(
        kinds=("text", "onnx"),
        onnx_backend="python",
        max_batch_size=8,
        max_queue_delay_us=QUEUE_DELAY_US,
        runner_options={"intra_op_num_threads": 1},
    )
    write_repository(list(exports.items()), repo, options)
    started = time.monotonic()
    triton = TritonServer(repo, env, log_path=repo.parent / "tritonserver.log")
    triton.start(timeout_s=240)
    print(f"tritonserver ready in {time.monotonic() - started:.1f} s")
    try:
        yield triton
    finally:
        triton.stop()


def pipe(exports, name):
    return trt_runtime.pipeline(None, exports[name], "onnxruntime", batch_size=8)


def client(server, protocol, *args):
    url = server.http_url if protocol == "http" else server.grpc_url
    return run_client(environment(), args[0], "--url", url, "--protocol", protocol, *args[1:])


def test_live_model_configs_match_the_onnx_signatures(server, exports):
    for name, export in exports.items():
        tensors = server.model_config(f"{name}-onnx")
        assert config_signature(tensors) == onnx_signature(export / MODEL_ONNX)
        assert tensors["backend"] == "python" and tensors["max_batch_size"] == 8
        assert tensors["dynamic_batching"]["max_queue_delay_microseconds"] == QUEUE_DELAY_US
        text = server.model_config(name)
        assert config_signature(text) == {
            "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}],
            "output": [{"name": "ANSWER", "data_type": "TYPE_STRING", "dims": [1]}],
        }
        assert text["instance_group"][0]["kind"] == "KIND_CPU"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_text_in_gives_the_in_process_answers(server, exports, protocol):
    expected = pipe(exports, "sst2")(SENTENCES)
    answers = client(server, protocol, "text", "--model", "sst2", *SENTENCES)  # one request, 8 rows
    assert_results_close(answers, expected, atol=1e-6)
    expected = pipe(exports, "sst2")(SENTENCES[:3], top_k=None)
    answers = client(
        server, protocol, "text", "--model", "sst2", "--parameters", '{"top_k": null}', *SENTENCES[:3]
    )
    assert_results_close(answers, expected, atol=1e-6)
    assert all(len(a) == len(expected[0]) > 1 for a in answers)  # every label


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_question_answering_json_inputs(server, exports, protocol):
    expected = pipe(exports, "qa")(QA_INPUTS, top_k=2)
    texts = [json.dumps(item) for item in QA_INPUTS]
    answers = client(
        server,
        protocol,
        "text",
        "--model",
        "qa",
        "--input-format",
        "json",
        "--parameters",
        '{"top_k": 2}',
        *texts,
    )
    assert_results_close(answers, expected, atol=1e-6)


def test_ibert_integer_export(server, exports):
    expected = pipe(exports, "ibert")(SENTENCES[:4])
    assert_results_close(
        client(server, "grpc", "text", "--model", "ibert", *SENTENCES[:4]), expected, atol=1e-6
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnx_model_gives_what_ort_runner_gives(server, exports, protocol, tmp_path):
    runner = trt_runtime.load(exports["sst2"], "onnxruntime")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, runner.info.vocab_size, size=(3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    np.savez(tmp_path / "in.npz", **feeds)
    shapes = client(
        server,
        protocol,
        "tensors",
        "--model",
        "sst2-onnx",
        str(tmp_path / "in.npz"),
        str(tmp_path / "out.npz"),
    )
    assert shapes == {"logits": [3, runner.info.outputs[0].shape[1]]}
    expected = runner(feeds)
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_allclose(got["logits"], expected["logits"], rtol=0, atol=1e-6)


def test_dynamic_batching_merges_concurrent_requests(server, exports):
    before = server.model_statistics("sst2")
    answers = client(
        server, "grpc", "text", "--model", "sst2", "--concurrent", *SENTENCES
    )  # 8 requests at once
    after = server.model_statistics("sst2")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == len(SENTENCES)
    assert executions < inferences, (
        f"{inferences} requests ran in {executions} executions: nothing was merged"
    )
    expected = pipe(exports, "sst2")(SENTENCES)
    # a merged batch pads rows to another length than in-process batching does: float rounding only
    assert_results_close(answers, expected, atol=1e-5)


def test_a_bad_request_gets_an_error_that_says_why(server):
    with pytest.raises(AssertionError, match="is not JSON"):
        client(server, "http", "text", "--model", "qa", "--input-format", "json", "not json")
    with pytest.raises(AssertionError, match="unknown option"):
        client(server, "http", "text", "--model", "sst2", "--parameters", '{"top_kk": 1}', "a text")
    assert client(server, "http", "text", "--model", "sst2", "still served")  # the model still answers


def test_metrics_endpoint(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="sst2"' in text


def test_stops_within_bounded_time(server):
    process = server.process
    assert process is not None and server.running
    started = time.monotonic()
    code = server.stop(timeout_s=30)
    assert time.monotonic() - started < 35
    assert code is not None and process.poll() is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.http_port)) != 0, "HTTP port still open after stop()"


def test_serve_command_prints_the_endpoints_and_stops_on_ctrl_c(exports, tmp_path):
    """`python -m trt_runtime triton-serve REPO` (what `make serve` runs), stopped with SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    environment()
    repo = tmp_path / "repo"
    write_repository([("sst2", exports["sst2"])], repo, RepositoryOptions(kinds=("text",)))
    command = [sys.executable, "-m", "trt_runtime", "triton-serve", str(repo)]
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(
        [*command, *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    try:
        lines = []
        deadline = time.monotonic() + 240
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert (
            "ready with sst2" in output and "HTTP    http://127.0.0.1:" in output and "/metrics" in output
        ), output
        http = next(line.split()[1] for line in lines if line.strip().startswith("HTTP"))
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "tritonserver stopped (exit status 0)" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
