"""`make serve-bench`: a bounded load test of the demo exports on a real Triton server vs in-process calls.

For each export (default: exports/minilm-qdq and exports/minilm-float, from `make export`), the text model of
a `triton-repo` repository (feature-extraction, mean pooling, unit length: the pipeline's sentence
embedding) is served by nvidia-pytriton's tritonserver on free loopback ports. CLIENTS concurrent clients
(threads, one connection each) send REQUESTS one-sentence requests each, over HTTP and then gRPC; the
same CLIENTS x REQUESTS calls then go to `trt_runtime.pipeline` in this process (CLIENTS threads sharing
one pipeline), and once as a single batched call. Reported: throughput, p50/p90/p99 latency, the mean
batch the dynamic batcher formed (server statistics), errors, and how far the server's answers are from
the in-process ones. Results: benchmarks/results/triton-load.json and .png.

    PYTHONPATH=. python benchmarks/triton_load.py [--clients 8] [--requests 25] [--exports DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trt_runtime  # noqa: E402
from trt_runtime.contract.export_dir import read_export_info  # noqa: E402
from trt_runtime.contract.files import atomic_file, write_json_atomic  # noqa: E402
from trt_runtime.triton.repository import RepositoryOptions, write_repository  # noqa: E402
from trt_runtime.triton.server import TritonServer, server_environment  # noqa: E402

PIPELINE_OPTIONS: dict[str, Any] = {"pooling": "mean", "normalize": True}
DEFAULT_EXPORTS = ["exports/minilm-qdq", "exports/minilm-float"]
TEXTS_FILE = ROOT / "calibration_data/vader/amazon_reviews.tsv"  # held out from calibration (calibration.txt)


def say(message: str) -> None:
    print(message, flush=True)


def load_texts(count: int) -> list[str]:
    lines = TEXTS_FILE.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[2] for line in lines[:count]]


def summary(latencies_s: list[float], wall_s: float, errors: int) -> dict[str, Any]:
    ms = np.array(latencies_s) * 1000
    return {
        "requests": len(latencies_s),
        "errors": errors,
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(latencies_s) / wall_s, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "mean": round(float(ms.mean()), 2),
        },
    }


def in_process(pipe: Any, texts: list[str], clients: int, requests: int) -> dict[str, Any]:
    """The same load as the Triton clients, as direct calls: `clients` threads share one pipeline."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def loop(number: int) -> None:
        barrier.wait()
        for i in range(requests):
            text = texts[(number * requests + i) % len(texts)]
            start = time.perf_counter()
            pipe(text)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, time.perf_counter() - start, 0)


def batched(pipe: Any, texts: list[str], total: int) -> dict[str, Any]:
    """All `total` texts in one call (the pipeline batches them itself): the in-process ceiling."""
    items = [texts[i % len(texts)] for i in range(total)]
    start = time.perf_counter()
    pipe(items)
    wall = time.perf_counter() - start
    return {"requests": total, "wall_s": round(wall, 3), "throughput_rps": round(total / wall, 2)}


def client_load(
    env: Any, server: TritonServer, protocol: str, model: str, texts: list[str], args: Any
) -> dict:
    url = server.http_url if protocol == "http" else server.grpc_url
    command = [
        os.fspath(env.python),
        "-m",
        "trt_runtime.triton.client",
        "load",
        "--url",
        url,
        "--protocol",
        protocol,
        "--model",
        model,
        "--clients",
        str(args.clients),
        "--requests",
        str(args.requests),
        *texts,
    ]
    timeout = 60 * args.requests + 120
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env.environ([ROOT]),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the load client failed:\n{result.stderr[-3000:]}")
    data: dict = json.loads(result.stdout)
    return data


def answer_difference(server_answers: dict[str, Any], reference: dict[str, np.ndarray]) -> dict[str, float]:
    diffs = [float(np.abs(np.asarray(server_answers[t]) - reference[t]).max()) for t in server_answers]
    cosines = [float(np.dot(np.asarray(server_answers[t]), reference[t])) for t in server_answers]
    return {"texts_compared": len(diffs), "max_abs_diff": max(diffs), "min_cosine": min(cosines)}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    x = np.arange(len(runs))
    colors = ["#4C72B0" if r["mode"].startswith("triton") else "#DD8452" for r in runs]
    ax1.bar(x, [r["throughput_rps"] for r in runs], color=colors)
    ax1.set_xticks(x, [f"{r['export']}\n{r['mode']}" for r in runs], fontsize=7, rotation=30, ha="right")
    ax1.set_ylabel("requests / s")
    ax1.set_title("throughput (higher is better)")
    per_request = [r for r in runs if r["mode"] != "in-process-batched"]  # its latency is one whole call's
    x = np.arange(len(per_request))
    width = 0.4
    ax2.bar(x - width / 2, [r["latency_ms"]["p50"] for r in per_request], width, label="p50", color="#55A868")
    ax2.bar(x + width / 2, [r["latency_ms"]["p99"] for r in per_request], width, label="p99", color="#C44E52")
    ax2.set_xticks(
        x, [f"{r['export']}\n{r['mode']}" for r in per_request], fontsize=7, rotation=30, ha="right"
    )
    ax2.set_ylabel("latency per request (ms)")
    ax2.set_title("latency under load (lower is better)")
    ax2.legend()
    config = results["config"]
    fig.suptitle(
        f"all-MiniLM-L6-v2 sentence embeddings: Triton {config['server']} (Python backend, dynamic "
        f"batching) vs "
        f"in-process, {config['clients']} clients x {config['requests_per_client']} requests, "
        f"{config['cpu_count']} CPU cores",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", nargs="+", default=DEFAULT_EXPORTS)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--texts", type=int, default=64, help="distinct sentences")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    parser.add_argument("--repo", default=str(ROOT / ".cache/triton/bench-repo"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/triton-load.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    for directory in args.exports:
        read_export_info(directory, verify_sha256=False)  # a clear error if `make export` has not run
    texts = load_texts(args.texts)
    env = server_environment(log=say)
    names = [Path(d).name for d in args.exports]
    options = RepositoryOptions(
        kinds=("text",),
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        pipeline_options=PIPELINE_OPTIONS,
    )
    write_repository(list(zip(names, args.exports)), args.repo, options, overwrite=True)
    runs: list[dict[str, Any]] = []
    server_answers: dict[str, dict[str, dict]] = {}
    with TritonServer(args.repo, env) as server:
        say(f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}")
        for name in names:
            for protocol in args.protocols:
                warm_up = argparse.Namespace(
                    clients=args.clients, requests=3
                )  # every batch size the load forms
                warm = client_load(env, server, protocol, name, texts, warm_up)
                if warm["errors"]:
                    raise SystemExit(f"warm-up failed: {warm['errors'][:3]}")
                before = server.model_statistics(name)
                say(f"{name}: Triton over {protocol}, {args.clients} clients x {args.requests} requests ...")
                data = client_load(env, server, protocol, name, texts, args)
                after = server.model_statistics(name)
                executions = after["execution_count"] - before["execution_count"]
                inferences = after["inference_count"] - before["inference_count"]
                run = {
                    "export": name,
                    "mode": f"triton-{protocol}",
                    **summary(data["latencies_s"], data["wall_s"], len(data["errors"])),
                    "server_executions": executions,
                    "mean_server_batch": round(inferences / max(executions, 1), 2),
                }
                if data["errors"]:
                    run["first_errors"] = data["errors"][:3]
                runs.append(run)
                server_answers.setdefault(name, {}).update(data["answers"])
                say(
                    f"  {run['throughput_rps']} req/s, p50 {run['latency_ms']['p50']} ms, "
                    f"p99 {run['latency_ms']['p99']} ms, mean batch {run['mean_server_batch']}"
                )
    agreement = {}
    for name, directory in zip(names, args.exports):
        pipe = trt_runtime.pipeline("feature-extraction", directory, "onnxruntime", **PIPELINE_OPTIONS)
        reference = {text: np.asarray(pipe(text)) for text in texts}
        agreement[name] = answer_difference(server_answers[name], reference)
        pipe(texts[:4])  # warm-up
        say(f"{name}: in process, {args.clients} threads x {args.requests} calls ...")
        runs.append(
            {"export": name, "mode": "in-process", **in_process(pipe, texts, args.clients, args.requests)}
        )
        one_call = batched(pipe, texts, args.clients * args.requests)
        runs.append(
            {
                "export": name,
                "mode": "in-process-batched",
                **one_call,
                "latency_ms": {
                    "p50": one_call["wall_s"] * 1000,
                    "p90": one_call["wall_s"] * 1000,
                    "p99": one_call["wall_s"] * 1000,
                    "mean": one_call["wall_s"] * 1000,
                },
            }
        )
        say(
            f"  {runs[-2]['throughput_rps']} req/s (batched: {one_call['throughput_rps']} req/s); "
            f"server vs in-process: max |diff| {agreement[name]['max_abs_diff']:.2e}"
        )
    import onnxruntime

    results = {
        "benchmark": "triton-load",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0)",
            "clients": args.clients,
            "requests_per_client": args.requests,
            "distinct_texts": len(texts),
            "texts": str(TEXTS_FILE.relative_to(ROOT)),
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "pipeline_options": PIPELINE_OPTIONS,
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "onnxruntime": onnxruntime.__version__,
            # other work on the machine shares its cores with the server, the clients and the pipeline
            "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
            "server_environment": list(env.requirements),
            "in-process-batched": "one pipeline call on all the requests' texts; its latency is that call's",
        },
        "runs": runs,
        "server_vs_in_process": agreement,
        "median_throughput_rps": {
            mode: statistics.median(r["throughput_rps"] for r in runs if r["mode"] == mode)
            for mode in sorted({r["mode"] for r in runs})
        },
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, results)
    plot(results, output.with_suffix(".png"))
    say(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
