"""`make bench`: every way to run a BERT-family encoder on the CPU, side by side on the same inputs, with accuracy.

For each model (BERT-base-sized with random weights; all-MiniLM-L6-v2) and shape (batch 1, 8 and 32 x
sequence 32, 128, 384) it measures the peers a CPU user would pick (transformers float, ONNX Runtime float
with optimum's O2 fusions, ONNX Runtime's quantize_dynamic, OpenVINO float, OpenVINO + NNCF INT8) and each
of our backends (the ONNX Runtime CPU INT8 graph, OpenVINO on our qdq export, the integer export on ONNX
Runtime): benchmarks/variants.py. Reported per variant: median and p90 latency, throughput, the ratio to
our float export, peak resident memory (a fresh child process per variant, at the largest shape), model
size, and the mean sentence-embedding cosine to transformers float on held-out real sentences (with random
weights: agreement with float only). Then the real-corpus pass (benchmarks/corpus.py): all-MiniLM-L6-v2
embedding thousands of held-out shipped sentences, text in to embeddings out, each peer batching as its
own pipeline does. Results go to benchmarks/results/bench[-quick].json and .png, with the CPU model and
its flags; the table is printed.

    PYTHONPATH=. python -m benchmarks.bench [--quick] [--models bert-base,minilm] [--threads 2] ...

--quick: all-MiniLM-L6-v2 at batch 1 and 8 x sequence 128, three rounds, 64 sentences, the goal's
variants, and a 500-sentence corpus pass. A first run exports the models into exports/bench/ and makes
the peers there (minutes; "prepare_seconds" in the JSON says how long); later runs reuse them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import corpus, report  # noqa: E402
from benchmarks.checkpoints import bert_base_random, minilm  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    cosine_stats,
    held_out_sentences,
    load_now,
    measure_memory,
    sentence_embeddings,
    summarize,
    time_shape,
    tokenized_batches,
)
from benchmarks.variants import (  # noqa: E402
    ModelSpec,
    VariantSpec,
    build_runner,
    model_size_mb,
    random_feeds,
    variant_specs,
)
from trt_runtime.contract.files import check_output_outside_inputs  # noqa: E402

#: the default run: the peers of issue 19 and each of our backends (benchmarks/variants.py says what each is)
VARIANTS = (
    "transformers",
    "ort-float",
    "ort-float-o2",
    "quantize_dynamic",
    "openvino-float",
    "openvino-float-bf16",
    "openvino-nncf",
    "ort-int8",
    "openvino-qdq",
    "openvino-qdq-bf16",
    "ort-integer",
)
#: measured only when asked for (--variants)
EXTRA_VARIANTS = (
    "ort-float-fused", "ort-qdq-export", "ort-integer-exported", "quantize_static", "quantize_static-defaults",
)
#: --quick: the goal's variants (transformers still gives the accuracy reference)
QUICK_VARIANTS = (
    "ort-float", "ort-float-o2", "quantize_dynamic", "openvino-float", "openvino-nncf", "ort-int8", "openvino-qdq",
)


RANDOM_WEIGHT_SENTENCES = 64


def say(message: str) -> None:
    print(message, flush=True)


def model_specs(
    names: list[str], extra: list[str], calibration_samples: int | None, exports: Path
) -> list[ModelSpec]:
    specs = []
    for name in names:
        if name == "bert-base":
            specs.append(
                ModelSpec(
                    "bert-base",
                    bert_base_random(exports / "checkpoints"),
                    "BERT-base shape (BertConfig defaults: 12 x 768, 12 heads), random weights",
                    False,
                    calibration_samples or 64,  # random weights: the scales only have to be plausible
                )
            )
        elif name == "minilm":
            specs.append(
                ModelSpec(
                    "minilm",
                    minilm(),
                    "all-MiniLM-L6-v2 (6 x 384, 12 heads), real weights",
                    True,
                    calibration_samples or 512,  # the exporter's default
                )
            )
        else:
            raise SystemExit(
                f"unknown model {name!r}; choose bert-base, minilm, or give --checkpoint NAME=DIR"
            )
    for item in extra:
        name, _, directory = item.partition("=")
        if not directory:
            raise SystemExit(f"--checkpoint {item!r}: expected NAME=DIR")
        specs.append(
            ModelSpec(name, Path(directory), f"checkpoint {directory}", False, calibration_samples or 32)
        )
    return specs


#: the CPU flags that decide which int8 / bf16 kernels the backends can use
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
    "amx_bf16",
)


def machine() -> dict[str, Any]:
    import onnxruntime

    from trt_runtime.backends.onnxruntime import cpu_int8
    from trt_runtime.loader import CPU_BACKENDS

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    flags = cpu_int8.cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "cpu_int8_recipe": cpu_int8.Recipe().tag,
        "cpu_backends": {mode: list(row) for mode, row in CPU_BACKENDS.items()},
    }
    try:
        import nncf
        import openvino

        core = openvino.Core()
        info.update(
            openvino=openvino.get_version(),
            nncf=nncf.__version__,
            openvino_device=core.get_property("CPU", "FULL_DEVICE_NAME"),
            openvino_capabilities=list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        )
    except ImportError as e:
        info["openvino"] = f"not installed ({e})"
    return info


def bench_model(spec: ModelSpec, args: argparse.Namespace, results: dict[str, Any]) -> None:
    from tqdm import tqdm

    say(f"\n== {spec.name}: {spec.description}")
    prepare_started = time.perf_counter()
    variants = variant_specs(spec, args.variants, args.exports, say)
    vocab_size = int(json.loads((spec.checkpoint / "config.json").read_text())["vocab_size"])
    shapes = [(b, s) for s in args.sequences for b in args.batches]
    entry: dict[str, Any] = {
        "description": spec.description,
        "checkpoint": str(spec.checkpoint),
        "real_weights": spec.real_weights,
        "variants": {},
    }
    results["models"][spec.name] = entry

    say(f"  loading {len(variants)} variants ...")
    runners = {v.name: build_runner(v, args.threads) for v in tqdm(variants, desc="load", leave=False)}
    # exports, peers and derived graphs made (or reused) and loaded: what a first run adds
    entry["prepare_seconds"] = round(time.perf_counter() - prepare_started, 1)
    for v in variants:
        entry["variants"][v.name] = {
            "spec": asdict(v),
            "size_mb": round(model_size_mb(runners[v.name].files), 1),
            "graph_run": runners[v.name].graph,
        }

    # with random weights the cosine only checks agreement with float, not accuracy: fewer sentences do
    sentences = args.sentences if spec.real_weights else min(args.sentences, RANDOM_WEIGHT_SENTENCES)
    if sentences:
        say(f"  accuracy: sentence embeddings of {sentences} held-out sentences vs transformers float")
        entry["accuracy_sentences"] = sentences
        batches = tokenized_batches(spec.checkpoint, held_out_sentences(sentences))
        reference_runner = runners.get("transformers") or build_runner(
            VariantSpec("transformers", "transformers", str(spec.checkpoint)), args.threads
        )
        reference = sentence_embeddings(reference_runner, batches)
        for name, runner in tqdm(runners.items(), desc="accuracy", leave=False):
            entry["variants"][name]["accuracy"] = cosine_stats(
                sentence_embeddings(runner, batches), reference
            )

    say(
        f"  latency: {len(shapes)} shapes x {len(runners)} variants, {args.rounds} rounds (load {load_now():.1f})"
    )
    for batch, sequence in tqdm(shapes, desc="shapes", leave=False):
        feeds = random_feeds(batch, sequence, vocab_size)
        load_before = load_now()
        latencies = time_shape(runners, feeds, args.rounds)
        for name, values in latencies.items():
            timing = asdict(summarize(spec.name, name, batch, sequence, values))
            timing["load_average"] = [round(load_before, 2), round(load_now(), 2)]
            results["timings"].append(timing)
    del runners
    gc.collect()

    if args.memory:
        # the largest shape sets the peak (activations and ONNX Runtime's arena grow with batch x sequence)
        largest = max(shapes, key=lambda shape: shape[0] * shape[1])
        say(
            f"  peak memory: one child process per variant, loading it and running batch {largest[0]} x {largest[1]}"
        )
        entry["memory_shape"] = list(largest)
        for v in tqdm(variants, desc="memory", leave=False):
            entry["variants"][v.name]["memory"] = measure_memory(v, [largest], vocab_size, args.threads)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM, batch 1 and 8 x sequence 128, 3 rounds, 500-sentence corpus")
    parser.add_argument("--models", default=None, help="comma-separated: bert-base, minilm (default: both)")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure this checkpoint (repeatable)",
    )
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,8,32; quick 1,8)")
    parser.add_argument("--sequences", default=None, help="comma-separated (default 32,128,384)")
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated, of {','.join(VARIANTS + EXTRA_VARIANTS)}"
    )
    parser.add_argument(
        "--corpus-sentences", type=int, default=None,
        help="sentences of the real-corpus pass (default 3000; quick 500; 0: no corpus pass)",
    )
    parser.add_argument(
        "--corpus-variants", default=None, help=f"comma-separated, of {','.join(corpus.PIPELINES)}"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (default: all cores)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of turns per shape (default 5; quick 3)"
    )
    parser.add_argument(
        "--sentences", type=int, default=None, help="accuracy sentences (default 512; quick 64; 0: none)"
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        help="override the calibration samples of the qdq exports and quantize_static",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory children"
    )
    parser.add_argument("--exports", type=Path, default=ROOT / "exports" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="results file stem (default bench, or bench-quick)")
    args = parser.parse_args(argv)
    try:  # the results must not land in (or replace) the exports they measure
        check_output_outside_inputs(args.output, {"--exports": args.exports})
    except OSError as e:
        parser.error(str(e))
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    if args.models is None:
        args.models = ["minilm"] if args.quick else ["bert-base", "minilm"]
    else:
        args.models = [m for m in args.models.split(",") if m]
    args.batches = ints(args.batches) if args.batches else ([1, 8] if args.quick else [1, 8, 32])
    args.sequences = ints(args.sequences) if args.sequences else ([128] if args.quick else [32, 128, 384])
    args.variants = (
        args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
    )
    unknown = set(args.variants) - set(VARIANTS + EXTRA_VARIANTS)
    if unknown:
        parser.error(
            f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS + EXTRA_VARIANTS)}"
        )
    if args.corpus_sentences is None:
        args.corpus_sentences = 500 if args.quick else 3000
    args.corpus_variants = args.corpus_variants.split(",") if args.corpus_variants else list(corpus.PIPELINES)
    unknown = set(args.corpus_variants) - set(corpus.PIPELINES)
    if unknown:
        parser.error(f"unknown corpus variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(corpus.PIPELINES)}")
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.sentences = (64 if args.quick else 512) if args.sentences is None else args.sentences
    args.name = args.name or ("bench-quick" if args.quick else "bench")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": round(load_now(), 2),
        "models": {},
        "timings": [],
    }
    m = results["machine"]
    say(
        f"{m['cpu']} ({m['cores']} cores, {', '.join(m['isa'])}), onnxruntime {m['onnxruntime']}, "
        f"openvino {m.get('openvino')}, {args.threads} threads; load average {load_now():.1f}"
    )
    specs = model_specs(args.models, args.checkpoint, args.calibration_samples, args.exports)
    for spec in specs:
        bench_model(spec, args, results)
    if args.corpus_sentences:
        corpus_spec = next((s for s in specs if s.real_weights), None) or specs[0]
        say(f"\n== real corpus: {corpus_spec.name}, {args.corpus_sentences} held-out sentences, text in, embeddings out")
        results["corpus"] = corpus.run(corpus_spec, args, say)
    report.add_ratios(results)
    results["goal"] = report.goal_check(results)
    results["load_average_end"] = round(load_now(), 2)
    results["seconds"] = round(time.perf_counter() - started, 1)

    from trt_runtime.contract.files import write_json_atomic

    args.output.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.output / f"{args.name}.json", args.output / f"{args.name}.png"
    write_json_atomic(json_path, results)
    report.plot(results, png_path)
    say("\n" + report.table(results))
    if "corpus" in results:
        say("\n" + report.corpus_table(results["corpus"]))
    say("\n" + report.goal_line(results["goal"]))
    prepared = sum(m.get("prepare_seconds", 0) for m in results["models"].values())
    say(
        f"\nload average {results['load_average_start']} at the start, {results['load_average_end']} at the end; "
        f"took {results['seconds']:.0f} s ({prepared:.0f} s of it exporting/loading)\nwrote {json_path} and {png_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
