"""The real-corpus pass of `make bench`: sentence embeddings of thousands of held-out shipped sentences,
text in to embeddings out, each peer batching as its own pipeline does.

| pipeline | how it batches |
| --- | --- |
| `sentence-transformers` | `SentenceTransformer(all-MiniLM-L6-v2).encode(batch_size=32)` in float: it sorts the texts by length before batching. The accuracy reference |
| `ort-float-o2`, `quantize_dynamic`, `openvino-float`, `openvino-nncf` | the checkpoint's tokenizer on batches of 32 texts in corpus order, padded to the longest, then the peer's model and mean pooling: what a Hugging Face pipeline over optimum's ORTModel / OVModel does (it does not sort) |
| `ours-ort-int8`, `ours-openvino` (the qdq export), `ours-ort-float`, `ours-openvino-float` (the float export) | `trt_runtime.pipeline("feature-extraction", dir, backend=..., pooling="mean", normalize=True)` with its default batching: it sorts by length, batches by its token budget (`max_batch_tokens`), and cuts each row back to its own tokens |
| `ours-openvino-rows8` | `ours-openvino` with `batch_size=8`: 8 rows per run whatever their length (the default before the token budget), for comparison |

The sentences are the corpus's test and dev splits (never used for calibration), unique, in file order,
the first N. Each pipeline embeds them all once per round (rounds alternate between the pipelines); the
figure is sentences per second from the median round, with the mean (and min) cosine of its embeddings to
sentence-transformers float.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.measure import cosine_stats, load_now, mean_pooled
from benchmarks.variants import ModelSpec, VariantSpec, build_runner, export, export_path, variant_specs

PIPELINES = (
    "sentence-transformers",
    "ort-float-o2",
    "quantize_dynamic",
    "openvino-float",
    "openvino-nncf",
    "ours-ort-int8",
    "ours-openvino",
    "ours-ort-float",
    "ours-openvino-float",
    "ours-openvino-rows8",
)
REFERENCE = "sentence-transformers"
PEER_BATCH = 32  # sentence-transformers' default batch size, and the peers'
MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json max_seq_length
Embed = Callable[[list[str]], np.ndarray]


def corpus_sentences(count: int) -> list[str]:
    """The first `count` unique sentences of the test and dev splits, in file order."""
    from models.data import labelled_sentences

    seen: dict[str, None] = {}
    for sentence in labelled_sentences():
        if sentence.split in ("test", "dev") and sentence.text.strip():
            seen.setdefault(sentence.text, None)
    texts = list(seen)
    if len(texts) < count:
        raise SystemExit(f"--corpus-sentences {count}: the held-out splits have {len(texts)} sentences")
    return texts[:count]


def _corpus_order(spec: ModelSpec, variant: VariantSpec, threads: int) -> Embed:
    """Tokenizer + batches of 32 in corpus order + the peer's model + mean pooling."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(spec.checkpoint))
    runner = build_runner(variant, threads)
    positions = int(json.loads((spec.checkpoint / "config.json").read_text()).get("max_position_embeddings", 512))
    max_length = min(MAX_LENGTH, positions - 2)  # RoBERTa-style position ids start at 2

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), PEER_BATCH):
            encoded = tokenizer(
                texts[start : start + PEER_BATCH], padding=True, truncation=True, max_length=max_length,
                return_tensors="np",
            )
            feeds = {k: v.astype(np.int64) for k, v in encoded.items()}
            out.append(mean_pooled(runner(feeds), feeds["attention_mask"]))
        return np.concatenate(out)

    return embed


def _sentence_transformers(spec: ModelSpec, threads: int) -> Embed:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(spec.checkpoint), device="cpu")
    return lambda texts: np.asarray(model.encode(texts, batch_size=PEER_BATCH, normalize_embeddings=True))


#: our pipelines: (backend, export mode, batch_size: None, the pipeline's default token budget, or rows per run)
OURS: dict[str, tuple[str, str, int | None]] = {
    "ours-ort-int8": ("onnxruntime", "qdq", None),
    "ours-openvino": ("openvino", "qdq", None),
    "ours-ort-float": ("onnxruntime", "none", None),
    "ours-openvino-float": ("openvino", "none", None),
    # 8 rows per run whatever their length (the pipeline's default before its token budget), for comparison
    "ours-openvino-rows8": ("openvino", "qdq", 8),
}


def _ours(
    spec: ModelSpec, backend: str, quantization: str, batch_size: int | None, threads: int, exports: Any
) -> Embed:
    import trt_runtime

    export_dir = export(spec, quantization, exports, lambda message: None)
    options: dict[str, Any] = {"intra_op_num_threads": threads}
    if backend == "onnxruntime":
        options.update(inter_op_num_threads=1)
    pipe = trt_runtime.pipeline(
        "feature-extraction", export_dir, backend=backend, pooling="mean", normalize=True, batch_size=batch_size,
        **options,
    )
    return lambda texts: pipe.embed(texts)


def build(name: str, spec: ModelSpec, args: argparse.Namespace) -> Embed:
    if name == REFERENCE:
        return _sentence_transformers(spec, args.threads)
    if name in OURS:
        return _ours(spec, *OURS[name], args.threads, args.exports)
    (variant,) = variant_specs(spec, [name], args.exports, lambda message: None)
    return _corpus_order(spec, variant, args.threads)


def run(spec: ModelSpec, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """The corpus pass for `spec` (a real-weights model): {"sentences", "rounds", "rows": {name: ...}}."""
    from tqdm import tqdm

    texts = corpus_sentences(args.corpus_sentences)
    names = list(dict.fromkeys([REFERENCE, *args.corpus_variants]))
    pipelines = {name: build(name, spec, args) for name in tqdm(names, desc="corpus load", leave=False)}
    rounds = 1 if args.quick else 3  # the median of three
    seconds: dict[str, list[float]] = {name: [] for name in names}
    embeddings: dict[str, np.ndarray] = {}
    load_before = load_now()
    for _ in tqdm(range(rounds), desc="corpus rounds", leave=False):
        for name, embed in pipelines.items():
            started = time.perf_counter()
            embeddings[name] = embed(texts)
            seconds[name].append(time.perf_counter() - started)
    rows = {}
    for name in names:
        median = float(np.median(seconds[name]))
        rows[name] = {
            "seconds": round(median, 2),
            "sentences_per_s": round(len(texts) / median, 1),
            **cosine_stats(embeddings[name], embeddings[REFERENCE]),
        }
    say(f"  {len(texts)} sentences, {rounds} round(s), load average {load_before:.2f} -> {load_now():.2f}")
    return {
        "model": spec.name,
        "sentences": len(texts),
        "rounds": rounds,
        "threads": args.threads,
        "load_average": [round(load_before, 2), round(load_now(), 2)],
        "qdq_export": str(export_path(spec, "qdq", args.exports)),
        "rows": rows,
    }
