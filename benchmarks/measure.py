"""Latency (variants taking turns), peak memory (a child process per variant) and embedding accuracy.

Latency: every variant of a model is loaded in one process; for each shape the variants take turns,
one call each per round, after a warm-up, so that a change in the machine's load hits all of them
alike. A short pause between calls lets the thread pool of the variant that just ran go idle (ONNX
Runtime's workers spin for a while after a run) before the next one starts. Medians and 90th
percentiles are over all calls.

Memory: `python -m benchmarks.measure memory VARIANT_JSON ...` loads one variant in a fresh process,
runs every shape once and prints its peak resident set (VmHWM) and the resident set just before
loading (after the imports), so the increase is what the variant itself costs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.variants import Feeds, Runner, VariantSpec, build_runner, random_feeds  # noqa: E402

PAUSE_S = 0.02  # between calls: the previous variant's spinning threads go idle


@dataclass
class Timing:
    model: str
    variant: str
    batch: int
    sequence: int
    calls: int
    median_ms: float
    p90_ms: float
    throughput: float  # sequences per second, from the median
    tokens_per_s: float


def load_now() -> float:
    return os.getloadavg()[0]


def time_shape(
    runners: dict[str, Runner], feeds: Feeds, rounds: int, min_calls_s: float = 0.3
) -> dict[str, list[float]]:
    """Per-call latencies (s) of each runner on `feeds`: warm-up, then `rounds` rounds of turns.

    In a round each runner makes k calls, k chosen from its warm-up time so that a round gives each
    runner about `min_calls_s` of calls (at least one)."""
    per_round: dict[str, int] = {}
    for name, run in runners.items():
        run(feeds)  # first call: allocations, prepacking
        started = time.perf_counter()
        run(feeds)
        per_round[name] = max(1, min(20, round(min_calls_s / max(time.perf_counter() - started, 1e-4))))
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round[name]):
                time.sleep(PAUSE_S)
                started = time.perf_counter()
                run(feeds)
                latencies[name].append(time.perf_counter() - started)
    return latencies


def summarize(model: str, variant: str, batch: int, sequence: int, latencies: list[float]) -> Timing:
    ms = np.array(latencies) * 1000
    median = float(np.median(ms))
    return Timing(
        model,
        variant,
        batch,
        sequence,
        len(ms),
        round(median, 3),
        round(float(np.percentile(ms, 90)), 3),
        round(batch * 1000 / median, 2),
        round(batch * sequence * 1000 / median, 1),
    )


# --- memory: one child process per variant ------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def _peak_rss_mb() -> float:
    """VmHWM, the peak of this process image (ru_maxrss would carry the parent's peak over fork + exec)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(
    variant: VariantSpec, shapes: list[tuple[int, int]], vocab_size: int, threads: int
) -> dict[str, Any]:
    """In the child: RSS before loading, then peak RSS after loading and running every shape once."""
    # the variant's libraries are imported before the baseline, so the increase is what the variant costs
    if variant.kind == "transformers":
        import torch  # noqa: F401
        import transformers  # noqa: F401
    if variant.kind.startswith("openvino"):
        import openvino  # noqa: F401
    import onnxruntime  # noqa: F401

    before = _rss_mb()
    runner = build_runner(variant, threads)
    loaded = _rss_mb()
    for batch, sequence in shapes:  # the first call of a shape allocates its buffers: the peak
        runner(random_feeds(batch, sequence, vocab_size))
    peak = _peak_rss_mb()
    return {
        "rss_before_mb": round(before, 1),
        "rss_loaded_mb": round(loaded, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_increase_mb": round(peak - before, 1),
    }


def measure_memory(
    variant: VariantSpec, shapes: list[tuple[int, int]], vocab_size: int, threads: int, timeout_s: float = 900
) -> dict[str, Any]:
    """Run `memory_child` in a fresh interpreter; its JSON result (or {"error": ...})."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.measure",
        "memory",
        variant.to_json(),
        json.dumps(shapes),
        str(vocab_size),
        str(threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- accuracy ---------------------------------------------------------------------------------------


def held_out_sentences(count: int) -> list[str]:
    """Sentences of the corpus's test split (never used for calibration), 3 to 60 words, a fixed sample."""
    from models.data import labelled_sentences

    texts = sorted({s.text for s in labelled_sentences("test") if 3 <= len(s.text.split()) <= 60})
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.permutation(len(texts))[:count]]


def tokenized_batches(checkpoint: Path, texts: list[str], batch_size: int = 32) -> list[Feeds]:
    """Batches of 32 sentences padded to their longest, truncated to 128 tokens (or the model's limit)."""
    from transformers import AutoTokenizer

    limit = int(json.loads((checkpoint / "config.json").read_text()).get("max_position_embeddings", 512))
    max_length = min(128, limit - 2)  # RoBERTa-style position ids start at 2

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batch = {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        batch["token_type_ids"] = encoded.get("token_type_ids", np.zeros_like(encoded["input_ids"])).astype(
            np.int64
        )
        batches.append(batch)
    return batches


def mean_pooled(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over the attention mask, unit length: all-MiniLM-L6-v2's sentence embedding."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def sentence_embeddings(runner: Runner, batches: list[Feeds]) -> np.ndarray:
    """The sentence embedding (`mean_pooled`) of every row of `batches`."""
    return np.concatenate([mean_pooled(runner(feeds), feeds["attention_mask"]) for feeds in batches])


def cosine_stats(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = (embeddings * reference).sum(1)
    return {"mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5)}


def _main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "memory":
        variant = VariantSpec.from_json(argv[1])
        shapes = [tuple(s) for s in json.loads(argv[2])]
        result = memory_child(variant, shapes, int(argv[3]), int(argv[4]))  # type: ignore[arg-type]
        print(json.dumps(result))
        return 0
    print(
        "usage: python -m benchmarks.measure memory VARIANT_JSON SHAPES_JSON VOCAB_SIZE THREADS",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
