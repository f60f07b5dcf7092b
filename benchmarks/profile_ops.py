"""Where the time goes: ONNX Runtime's profiler (SessionOptions.enable_profiling) and OpenVINO's performance
counters (PERF_COUNT, `InferRequest.profiling_info`) per variant, by op type and, for OpenVINO, by kernel.

Loads the variants that `make bench` made (exports/bench/...), runs each on one shape with profiling
on, the variants taking turns, and sums the kernel time of every node by op type per run; for OpenVINO
also by the kernel it chose (`exec_type`, e.g. brgemm_avx512_amx_I8: whether the int8 GEMMs run on AMX,
VNNI or in float). Writes benchmarks/results/profile-<model>-b<batch>-s<sequence>.json (or `--name`'s stem) and prints a table.

The GEMMs' rate (issue 19's stretch: the INT8 GEMMs at >= 70 % of the CPU's int8 peak, from the profiler):
for each variant the GEMM nodes' operations (2 M K N, from the shapes the profiler records: ONNX Runtime's
`input_type_shape`, OpenVINO's runtime model) over their kernel time, against this CPU's rates measured in the
same process (`peak_rates`): ONNX Runtime's float32 GEMM (MLAS sgemm, close to the FMA units' rate) and its
u8 x s8 GEMM on one large square problem. The issue's int8 peak is 4x the float32 FMA rate (what VNNI's
vpdpbusd gives: 64 int8 multiply-adds per instruction where FMA does 16); AMX-INT8's tile multiply does
1024 int8 multiply-adds per cycle per core against AVX-512's 32 float32 FMAs (Intel's Architecture
Instruction Set Extensions reference, AMX chapter), so on an AMX CPU the peak is 32x: each is printed where the CPU has its unit (its /proc/cpuinfo flag).

    PYTHONPATH=. python -m benchmarks.profile_ops [--model bert-base] [--batch 8] [--sequence 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
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
#: ONNX Runtime's GEMM op types, INT8 and float: 2 M K N operations from the first input (..., K) and the output's
#: last dimension N (the profiler leaves the weights, initializers, out of its shapes); QAttention / Attention:
#: their Q, K and V projection (N = 3 K), the attention core inside them not counted
ORT_INT8_GEMMS = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul", "QAttention")
ORT_FLOAT_GEMMS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Attention")
ORT_FUSED_QKV = ("QAttention", "Attention")
#: int8 multiply-adds per cycle per core against float32 FMAs (see the module doc): VNNI 4x, AMX 32x, each
#: with the /proc/cpuinfo flag that says the CPU has it (a peak is reported only where the CPU has its unit)
INT8_PEAK_FACTORS = {"vnni": 4, "amx": 32}
INT8_PEAK_FLAGS = {"vnni": ("avx512_vnni", "avx_vnni"), "amx": ("amx_int8",)}


def onnx_file(variant: VariantSpec, threads: int) -> str:
    """The ONNX file a variant's session loads (for runner variants: the graph OrtRunner chose)."""
    if variant.kind != "runner":
        return variant.path
    from trt_runtime.backends.onnxruntime.runner import OrtRunner

    return str(OrtRunner(variant.path, intra_op_num_threads=threads, graph=variant.graph).graph_path)


def _ort_gemm_operations(op: str, args: dict[str, Any]) -> int:
    inputs = [next(iter(entry.values())) for entry in args.get("input_type_shape", [])]
    outputs = [next(iter(entry.values())) for entry in args.get("output_type_shape", [])]
    if not inputs or not outputs or not inputs[0] or not outputs[0]:
        return 0
    n = 3 * int(inputs[0][-1]) if op in ORT_FUSED_QKV else int(outputs[0][-1])
    return 2 * math.prod(int(d) for d in inputs[0]) * n


def _no_gemms() -> dict[str, dict[str, float]]:
    return {"int8": {"operations": 0.0, "us": 0.0}, "float": {"operations": 0.0, "us": 0.0}}


def op_times(profile_path: str) -> tuple[dict[str, float], int, dict[str, dict[str, float]]]:
    """Kernel microseconds by op type summed over the profiled runs, the number of runs, and the INT8 and float
    GEMM nodes' operations and microseconds ({"int8": {"operations": ..., "us": ...}, "float": ...})."""
    with open(profile_path, encoding="utf-8") as f:
        events = json.load(f)
    per_op: collections.Counter[str] = collections.Counter()
    gemms = _no_gemms()
    runs = 0
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_op[op] += event["dur"]
            kind = "int8" if op in ORT_INT8_GEMMS else "float" if op in ORT_FLOAT_GEMMS else None
            if kind is not None:
                gemms[kind]["operations"] += _ort_gemm_operations(op, event["args"])
                gemms[kind]["us"] += event["dur"]
        elif event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
    return dict(per_op), runs, gemms


def _summary(
    per_op: dict[str, float], runs: int, gemms: dict[str, dict[str, float]], kernels: dict[str, float] | None = None
) -> dict[str, Any]:
    """Microseconds summed over `runs` -> ms per run and share, by op type (and by kernel); the GEMMs' rates."""
    total = sum(per_op.values()) or 1.0
    summary: dict[str, Any] = {
        "kernel_ms_per_run": round(total / runs / 1000, 2),
        "gemms": {
            kind: {
                "operations_per_run": round(g["operations"] / runs),
                "gop_per_run": round(g["operations"] / runs / 1e9, 2),
                "ms_per_run": round(g["us"] / runs / 1000, 2),
                "gops": round(g["operations"] / g["us"] / 1e3, 1) if g["us"] and g["operations"] else None,
            }
            for kind, g in gemms.items()
        },
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


def _openvino_gemms(request: Any, batch: int, sequence: int) -> dict[str, tuple[str, int]]:
    """(kind, operations) of each FullyConnected node of a compiled model, by the name its profiling_info uses:
    from its runtime model (the fused graph OpenVINO runs), weights N x K, and M the tokens (batch x sequence)
    for a rank-3 input or the batch for rank 2 (the pooler): the runtime model keeps the export's dynamic
    batch and sequence. INT8 where OpenVINO runs it in i8 (`runtimePrecision`)."""
    gemms = {}
    for node in request.get_compiled_model().get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if info["layerType"].astype(str) != "FullyConnected" or node.get_input_size() < 2:
            continue
        data, weight = node.get_input_partial_shape(0), node.get_input_partial_shape(1)
        if not weight.is_static or len(weight.to_shape()) != 2 or data.rank.get_length() not in (2, 3):
            continue
        n, k = (int(d) for d in weight.to_shape())
        m = batch * sequence if data.rank.get_length() == 3 else batch
        kind = "int8" if info["runtimePrecision"].astype(str) in ("i8", "u8") else "float"
        gemms[node.get_friendly_name()] = (kind, 2 * m * k * n)
    return gemms


def _timed_gemm(model_bytes: bytes, feeds: dict[str, Any], threads: int, operations: int, calls: int = 5) -> float:
    import time

    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, session_options(threads), providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return operations / best / 1e9


def peak_rates(threads: int, size: int = 2048) -> dict[str, Any]:
    """This CPU's GEMM rates in GOP/s, measured now: ONNX Runtime's float32 MatMul and u8 x s8 MatMulInteger
    on one size^3 problem (best of 5), and the int8 peaks the module doc derives from the float32 rate."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from trt_runtime.backends.onnxruntime.recipes import cpu_flags

    flags = cpu_flags()
    rng = np.random.default_rng(0)
    operations = 2 * size**3

    def model(op: str, a_type: int, weight: np.ndarray, extra: list[str]) -> bytes:
        inits = [numpy_helper.from_array(weight, "B")]
        if extra:
            inits.append(numpy_helper.from_array(np.array(128, np.uint8), "a_zero_point"))
        out_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.INT32
        graph = helper.make_graph(
            [helper.make_node(op, ["A", "B", *extra], ["Y"])], op,
            [helper.make_tensor_value_info("A", a_type, [size, size])],
            [helper.make_tensor_value_info("Y", out_type, [size, size])], inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    float32 = _timed_gemm(
        model("MatMul", TensorProto.FLOAT, rng.standard_normal((size, size), dtype=np.float32), []),
        {"A": rng.standard_normal((size, size), dtype=np.float32)}, threads, operations,
    )
    int8 = _timed_gemm(
        model("MatMulInteger", TensorProto.UINT8, rng.integers(-128, 128, (size, size)).astype(np.int8),
              ["a_zero_point"]),
        {"A": rng.integers(0, 256, (size, size)).astype(np.uint8)}, threads, operations,
    )
    return {
        "size": size, "threads": threads,
        "float32_matmul_gops": round(float32, 1), "u8s8_matmulinteger_gops": round(int8, 1),
        **{f"int8_peak_{name}_gops": round(factor * float32, 1) for name, factor in INT8_PEAK_FACTORS.items()
           if flags & set(INT8_PEAK_FLAGS[name])},
    }


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
        ov_gemm_nodes = {name: _openvino_gemms(request, batch, sequence) for name, request in requests.items()}
        ov_gemms = {name: _no_gemms() for name in requests}
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
                    if node.node_name in ov_gemm_nodes[name]:
                        kind, operations = ov_gemm_nodes[name][node.node_name]
                        ov_gemms[name][kind]["operations"] += operations
                        ov_gemms[name][kind]["us"] += us
        result = {}
        for name, (session, _) in sessions.items():
            per_op, count, gemms = op_times(session.end_profiling())
            result[name] = _summary(per_op, count, gemms)
        for name in requests:
            result[name] = _summary(dict(ov_ops[name]), runs - 1, ov_gemms[name], dict(ov_kernels[name]))
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
    parser.add_argument(
        "--name", help="results file stem (default profile-<model>-b<batch>-s<sequence>); the docs cite such files by name"
    )
    parser.add_argument("--no-peak", action="store_true", help="leave out the measurement of this CPU's GEMM rates")
    args = parser.parse_args(argv)
    spec = model_specs([args.model], [], None, args.exports)[0]
    variants = [v for v in variant_specs(spec, args.variants.split(","), args.exports, print) if v.kind != "transformers"]
    vocab_size = int(json.loads((spec.checkpoint / "config.json").read_text())["vocab_size"])
    load = load_now()
    result = profile(variants, args.batch, args.sequence, vocab_size, args.runs + 1, args.threads)
    peak = None if args.no_peak else peak_rates(args.threads)
    from benchmarks.bench import machine

    out = {"model": args.model, "batch": args.batch, "sequence": args.sequence, "threads": args.threads,
           "load_average": [round(load, 2), round(load_now(), 2)], "machine": machine(),
           "peak_rates": peak, "variants": result}
    from trt_runtime.contract.files import write_json_atomic

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{args.name or f'profile-{args.model}-b{args.batch}-s{args.sequence}'}.json"
    write_json_atomic(path, out)
    for name, data in result.items():
        gemm = data["gemms"]["int8"]
        rate = "" if gemm["gops"] is None else (
            f"; INT8 GEMMs {gemm['gop_per_run']} GOP in {gemm['ms_per_run']} ms, {gemm['gops']} GOP/s"
        )
        if peak is not None and gemm["gops"]:
            rate += " (" + ", ".join(
                f"{100 * gemm['gops'] / peak[key]:.0f} % of {label}" for key, label in (
                    ("int8_peak_vnni_gops", "4x float32: VNNI"), ("int8_peak_amx_gops", "32x float32: AMX"),
                    ("u8s8_matmulinteger_gops", "MLAS u8 x s8 at 2048^3"))
                if key in peak
            ) + ")"
        print(f"\n{name}: {data['kernel_ms_per_run']:.1f} ms of kernels per run{rate}")
        for op, t in list(data["ops"].items())[:10]:
            print(f"  {op:28s} {t['ms_per_run']:9.2f} ms  {100 * t['share']:5.1f} %")
        for kernel, t in list(data.get("kernels", {}).items())[:8]:
            print(f"  kernel {kernel:38s} {t['ms_per_run']:9.2f} ms  {100 * t['share']:5.1f} %")
    if peak is not None:
        print(f"\nthis CPU ({args.threads} threads): float32 MatMul {peak['float32_matmul_gops']} GOP/s, u8 x s8 "
              f"MatMulInteger {peak['u8s8_matmulinteger_gops']} GOP/s at {peak['size']}^3")
    print(f"\nload average {out['load_average'][0]} -> {out['load_average'][1]}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
