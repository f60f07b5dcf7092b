"""The CPU INT8 graph (trt_runtime.backends.onnxruntime.cpu_int8): its int8 GEMMs against NumPy, agreement with the float
graph on a tiny model, the cache next to the export, the ONNX Runtime backend's choice of graph, and
the benchmark's --quick machinery on a tiny model (no timing assertions)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.fixtures.runtime_exports import save_checkpoint
from tests.fixtures.tiny_models import padded_batch
from trt_runtime.backends.onnxruntime import cpu_int8
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner, choose_graph
from trt_runtime.contract.export_dir import MODEL_ONNX, read_export_info

#: the tiny model's weights are drawn 10x wider than BERT's (initializer_range 0.2) so that the linear
#: layers, not the residual path, decide the output; on it, mistakes of a few percent in one GEMM's
#: scale move the output by more than this (checked by hand: one FFN weight scale off by 10 % gives 0.04)
RELATIVE_L2_TOLERANCE = 0.03


def _relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """(float export, qdq export) of one tiny random BERT (feature-extraction)."""
    import exporter

    root = tmp_path_factory.mktemp("cpu-int8")
    save_checkpoint(root / "checkpoint", "bert", "feature-extraction", initializer_range=0.2)
    common = dict(task="feature-extraction", validate=False, log=None)
    float_dir = exporter.export(root / "checkpoint", root / "float", quantization="none", **common)
    qdq_dir = exporter.export(
        root / "checkpoint", root / "qdq", quantization="qdq", num_calibration_samples=32, **common
    )
    return Path(float_dir), Path(qdq_dir)


def _fresh_copy(export_dir: Path, target: Path) -> Path:
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def _feeds(left_padding: bool = False) -> dict[str, np.ndarray]:
    feeds = {k: v.numpy() for k, v in padded_batch("bert", batch=4, seq=16).items()}
    if left_padding:  # the same rows, padded on the left
        for r in range(feeds["input_ids"].shape[0]):
            keep = int(feeds["attention_mask"][r].sum())
            for name in feeds:
                feeds[name][r] = np.roll(feeds[name][r], feeds[name].shape[1] - keep)
    return feeds


# --- the int8 GEMMs against NumPy --------------------------------------------------------------------


def _matmul_model(k: int, n: int, weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "one-linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _numpy_reference(
    x: np.ndarray, weight: np.ndarray, mode: str, bits: int, static_scale: float
) -> np.ndarray:
    """u8 activations (per row / per tensor / static) x symmetric per-column weights on `bits` bits, in float64."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if mode == "row":
        scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127
        zero = 128.0
    elif mode == "static":
        scale, zero = np.float64(static_scale), 128.0
    else:  # DynamicQuantizeLinear: asymmetric over [min(0, x), max(0, x)]
        low, high = min(rows.min(), 0.0), max(rows.max(), 0.0)
        scale = (high - low) / 255
        zero = float(np.clip(np.rint(-low / scale), 0, 255))
    q = np.clip(np.rint(rows / scale) + zero, 0, 255) - zero
    limit = 2 ** (bits - 1) - 1
    w_scale = np.abs(weight).max(axis=0) / limit
    w = np.clip(np.rint(weight / w_scale), -limit, limit)
    return ((q @ w) * scale * w_scale).reshape(*x.shape[:-1], weight.shape[1])


def _int8_grid_weight(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """A weight as a qdq export stores it: int8 per output column times that column's scale."""
    scale = rng.uniform(0.01, 0.05, n).astype(np.float32)
    values = rng.integers(-127, 128, (k, n)).astype(np.float32)
    values[0] = 127  # every column reaches the limit, as max calibration does
    return (values * scale).astype(np.float32)


@pytest.mark.parametrize("mode", ["row", "dynamic", "static"])
def test_quantized_matmul_matches_numpy(mode):
    rng = np.random.default_rng(0)
    k, n = 64, 24
    weight = _int8_grid_weight(rng, k, n)
    x = (rng.standard_normal((2, 5, k)) * rng.uniform(0.1, 4.0, (2, 5, 1))).astype(np.float32)
    static_scale = float(np.abs(x).max() / 127)
    recipe = cpu_int8.Recipe(activations=mode, weight_bits=7, fuse=False)
    model, summary = cpu_int8.quantize_gemms(_matmul_model(k, n, weight), {"x": static_scale}, recipe)
    assert summary.matmuls == 1 and getattr(summary, mode) == 1 and summary.float_gemms == 0
    assert "MatMul" not in {node.op_type for node in model.graph.node}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    expected = _numpy_reference(x, weight, mode, 7, static_scale)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_seven_bit_weights_do_not_saturate():
    """Large activations meeting large weights of the same sign: the case where AVX2's u8 x s8 kernel
    (pairs summed in a saturating int16) goes wrong with 8-bit weights. With 7 bits it must be exact."""
    k, n = 32, 4
    weight = np.full((k, n), 0.5, np.float32)  # every weight at +127 steps
    x = np.full((1, 2, k), 3.0, np.float32)  # every activation at +127 steps: u8 255
    model, _ = cpu_int8.quantize_gemms(
        _matmul_model(k, n, weight), {}, cpu_int8.Recipe(activations="row", weight_bits=7, fuse=False)
    )
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(got, x @ weight, rtol=1e-5)


def test_float_weights_and_unknown_inputs_stay_float():
    """A MatMul whose weight the export did not quantize (not on an int8 grid) is left alone."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    model, summary = cpu_int8.quantize_gemms(_matmul_model(16, 8, weight), {}, cpu_int8.Recipe(weight_bits=7))
    assert [node.op_type for node in model.graph.node] == ["MatMul"] and summary.float_gemms == 1


def test_split_skip_layer_norm_matches_onnx_runtimes_kernel():
    """SkipLayerNormalization -> Sum + LayerNormalization gives what ONNX Runtime's fused kernel gives
    (its epsilon kept, not ONNX's default), and the skip-sum output stays available."""
    rng = np.random.default_rng(2)
    d = 48
    arrays = {name: rng.standard_normal(d).astype(np.float32) for name in ("gamma", "beta", "bias")}
    node = helper.make_node(
        "SkipLayerNormalization",
        ["x", "skip", "gamma", "beta", "bias"],
        ["y", "", "", "sum"],
        domain=cpu_int8.MS_DOMAIN,
        epsilon=1e-3,
    )
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3, d])  # noqa: E731
    graph = helper.make_graph(
        [node],
        "skip-layer-norm",
        [value("x"), value("skip")],
        [value("y"), value("sum")],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(cpu_int8.MS_DOMAIN, 1)]
    )
    # small values: a wrong epsilon (ONNX's 1e-5 instead of 1e-3) would show
    feeds = {name: (0.02 * rng.standard_normal((2, 3, d))).astype(np.float32) for name in ("x", "skip")}

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )

    expected = run(model)
    assert cpu_int8.split_skip_layer_norms(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Sum", "LayerNormalization"]
    for got, want in zip(run(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- the derived graph of a tiny qdq export -----------------------------------------------------------


def test_derived_graph_is_fused_int8_without_qdq(tiny_exports):
    _, qdq_dir = tiny_exports
    model = cpu_int8.derive(qdq_dir, read_export_info(qdq_dir), cpu_int8.Recipe(attention="qattention"))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QAttention") == 2  # one per layer: Q, K and V projections in one u8 x s8 GEMM
    assert ops.count("MatMulIntegerToFloat") == 6  # per layer: attention output and the two FFN projections
    assert "BiasGelu" in ops and ops.count("LayerNormalization") == 5  # embeddings + 2 per layer
    assert "SkipLayerNormalization" not in ops and ops.count("Sum") == 4  # split back: ORT's kernel is slow
    assert "DequantizeLinear" not in ops and "MatMul" not in ops and "Attention" not in ops
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    # what this CPU should get, read from /proc/cpuinfo here: 7-bit weights only where MLAS's u8 x s8 kernel
    # adds pairs in a saturating int16 (x86 without VNNI / AMX-INT8), the export's 8 bits elsewhere
    limit = 127 if _cpu_adds_in_int32() else 63
    largest = 0
    for node in model.graph.node:
        if node.op_type in ("QAttention", "MatMulIntegerToFloat"):
            values = weights[node.input[1]]
            assert values.dtype == np.int8 and np.abs(values).max() <= limit, f"{limit}-bit weights on this CPU"
            largest = max(largest, int(np.abs(values.astype(np.int32)).max()))
    assert largest > 63 if limit == 127 else largest <= 63, f"largest |weight| {largest} on a CPU whose limit is {limit}"


def _cpu_adds_in_int32() -> bool:
    """Whether this CPU has an int32-accumulating u8 x s8 dot product (VNNI, AMX-INT8), or is not x86."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    flags: set[str] = set()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def test_mha_attention_is_one_int8_gemm_and_multi_head_attention(tiny_exports):
    """attention="mha": the Q, K and V projections as one per-row u8 x s8 GEMM, then MultiHeadAttention
    with the raw mask; its outputs agree with the float export like QAttention's do."""
    float_dir, qdq_dir = tiny_exports
    recipe = cpu_int8.Recipe(attention="mha")
    model = cpu_int8.derive(qdq_dir, read_export_info(qdq_dir), recipe)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "QAttention" not in ops and "Attention" not in ops
    assert ops.count("MatMulIntegerToFloat") == 8  # per layer: Q/K/V, attention output, two FFN projections
    feeds = _feeds(left_padding=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    ours = session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0]
    reference = OrtRunner(float_dir)(feeds)["last_hidden_state"]
    mask = feeds["attention_mask"].astype(bool)
    assert 1e-5 < _relative_l2(ours[mask], reference[mask]) < RELATIVE_L2_TOLERANCE
    assert recipe.tag.endswith("-fused-mha") and cpu_int8.Recipe(attention="qattention").tag.endswith(
        "-fused"
    )
    assert cpu_int8.Recipe().attention == "qattention"  # the default


@pytest.mark.parametrize("attention", ["mha", "qattention"])
def test_only_mha_answers_a_row_alike_alone_and_in_a_batch(tiny_exports, attention):
    """attention="mha" answers a sequence bit for bit alike alone and in a batch; the default QAttention's
    one input scale per call lets the batch companions move it (documented, as quantize_dynamic's)."""
    _, qdq_dir = tiny_exports
    model = cpu_int8.derive(qdq_dir, read_export_info(qdq_dir), cpu_int8.Recipe(attention=attention))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in _feeds().items() if k in names}
    batched = session.run(["last_hidden_state"], feeds)[0]
    alone = session.run(["last_hidden_state"], {k: v[:1] for k, v in feeds.items()})[0]
    if attention == "mha":
        np.testing.assert_array_equal(alone[0], batched[0])
    else:
        assert np.abs(alone[0] - batched[0]).max() > 0


@pytest.mark.parametrize("left_padding", [False, True], ids=["right-padded", "left-padded"])
def test_outputs_agree_with_the_float_graph(tiny_exports, left_padding):
    """OrtRunner on the qdq export (the CPU INT8 graph) vs OrtRunner on the float export of the same
    checkpoint, at the real (unmasked) tokens; left padding checks that attention uses the raw mask."""
    float_dir, qdq_dir = tiny_exports
    feeds = _feeds(left_padding)
    int8_runner, float_runner = OrtRunner(qdq_dir), OrtRunner(float_dir)
    assert "CPU INT8" in int8_runner.graph_reason
    ours, reference = int8_runner(feeds), float_runner(feeds)
    mask = feeds["attention_mask"].astype(bool)
    hidden_error = _relative_l2(ours["last_hidden_state"][mask], reference["last_hidden_state"][mask])
    assert 1e-5 < hidden_error < RELATIVE_L2_TOLERANCE, "quantized (not float), and close to float"
    if not left_padding:  # the pooler reads position 0, which left padding turns into padding
        assert _relative_l2(ours["pooler_output"], reference["pooler_output"]) < RELATIVE_L2_TOLERANCE


# --- cache and choice -----------------------------------------------------------------------------------


def test_cpu_graph_is_cached_once_keyed_and_reused(tiny_exports, tmp_path):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    info = read_export_info(export_dir)
    first = OrtRunner(export_dir)
    name = f"cpu-int8-{ort.__version__}-{info.onnx_sha256[:16]}-{cpu_int8.Recipe().tag}.onnx"
    derived = export_dir / CACHE_DIR / name
    assert first.graph_path == derived and "(created" in first.graph_reason
    stamp = derived.stat().st_mtime_ns

    second = OrtRunner(export_dir)
    assert second.graph_path == derived and "(reused" in second.graph_reason
    assert derived.stat().st_mtime_ns == stamp
    assert not [p for p in (export_dir / CACHE_DIR).iterdir() if p.name.startswith(".")], (
        "no temporary file left"
    )
    feeds = _feeds()
    np.testing.assert_allclose(
        second(feeds)["last_hidden_state"], first(feeds)["last_hidden_state"], atol=1e-5
    )

    # another ONNX Runtime version or another model.onnx: another key
    assert cpu_int8.cache_path(export_dir, info).name == name
    info.onnx_sha256 = "0" * 64
    assert cpu_int8.cache_path(export_dir, info).name != name


def test_backend_chooses_the_cpu_graph_for_qdq_exports_on_the_cpu_only(tiny_exports):
    float_dir, qdq_dir = tiny_exports
    float_info, qdq_info = read_export_info(float_dir), read_export_info(qdq_dir)
    assert choose_graph(float_dir, float_info)[0] == float_dir / MODEL_ONNX
    assert choose_graph(qdq_dir, qdq_info)[0].name.startswith("cpu-int8-")
    assert choose_graph(qdq_dir, qdq_info, providers=["CUDAExecutionProvider"])[0] == qdq_dir / MODEL_ONNX
    forced = OrtRunner(qdq_dir, graph="exported")
    assert forced.graph_path == qdq_dir / MODEL_ONNX and "asked for" in forced.graph_reason
    ops = {node.op_type for node in onnx.load(str(forced.graph_path)).graph.node}
    assert "QuantizeLinear" in ops, "the exported (TensorRT-style) Q/DQ graph"
    with pytest.raises(cpu_int8.CpuInt8Error, match="derived from qdq exports"):
        OrtRunner(float_dir, graph="cpu-int8")
    with pytest.raises(ValueError, match="choose one of auto, exported, cpu-int8"):
        OrtRunner(qdq_dir, graph="fast")


def test_unwritable_export_dir_falls_back_to_the_exported_graph(tiny_exports, tmp_path, caplog):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    (export_dir / CACHE_DIR).write_text("a file where the cache directory should be")
    runner = OrtRunner(export_dir, cache=False)
    assert runner.graph_path == export_dir / MODEL_ONNX and "no CPU INT8 graph" in runner.graph_reason
    assert "cannot make the CPU INT8 graph" in caplog.text
    assert runner(_feeds())["last_hidden_state"].shape == (4, 16, 32)


def test_without_the_onnx_package_the_exported_graph_runs_and_says_why(
    tiny_exports, tmp_path, monkeypatch, caplog
):
    """A runtime-only environment (numpy, onnxruntime, tokenizers; e.g. a Triton server's) lacks `onnx`."""
    import sys

    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    import trt_runtime.backends.onnxruntime as package

    # as if `onnx` were missing: importing trt_runtime.backends.onnxruntime.cpu_int8 raises ImportError
    monkeypatch.setitem(sys.modules, "trt_runtime.backends.onnxruntime.cpu_int8", None)
    monkeypatch.delattr(package, "cpu_int8")
    runner = OrtRunner(export_dir, cache=False)
    assert runner.graph_path == export_dir / MODEL_ONNX and "pip install onnx sympy" in runner.graph_reason
    assert "needs the onnx and sympy packages" in caplog.text
    with pytest.raises(ImportError, match="pip install onnx sympy"):
        OrtRunner(export_dir, cache=False, graph="cpu-int8")
    reference = ort.InferenceSession(str(export_dir / MODEL_ONNX), providers=["CPUExecutionProvider"])
    feeds = _feeds()
    expected = reference.run(["last_hidden_state"], feeds)[0]
    np.testing.assert_allclose(runner(feeds)["last_hidden_state"], expected, rtol=1e-4, atol=1e-4)


# --- the benchmark's machinery ------------------------------------------------------------------------


def test_peak_memory_is_each_variants_own(tiny_exports):
    """Each variant's peak resident set is read in a fresh interpreter from its own VmHWM: a parent that
    peaked far higher (ru_maxrss would carry that peak over fork + exec) does not show in the figures,
    and two variants get two measurements."""
    from benchmarks.measure import _peak_rss_mb, measure_memory
    from benchmarks.variants import VariantSpec

    ballast = np.ones(600 * 2**20, np.uint8)  # touched: this process's peak is now >= 600 MB
    parent_peak = _peak_rss_mb()
    del ballast
    float_dir, qdq_dir = tiny_exports
    vocab_size = int(json.loads((float_dir / "config.json").read_text())["vocab_size"])
    figures = [
        measure_memory(VariantSpec(name, "runner", str(path), graph), [(2, 16)], vocab_size, 1)
        for name, path, graph in (("float", float_dir, "exported"), ("int8", qdq_dir, "cpu-int8"))
    ]
    for memory in figures:
        assert "error" not in memory, memory
        assert 0 < memory["rss_before_mb"] <= memory["rss_loaded_mb"] <= memory["peak_rss_mb"]
        assert memory["peak_rss_mb"] < parent_peak - 400, "the child's own peak, not the parent's"


def test_benchmark_quick_machinery_on_a_tiny_model(tiny_exports, tmp_path, capsys):
    """benchmarks/bench.py end to end on the tiny checkpoint: exports, peers, timing, memory children,
    accuracy, JSON, table and plot (what the numbers are is not asserted: no timing in unit tests)."""
    from benchmarks import bench

    checkpoint = tiny_exports[0].parent / "checkpoint"
    variants = ["pytorch", "ort-float", "ort-int8", "ort-qdq-export", "quantize_dynamic", "quantize_static"]
    code = bench.main(
        [
            "--quick",
            "--models",
            "",
            "--checkpoint",
            f"tiny={checkpoint}",
            "--batches",
            "1,2",
            "--sequences",
            "16",
            "--rounds",
            "1",
            "--sentences",
            "8",
            "--calibration-samples",
            "32",
            "--threads",
            "1",
            "--variants",
            ",".join(variants),
            "--exports",
            str(tmp_path / "exports"),
            "--output",
            str(tmp_path / "results"),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results" / "bench-quick.json").read_text())
    assert (tmp_path / "results" / "bench-quick.png").stat().st_size > 0
    timings = results["timings"]
    assert {(t["variant"], t["batch"]) for t in timings} == {(v, b) for v in variants for b in (1, 2)}
    assert all(t["x_ort_float"] == 1.0 for t in timings if t["variant"] == "ort-float")
    tiny = results["models"]["tiny"]["variants"]
    assert tiny["pytorch"]["accuracy"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert tiny["ort-float"]["accuracy"]["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert all(tiny[v]["memory"]["peak_rss_mb"] >= tiny[v]["memory"]["rss_loaded_mb"] > 0 for v in variants)
    assert Path(tiny["ort-int8"]["spec"]["path"]).is_dir() and tiny["ort-int8"]["size_mb"] > 0
    goal = results["goal"]  # stated for BERT-base at batch 8 x sequence 128: not measured here, and said so
    assert (
        goal["status"] == "not measured"
        and "ort-int8" in goal["missing"][0]
        and "bert-base" in goal["missing"][0]
    )
    assert results["models"]["tiny"]["prepare_seconds"] > 0
    out = capsys.readouterr().out
    assert "| tiny | 2 x 16 | ort-int8 |" in out
    # a second run reuses the exports and peers
    exports_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "exports").rglob("*.onnx")}
    bench.main(
        [
            "--quick",
            "--models",
            "",
            "--checkpoint",
            f"tiny={checkpoint}",
            "--batches",
            "1",
            "--sequences",
            "8",
            "--rounds",
            "1",
            "--sentences",
            "0",
            "--no-memory",
            "--calibration-samples",
            "32",
            "--threads",
            "1",
            "--variants",
            "ort-int8,quantize_dynamic",
            "--exports",
            str(tmp_path / "exports"),
            "--output",
            str(tmp_path / "results"),
            "--name",
            "again",
        ]
    )
    for path, stamp in exports_before.items():
        if CACHE_DIR not in path.parts:
            assert path.stat().st_mtime_ns == stamp, f"{path} was made again"
    assert os.path.exists(tmp_path / "results" / "again.json")


def test_goal_check_states_met_not_met_or_not_measured():
    """The issue's goal from one run's rows: ratios at BERT-base batch 8 x sequence 128 (the better of the
    two ONNX Runtime quantizers as the peer), cosine from MiniLM."""
    from benchmarks import report

    def row(variant: str, throughput: float) -> dict:
        return {
            "model": "bert-base",
            "variant": variant,
            "batch": 8,
            "sequence": 128,
            "throughput": throughput,
        }

    results = {
        "timings": [
            row("ort-float", 10.0),
            row("ort-int8", 19.0),
            row("quantize_dynamic", 15.0),
            row("quantize_static", 16.0),
            row("quantize_static-defaults", 18.5),
        ],
        "models": {"minilm": {"variants": {"ort-int8": {"accuracy": {"mean_cosine": 0.995}}}}},
    }
    check = report.goal_check(results)
    assert check["status"] == "met" and check["x_ort_float"] == 1.9
    assert check["best_peer"] == "quantize_static" and check["x_best_peer"] == pytest.approx(
        19 / 16, abs=1e-3
    )
    assert "MET" in report.goal_line(check)

    results["timings"][1]["throughput"] = 17.0  # 1.7x float, 1.06x quantize_static
    check = report.goal_check(results)
    assert check["status"] == "not met"
    assert check["met"] == {
        "x_ort_float >= 1.8": False,
        "x_best_peer >= 1.15": False,
        "mean_cosine >= 0.99": True,
    }

    del results["models"]["minilm"]
    check = report.goal_check(results)
    assert check["status"] == "not measured" and "accuracy of ort-int8 on minilm" in check["missing"][0]
