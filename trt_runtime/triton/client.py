"""A Triton client for the repository's models, with tritonclient (HTTP and gRPC), and a bounded load test.

Runs where tritonclient is installed: the server environment (`python -m trt_runtime triton-serve`
prints how), e.g.

    $ENV/bin/python -m trt_runtime.triton.client text --url 127.0.0.1:8001 --protocol grpc \\
          --model minilm-qdq "A quiet, thoughtful film."
    $ENV/bin/python -m trt_runtime.triton.client text --model squad --input-format json \\
          '{"question": "Where does John live?", "context": "John lives in Paris."}'
    $ENV/bin/python -m trt_runtime.triton.client load --model minilm-qdq --clients 8 --requests 25 TEXT...

In Python:

    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient("127.0.0.1:8000")
    text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([["a great movie".encode()]], dtype=object))
    result = client.infer("sst2", [text], parameters={"top_k": 2})  # {"options": '{"top_k": null}'}
    answer = json.loads(result.as_numpy("ANSWER")[0, 0])     # what trt_runtime.pipeline returns

--parameters takes the pipeline's call options as JSON ({"top_k": null} included: values that Triton's
request parameters cannot carry travel as JSON in the `options` parameter). Sub-commands print JSON on
stdout: `text` (the answers), `tensors` (an .npz of the export's inputs in, an .npz of its outputs out),
`load` (latencies and answers), `parse-config` (config.pbtxt files parsed with Triton's model-config
schema, tritonclient.grpc.model_config_pb2).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROTOCOLS = ("http", "grpc")
TEXT = "TEXT"
ANSWER = "ANSWER"
#: numpy dtype -> Triton wire datatype
WIRE_DTYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float16": "FP16", "bool": "BOOL"}


def _module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol {protocol!r}; use http or grpc")
    return module


def connect(url: str, protocol: str, timeout_s: float = 60) -> Any:
    """A tritonclient InferenceServerClient (one per thread: the HTTP client is not thread-safe)."""
    module = _module(protocol)
    if protocol == "http":
        return module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
    return module.InferenceServerClient(url)


def infer_text(
    client: Any,
    protocol: str,
    model: str,
    texts: Sequence[str],
    parameters: Mapping[str, Any] | None = None,
    timeout_s: float = 60,
) -> list[Any]:
    """One request of len(texts) rows to a text model; the decoded JSON answer of each row."""
    module = _module(protocol)
    data = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
    text_input = module.InferInput(TEXT, list(data.shape), "BYTES")
    text_input.set_data_from_numpy(data)
    kwargs: dict[str, Any] = {"parameters": dict(parameters)} if parameters else {}
    if protocol == "grpc":
        kwargs["client_timeout"] = timeout_s
    result = client.infer(model, [text_input], outputs=[module.InferRequestedOutput(ANSWER)], **kwargs)
    return [json.loads(row[0]) for row in result.as_numpy(ANSWER)]


def infer_tensors(
    client: Any, protocol: str, model: str, feeds: Mapping[str, np.ndarray], timeout_s: float = 60
) -> dict[str, np.ndarray]:
    """The export's inputs (named arrays, batch first) in, every output out."""
    module = _module(protocol)
    inputs = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), WIRE_DTYPES[str(array.dtype)])
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    kwargs: dict[str, Any] = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    result = client.infer(model, inputs, **kwargs)
    response = result.get_response(as_json=True) if protocol == "grpc" else result.get_response()
    return {output["name"]: result.as_numpy(output["name"]) for output in response["outputs"]}


def infer_concurrently(
    url: str, protocol: str, model: str, texts: Sequence[str], parameters: Mapping[str, Any] | None = None
) -> list[Any]:
    """Each text as its own request, all at once (a thread and client each): what dynamic batching merges."""
    answers: list[Any] = [None] * len(texts)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(texts))

    def send(index: int) -> None:
        try:
            client = connect(url, protocol)
            barrier.wait(timeout=60)
            answers[index] = infer_text(client, protocol, model, [texts[index]], parameters)[0]
            client.close()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return answers


def load_test(
    url: str,
    protocol: str,
    model: str,
    texts: Sequence[str],
    clients: int,
    requests: int,
    parameters: Mapping[str, Any] | None = None,
    timeout_s: float = 60,
) -> dict[str, Any]:
    """`clients` threads, each with its own connection, send `requests` one-text requests one after the
    other (texts taken in turn). Bounded: clients x requests requests, each with a timeout.

    Returns the latency of every request (s), the wall time, the error messages and each text's answer.
    """
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[str, Any] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client_loop(number: int) -> None:
        client = connect(url, protocol, timeout_s)
        barrier.wait(timeout=60)
        for i in range(requests):
            text = texts[(number * requests + i) % len(texts)]
            start = time.perf_counter()
            try:
                answer = infer_text(client, protocol, model, [text], parameters, timeout_s)[0]
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                answers.setdefault(text, answer)
        client.close()

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s * requests + 60)
    wall = time.perf_counter() - start
    return {"latencies_s": latencies, "wall_s": wall, "errors": errors, "answers": answers}


def parse_configs(paths: Sequence[str]) -> list[dict[str, Any]]:
    """config.pbtxt files parsed with Triton's model-config schema (a ParseError names the bad line)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    configs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            message = text_format.Parse(f.read(), model_config_pb2.ModelConfig())
        configs.append(json_format.MessageToDict(message, preserving_proto_field_name=True))
    return configs


def request_parameters(options: Mapping[str, Any], input_format: str | None = None) -> dict[str, Any]:
    """Pipeline call options as Triton request parameters: int, bool and str values as they are, any
    other (None, float, list) in the `options` parameter as JSON."""
    plain = {k: v for k, v in options.items() if isinstance(v, (bool, int, str))}
    other = {k: v for k, v in options.items() if k not in plain}
    if other:
        plain["options"] = json.dumps(other)
    if input_format:
        plain["input_format"] = input_format
    return plain


def _parameters(text: str | None, input_format: str | None) -> dict[str, Any]:
    return request_parameters(json.loads(text) if text else {}, input_format)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trt_runtime.triton.client", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("text", "tensors", "load"):
        command = sub.add_parser(name)
        command.add_argument("--url", default="127.0.0.1:8000", help="host:port (HTTP 8000, gRPC 8001)")
        command.add_argument("--protocol", choices=PROTOCOLS, default="http")
        command.add_argument("--model", required=True)
    for name in ("text", "load"):
        command = sub.choices[name]
        command.add_argument("texts", nargs="+", metavar="TEXT")
        command.add_argument("--parameters", help="request parameters as JSON (pipeline options)")
        command.add_argument("--input-format", choices=("text", "json"))
    sub.choices["text"].add_argument(
        "--concurrent", action="store_true", help="send each TEXT as its own request, all at once"
    )
    sub.choices["tensors"].add_argument("inputs", help=".npz of the export's inputs")
    sub.choices["tensors"].add_argument("output", help=".npz to write the outputs to")
    sub.choices["load"].add_argument("--clients", type=int, default=8)
    sub.choices["load"].add_argument("--requests", type=int, default=25, help="requests per client")
    parse = sub.add_parser("parse-config")
    parse.add_argument("configs", nargs="+", metavar="CONFIG_PBTXT")
    args = parser.parse_args(argv)

    if args.command == "parse-config":
        result: Any = parse_configs(args.configs)
    elif args.command == "tensors":
        with np.load(args.inputs) as data:
            feeds = {name: data[name] for name in data.files}
        outputs = infer_tensors(connect(args.url, args.protocol), args.protocol, args.model, feeds)
        save: Any = np.savez  # numpy's stub takes **outputs for its own keywords
        save(args.output, **outputs)
        result = {name: list(value.shape) for name, value in outputs.items()}
    elif args.command == "load":
        parameters = _parameters(args.parameters, args.input_format)
        result = load_test(
            args.url, args.protocol, args.model, args.texts, args.clients, args.requests, parameters
        )
    else:
        parameters = _parameters(args.parameters, args.input_format)
        if args.concurrent:
            result = infer_concurrently(args.url, args.protocol, args.model, args.texts, parameters)
        else:
            client = connect(args.url, args.protocol)
            result = infer_text(client, args.protocol, args.model, args.texts, parameters)
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
