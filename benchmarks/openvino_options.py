"""OpenVinoRunner's options side by side: dynamic-quantization group size x precision on the qdq export, with
OpenVINO + NNCF and our ONNX Runtime CPU INT8 graph as references, latency at one shape (variants taking
turns, benchmarks/measure.py) and the mean sentence cosine to transformers float on MiniLM.

    PYTHONPATH=. python -m benchmarks.openvino_options [--model bert-base] [--batch 8] [--sequence 128]
        [--groups default,0,64,128,256] [--precisions f32,bf16] [--rounds 6] [--sentences 512]

Writes benchmarks/results/openvino-options-<model>-b<batch>-s<sequence>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import model_specs  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    cosine_stats,
    held_out_sentences,
    load_now,
    sentence_embeddings,
    summarize,
    time_shape,
    tokenized_batches,
)
from benchmarks.variants import VariantSpec, build_runner, random_feeds, variant_specs  # noqa: E402


def option_variants(qdq_dir: str, groups: list[str], precisions: list[str]) -> list[VariantSpec]:
    variants = []
    for precision in precisions:
        for group in groups:
            options: dict[str, Any] = {"precision": precision}
            if group != "default":
                options["dynamic_quantization_group_size"] = int(group)
            variants.append(VariantSpec(f"openvino-qdq-{precision}-g{group}", "openvino", qdq_dir, options=options))
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--groups", default="default,0,64,128,256")
    parser.add_argument("--precisions", default="f32,bf16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sentences", type=int, default=512, help="MiniLM sentences for the cosine (0: none)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--exports", type=Path, default=ROOT / "exports" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    groups, precisions = args.groups.split(","), args.precisions.split(",")
    results: dict[str, Any] = {"settings": vars(args) | {"exports": str(args.exports), "output": str(args.output)}}

    spec = model_specs([args.model], [], None, args.exports)[0]
    references = variant_specs(spec, ["openvino-nncf", "ort-int8"], args.exports, print)
    qdq_dir = references[1].path
    variants = references + option_variants(qdq_dir, groups, precisions)
    runners = {v.name: build_runner(v, args.threads) for v in variants}
    vocab_size = int(json.loads((spec.checkpoint / "config.json").read_text())["vocab_size"])
    load_before = load_now()
    latencies = time_shape(runners, random_feeds(args.batch, args.sequence, vocab_size), args.rounds)
    results["load_average"] = [round(load_before, 2), round(load_now(), 2)]
    results["timings"] = {
        name: vars(summarize(spec.name, name, args.batch, args.sequence, values)) for name, values in latencies.items()
    }
    del runners

    if args.sentences:  # accuracy on real weights: MiniLM's own exports, the same options
        minilm = model_specs(["minilm"], [], None, args.exports)[0]
        minilm_refs = variant_specs(minilm, ["transformers", "openvino-nncf", "ort-int8"], args.exports, print)
        accuracy_variants = minilm_refs[1:] + option_variants(minilm_refs[2].path, groups, precisions)
        batches = tokenized_batches(minilm.checkpoint, held_out_sentences(args.sentences))
        reference = sentence_embeddings(build_runner(minilm_refs[0], args.threads), batches)
        results["accuracy"] = {
            v.name: cosine_stats(sentence_embeddings(build_runner(v, args.threads), batches), reference)
            for v in accuracy_variants
        }
    from trt_runtime.contract.files import write_json_atomic

    path = args.output / f"openvino-options-{args.model}-b{args.batch}-s{args.sequence}.json"
    write_json_atomic(path, results)
    base = results["timings"]["openvino-nncf"]["median_ms"]
    print("\n| variant | median ms | p90 ms | x openvino-nncf | MiniLM mean cos |\n| --- | ---: | ---: | ---: | ---: |")
    for name, t in results["timings"].items():
        cosine = results.get("accuracy", {}).get(name, {}).get("mean_cosine", "–")
        print(f"| {name} | {t['median_ms']:.1f} | {t['p90_ms']:.1f} | {base / t['median_ms']:.2f} | {cosine} |")
    print(f"\nload average {results['load_average'][0]} -> {results['load_average'][1]}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
