"""Where the time goes: ONNX Runtime's profiler (SessionOptions.enable_profiling) and OpenVINO's performance
counters (PERF_COUNT, `InferRequest.profiling_info`) per variant, by op type and, for OpenVINO, by kernel.

Loads the variants that `make bench` made (exports/bench/...), runs each on one shape with profiling
on, the variants taking turns, and sums the kernel time of every node by op type per run; for OpenVINO
also by the kernel it chose (`exec_type`, e.g. brgemm_avx512_amx_I8: whether the int8 GEMMs run on AMX,
VNNI or in float). Writes benchmarks/results/profile-<model>-b<batch>-s<sequence>.json and prints a table.

    PYTHONPATH=. python -m benchmarks.profile_ops [--model bert-base] [--batch 8] [--sequence 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench import model_specs  # noqa: E402
from benchmarks.measure import load_now  # noqa: E402
from benchmarks.variants import VariantSpec, random_feeds, session_options, variant_specs  # noqa: E402

DEFAULT_VARIANTS = ("ort-float", "ort-int8", "quantize_dynamic", "openvino-qdq", "openvino-nncf")


def onnx_file(variant: VariantSpec, threads: int) -> str:
    """The ONNX file a variant's session loads (for runner variants: the graph OrtRunner chose)."""
    if variant.kind != "runner":
        return variant.path
    from trt_runtime.backends.onnxruntime.runner import OrtRunner

    return str(OrtRunner(variant.path, intra_op_num_threads=threads, graph=variant.graph).graph_path)


def op_times(profile_path: str) -> tuple[dict[str, float], int]:
    """Kernel microseconds by op type summed over the profiled runs, and the number of runs."""
    with open(profile_path, encoding="utf-8") as f:
        events = json.load(f)
    per_op: collections.Counter[str] = collections.Counter()
    runs = 0
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
        elif event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
    return dict(per_op), runs


def _summary(per_op: dict[str, float], runs: int, kernels: dict[str, float] | None = None) -> dict[str, Any]:
    """Microseconds summed over `runs` -> ms per run and share, by op type (and by kernel)."""
    total = sum(per_op.values()) or 1.0
    summary: dict[str, Any] = {
        "kernel_ms_per_run": round(total / runs / 1000, 2),
        "ops": {op: {"ms_per_run": round(us / runs / 1000, 2), "share": round(us / total, 4)}
                for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }
    if kernels is not None:
        summary["kernels"] = {k: {"ms_per_run": round(us / runs / 1000, 2), "share": round(us / total, 4)}
                              for k, us in sorted(kernels.items(), key=lambda kv: -kv[1])}
    return summary


def _openvino_request(variant: VariantSpec, threads: int) -> Any:
    """An infer request with OpenVINO's performance counters on, compiled as the variant is."""
    import openvino

    if variant.kind == "openvino":  # OpenVinoRunner on an export: its model.onnx, f32 unless asked for bf16
        path = str(Path(variant.path) / "model.onnx")
        config = {"INFERENCE_PRECISION_HINT": variant.options.get("precision", "f32")}
    else:
        path, config = variant.path, dict(variant.options)
    config.update(PERF_COUNT=True, INFERENCE_NUM_THREADS=threads, PERFORMANCE_HINT="LATENCY")
    return openvino.Core().compile_model(path, "CPU", config).create_infer_request()


def profile(variants: list[VariantSpec], batch: int, sequence: int, vocab_size: int, runs: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    feeds = random_feeds(batch, sequence, vocab_size)
    sessions, requests = {}, {}
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as scratch:
        for v in variants:
            if v.kind.startswith("openvino"):
                requests[v.name] = _openvino_request(v, threads)
                continue
            options = session_options(threads)
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(scratch, v.name)
            session = ort.InferenceSession(onnx_file(v, threads), options, providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            sessions[v.name] = (session, {k: a for k, a in feeds.items() if k in names})
        ov_ops = {name: collections.Counter[str]() for name in requests}
        ov_kernels = {name: collections.Counter[str]() for name in requests}
        for run in range(runs):  # the variants take turns, as in the benchmark
            for session, own in sessions.values():
                session.run(None, own)
            for name, request in requests.items():
                request.infer(feeds)
                if run == 0:
                    continue  # the warm-up run, as ONNX Runtime's first run is
                for node in request.profiling_info:
                    us = node.real_time.total_seconds() * 1e6
                    ov_ops[name][node.node_type] += us
                    ov_kernels[name][node.exec_type] += us
        result = {}
        for name, (session, _) in sessions.items():
            per_op, count = op_times(session.end_profiling())
            result[name] = _summary(per_op, count)
        for name in requests:
            result[name] = _summary(dict(ov_ops[name]), runs - 1, dict(ov_kernels[name]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="profiled runs per variant (after one warm-up)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--exports", type=Path, default=ROOT / "exports" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    spec = model_specs([args.model], [], None, args.exports)[0]
    variants = [v for v in variant_specs(spec, args.variants.split(","), args.exports, print) if v.kind != "transformers"]
    vocab_size = int(json.loads((spec.checkpoint / "config.json").read_text())["vocab_size"])
    load = load_now()
    result = profile(variants, args.batch, args.sequence, vocab_size, args.runs + 1, args.threads)
    out = {"model": args.model, "batch": args.batch, "sequence": args.sequence, "threads": args.threads,
           "load_average": [round(load, 2), round(load_now(), 2)], "variants": result}
    from trt_runtime.contract.files import write_json_atomic

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"profile-{args.model}-b{args.batch}-s{args.sequence}.json"
    write_json_atomic(path, out)
    for name, data in result.items():
        print(f"\n{name}: {data['kernel_ms_per_run']:.1f} ms of kernels per run")
        for op, t in list(data["ops"].items())[:10]:
            print(f"  {op:28s} {t['ms_per_run']:9.2f} ms  {100 * t['share']:5.1f} %")
        for kernel, t in list(data.get("kernels", {}).items())[:8]:
            print(f"  kernel {kernel:38s} {t['ms_per_run']:9.2f} ms  {100 * t['share']:5.1f} %")
    print(f"\nload average {out['load_average'][0]} -> {out['load_average'][1]}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
