"""`make demo`: all-MiniLM-L6-v2 exported float and INT8 (Q/DQ), both run through ONNX Runtime, compared side by side.

Steps: export the demo checkpoint twice with `exporter.export` into exports/ (float; INT8 calibrated on
the shipped calibration_data/), reusing an export whose export.json already describes the same
model, task and recipe; embed held-out sentences with
`trt_runtime.pipeline("feature-extraction", dir, pooling="mean", normalize=True)` on each; print how
close the INT8 embeddings are to the float ones (cosine), whether a small semantic search finds the
same neighbours, the model sizes and the median latency of each, measured in this run.

    PYTHONPATH=. python scripts/demo.py [--exports exports] [--force] [--corpus 500] [--queries 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a fresh clone

import trt_runtime  # noqa: E402
from trt_runtime.contract.export_dir import CONFIG_JSON, ExportDirError, read_export_info  # noqa: E402

TASK = "feature-extraction"
LATENCY_CALLS = 50


@dataclass(frozen=True)
class Variant:
    name: str
    directory: str
    quantization: str


VARIANTS = (
    # the directories of `make export`, which uses the same recipe (exporter defaults), so either reuses the other's
    Variant("float", "minilm-float", "none"),
    Variant("INT8", "minilm-qdq", "qdq"),
)


def say(message: str) -> None:
    print(message, flush=True)


def reusable(out_dir: Path, checkpoint: Path, variant: Variant) -> str | None:
    """Why the export in out_dir can be reused (None: it cannot): its export.json matches this recipe."""
    try:
        info = read_export_info(out_dir)  # also checks model.onnx against the recorded sha256
    except ExportDirError:
        return None
    calibration = info.calibration or {}
    same_config = (out_dir / CONFIG_JSON).exists() and json.loads(
        (out_dir / CONFIG_JSON).read_text()
    ) == json.loads((checkpoint / CONFIG_JSON).read_text())
    matches = (
        info.task == TASK
        and info.quantization == variant.quantization
        and same_config
        # quantized: calibrated on the shipped calibration_data/ (the exporter's default data)
        and (
            variant.quantization == "none" or str(calibration.get("data", "")).startswith("calibration_data/")
        )
    )
    return (
        f"its export.json records the same model, task and recipe, exported {info.created}"
        if matches
        else None
    )


def export(checkpoint: Path, exports: Path, variant: Variant, force: bool) -> Path:
    import exporter

    out_dir = exports / variant.directory
    reason = None if force else reusable(out_dir, checkpoint, variant)
    if reason:
        say(f"  {variant.name}: reusing {out_dir} ({reason}); --force to export again")
        return out_dir
    say(f"  {variant.name}: exporting to {out_dir} ...")
    started = time.perf_counter()
    # the exporter's defaults: INT8 calibrated (percentile) on the shipped calibration_data/
    exporter.export(
        checkpoint, out_dir, task=TASK, quantization=variant.quantization, log=lambda m: say(f"    {m}")
    )
    say(f"  {variant.name}: exported in {time.perf_counter() - started:.0f} s")
    return out_dir


def held_out_sentences(corpus_size: int, query_count: int) -> tuple[list[str], list[str]]:
    """Corpus and queries from the corpus's test split: sentences that calibration never saw."""
    from models.data import labelled_sentences

    seen: set[str] = set()
    texts = []
    for sentence in labelled_sentences("test"):
        if sentence.text not in seen and 3 <= len(sentence.text.split()) <= 60:
            seen.add(sentence.text)
            texts.append(sentence.text)
    rng = np.random.default_rng(0)
    chosen = [texts[i] for i in rng.permutation(len(texts))[: corpus_size + query_count]]
    return chosen[:corpus_size], chosen[corpus_size:]


def median_latencies_ms(pipes: dict[str, Any], texts: list[str]) -> dict[str, float]:
    """Median wall time of a call with one sentence (batch 1) per model, the models taking turns, after a warm-up."""
    for embed in pipes.values():
        for text in texts[:5]:
            embed(text)
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for text in texts:
        for name, embed in pipes.items():
            started = time.perf_counter()
            embed(text)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def neighbours(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--exports", type=Path, default=ROOT / "exports", help="where the exports go (default: exports/)"
    )
    parser.add_argument(
        "--force", action="store_true", help="export again even where a matching export exists"
    )
    parser.add_argument("--corpus", type=int, default=500, help="sentences to search")
    parser.add_argument("--queries", type=int, default=50, help="queries to search with")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    from models.demo_model import DEMO_NAME, demo_checkpoint

    checkpoint = demo_checkpoint()
    say(f"[1/4] exports of {DEMO_NAME} ({checkpoint})")
    dirs = {v.name: export(checkpoint, args.exports, v, args.force) for v in VARIANTS}

    say(
        f"[2/4] held-out sentences: {args.corpus} to search, {args.queries} queries (test split, unseen by calibration)"
    )
    corpus, queries = held_out_sentences(args.corpus, args.queries)

    say(
        "[3/4] embedding with trt_runtime.pipeline('feature-extraction', pooling='mean', normalize=True), ONNX Runtime"
    )
    pipes = {}
    for name, directory in dirs.items():
        pipes[name] = trt_runtime.pipeline(
            TASK, directory, backend="onnxruntime", pooling="mean", normalize=True, batch_size=32
        )
        runner = pipes[name].runner
        # the INT8 export runs as the CPU INT8 graph derived from model.onnx (trt_runtime.backends.onnxruntime.cpu_int8)
        graph = runner.choice.graph_reason
        say(f"  {name}: {runner.backend} on {', '.join(runner.providers)}; {graph}")
    # both models take turns on the same chunks, so that load from other processes hits both alike
    seconds = dict.fromkeys(pipes, 0.0)
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in pipes}
    texts = corpus + queries
    for start in range(0, len(texts), 64):
        for name, embed in pipes.items():
            t0 = time.perf_counter()
            vectors[name].append(embed.embed(texts[start : start + 64]))
            seconds[name] += time.perf_counter() - t0
        say(f"  embedded {min(start + 64, len(texts))}/{len(texts)} sentences with each model")
    embeddings = {
        name: (np.vstack(chunks)[: len(corpus)], np.vstack(chunks)[len(corpus) :])
        for name, chunks in vectors.items()
    }
    throughput = {name: len(texts) / seconds[name] for name in pipes}
    latency = median_latencies_ms(pipes, queries[:LATENCY_CALLS])
    for name in pipes:
        say(
            f"  {name}: {throughput[name]:.0f} sentences/s at batch 32; median {latency[name]:.1f} ms per sentence at batch 1"
        )

    say("[4/4] comparison")
    (float_corpus, float_queries), (int8_corpus, int8_queries) = embeddings["float"], embeddings["INT8"]
    cosine = np.sum(np.vstack([float_corpus, float_queries]) * np.vstack([int8_corpus, int8_queries]), axis=1)
    top_float, top_int8 = neighbours(float_queries, float_corpus, 5), neighbours(int8_queries, int8_corpus, 5)
    top1 = float(np.mean(top_float[:, 0] == top_int8[:, 0]))
    top5 = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top_float, top_int8)]))
    sizes = {name: (Path(d) / "model.onnx").stat().st_size / 2**20 for name, d in dirs.items()}
    rows = [
        ("", "float", "INT8"),
        ("model.onnx size", f"{sizes['float']:.1f} MiB", f"{sizes['INT8']:.1f} MiB"),
        ("median latency, batch 1", f"{latency['float']:.1f} ms", f"{latency['INT8']:.1f} ms"),
        ("throughput, batch 32", f"{throughput['float']:.0f} sent/s", f"{throughput['INT8']:.0f} sent/s"),
        ("cosine to float, mean", "1", f"{cosine.mean():.4f}"),
        ("cosine to float, worst", "1", f"{cosine.min():.4f}"),
        (f"search top-1 agreement ({len(queries)} q)", "-", f"{top1:.0%}"),
        ("search top-5 overlap", "-", f"{top5:.0%}"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, a, b in rows:
        say(f"  {label:<{width}}  {a:>14}  {b:>14}")
    query, best = queries[0], int(top_float[0, 0])
    say(f"  example query: {query!r}")
    say(f"    float's nearest: {corpus[best]!r}")
    say(f"    INT8's nearest:  {corpus[int(top_int8[0, 0])]!r}")
    say(
        "  (Latency is ONNX Runtime on this CPU in this run. model.onnx's Q/DQ graph is laid out for TensorRT; "
        "on the CPU ONNX Runtime runs the INT8 graph derived from it: docs/benchmarks.md.)"
    )
    say(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
