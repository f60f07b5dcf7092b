"""The CPU INT8 graph (trt_runtime.backends.onnxruntime.cpu_int8): its int8 GEMMs against NumPy, agreement with the
float graph on a tiny model; the graph as an artefact (trt_runtime.backends.onnxruntime.graphs): its record, the
cache and `cache_dir`, `build --target cpu-int8`, substituted and stale graphs, read-only exports (a real read-only
bind mount where the machine allows it); and the ONNX Runtime backend's choice of graph.
(The benchmark's machinery is tested in tests/benchmarks/test_bench.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_runtime
from tests.fixtures.filesystems import read_only_mount
from tests.fixtures.runtime_exports import save_checkpoint
from tests.fixtures.tiny_models import padded_batch
from trt_runtime.backends.base import CacheStatus
from trt_runtime.backends.onnxruntime import cpu_int8
from trt_runtime.backends.onnxruntime.recipes import recipe_record
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner, choose_graph
from trt_runtime.contract.export_dir import CPU_INT8_JSON, CPU_INT8_ONNX, MODEL_ONNX, read_export_info

#: the tiny model's weights are drawn 10x wider than BERT's (initializer_range 0.2) so that the linear
#: layers, not the residual path, decide the output; on it, mistakes of a few percent in one GEMM's
#: scale move the output by more than this (checked by hand: one FFN weight scale off by 10 % gives 0.04)
RELATIVE_L2_TOLERANCE = 0.03


def _relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """(float export, qdq export) of one tiny random BERT (feature-extraction); the qdq export unsmoothed
    (smoothed exports: `smoothed_exports`)."""
    import exporter
    from models.quantization import QuantizationRecipe

    root = tmp_path_factory.mktemp("cpu-int8")
    save_checkpoint(root / "checkpoint", "bert", "feature-extraction", initializer_range=0.2)
    common = dict(task="feature-extraction", validate=False, log=None)
    float_dir = exporter.export(root / "checkpoint", root / "float", quantization="none", **common)
    recipe = QuantizationRecipe(mode="qdq", num_samples=32, smoothing="none")
    qdq_dir = exporter.export(root / "checkpoint", root / "qdq", recipe=recipe, **common)
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
    assert int8_runner.choice.graph == "cpu-int8" and "CPU INT8" in int8_runner.choice.graph_reason
    ours, reference = int8_runner(feeds), float_runner(feeds)
    mask = feeds["attention_mask"].astype(bool)
    hidden_error = _relative_l2(ours["last_hidden_state"][mask], reference["last_hidden_state"][mask])
    assert 1e-5 < hidden_error < RELATIVE_L2_TOLERANCE, "quantized (not float), and close to float"
    if not left_padding:  # the pooler reads position 0, which left padding turns into padding
        assert _relative_l2(ours["pooler_output"], reference["pooler_output"]) < RELATIVE_L2_TOLERANCE


# --- the CPU INT8 graph as an artefact: record, cache, prebuilt, read-only exports ----------------------------


def _cache(export_dir: Path, root: Path | None = None) -> Path:
    """Where the CPU graphs of `export_dir` are cached: <root or export/.cache>/<sha256[:16] of model.onnx>."""
    digest = hashlib.sha256((export_dir / MODEL_ONNX).read_bytes()).hexdigest()
    return (root if root is not None else export_dir / CACHE_DIR) / digest[:16]


def _graph_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("cpu-int8-*.onnx")) if directory.exists() else []


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*")}


def test_cpu_graph_is_cached_once_with_its_record_and_reused(tiny_exports, tmp_path):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    first = OrtRunner(export_dir)
    [derived] = _graph_files(_cache(export_dir))
    assert derived.name == f"cpu-int8-{ort.__version__}-{cpu_int8.Recipe().tag}.onnx"
    assert first.choice.graph == "cpu-int8" and first.graph_path == derived
    assert first.choice.cache is CacheStatus.CREATED and first.choice.cache_detail == str(derived)
    record = json.loads(derived.with_suffix(".json").read_text())
    assert record["kind"] == "cpu-int8" and record["source"] == MODEL_ONNX
    assert record["source_sha256"] == hashlib.sha256((export_dir / MODEL_ONNX).read_bytes()).hexdigest()
    assert record["sha256"] == hashlib.sha256(derived.read_bytes()).hexdigest()
    made_with = record["made_with"]
    assert made_with["onnxruntime_version"] == ort.__version__
    # the CPU feature the weights' bit width depends on, as /proc/cpuinfo says here (read by this test itself)
    assert made_with["int8_dot_products_exact"] is _cpu_adds_in_int32()
    assert made_with["recipe"]["weight_bits"] == (8 if _cpu_adds_in_int32() else 7)
    assert made_with["recipe"]["tag"] == cpu_int8.Recipe().tag and made_with["recipe"]["version"] >= 2
    stamp = derived.stat().st_mtime_ns

    second = OrtRunner(export_dir)
    assert second.graph_path == derived and second.choice.cache is CacheStatus.REUSED
    assert derived.stat().st_mtime_ns == stamp
    assert not [p for p in derived.parent.iterdir() if p.name.startswith(".") and p.name != ".lock"], "no temporary"
    feeds = _feeds()
    np.testing.assert_array_equal(second(feeds)["last_hidden_state"], first(feeds)["last_hidden_state"])


def _another_qdq_graph(tmp_path: Path) -> bytes:
    """The CPU INT8 graph of another tiny qdq export (other weights, same shapes)."""
    import exporter

    save_checkpoint(tmp_path / "other-checkpoint", "bert", "feature-extraction", initializer_range=0.2, seed=7)
    other = exporter.export(
        tmp_path / "other-checkpoint", tmp_path / "other", task="feature-extraction", quantization="qdq",
        num_calibration_samples=32, validate=False, log=None,
    )
    runner = OrtRunner(other)
    assert runner.graph_path is not None
    return runner.graph_path.read_bytes()


def test_a_substituted_cached_graph_is_never_used(tiny_exports, tmp_path):
    """Export A's cache holding export B's graph (A's model.onnx still verifies): detected by its sha256, made
    again, and the answers are A's, bit for bit as a fresh derivation gives them."""
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    serial = OrtRunner(_fresh_copy(tiny_exports[1], tmp_path / "serial"))
    derived = OrtRunner(export_dir).graph_path
    assert derived is not None
    derived.write_bytes(_another_qdq_graph(tmp_path))
    runner = OrtRunner(export_dir)
    assert runner.choice.cache is CacheStatus.REBUILT
    assert "is not the file its record describes" in runner.choice.cache_detail
    feeds = _feeds()
    np.testing.assert_array_equal(runner(feeds)["last_hidden_state"], serial(feeds)["last_hidden_state"])
    assert OrtRunner(export_dir).choice.cache is CacheStatus.REUSED


RECORD_MISMATCHES = {
    "another model.onnx": (lambda r: r.update(source_sha256="0" * 64), "made from a different model.onnx"),
    "another onnxruntime": (
        lambda r: r["made_with"].update(onnxruntime_version="1.0.0"),
        f"made with onnxruntime_version 1.0.0, this runtime needs {ort.__version__}",
    ),
    "another CPU": (
        lambda r: r["made_with"].update(int8_dot_products_exact=not r["made_with"]["int8_dot_products_exact"]),
        "made with int8_dot_products_exact",
    ),
    "another recipe": (lambda r: r["made_with"]["recipe"].update(activations="static"), "made with recipe"),
}


@pytest.mark.parametrize("case", list(RECORD_MISMATCHES))
def test_a_cached_graph_whose_record_does_not_match_is_rebuilt_naming_why(tiny_exports, tmp_path, case):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    derived = OrtRunner(export_dir).graph_path
    assert derived is not None
    record = json.loads(derived.with_suffix(".json").read_text())
    change, message = RECORD_MISMATCHES[case]
    change(record)
    derived.with_suffix(".json").write_text(json.dumps(record))
    runner = OrtRunner(export_dir)
    assert runner.choice.cache is CacheStatus.REBUILT and message in runner.choice.cache_detail
    rewritten = json.loads(derived.with_suffix(".json").read_text())
    assert rewritten["made_with"] == json.loads(json.dumps(cpu_int8_expected_made_with()))


def cpu_int8_expected_made_with() -> dict:
    return {
        "onnxruntime_version": ort.__version__,
        "recipe": recipe_record(cpu_int8.Recipe()),
        "int8_dot_products_exact": _cpu_adds_in_int32(),
    }


def _build(export_dir: Path, target: str) -> int:
    from trt_runtime.__main__ import main

    return main(["build", str(export_dir), "--target", target])


def test_build_target_cpu_int8_writes_the_graph_with_its_record_and_the_runner_uses_it(
    tiny_exports, tmp_path, capsys
):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    assert _build(export_dir, "cpu-int8") == 0
    built = export_dir / CPU_INT8_ONNX
    assert f"wrote {built}" in capsys.readouterr().out
    record = json.loads((export_dir / CPU_INT8_JSON).read_text())
    assert record["sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert record["made_with"] == cpu_int8_expected_made_with()
    runner = OrtRunner(export_dir)
    assert runner.choice.cache is CacheStatus.PREBUILT and runner.graph_path == built
    assert not _graph_files(_cache(export_dir)), "a prebuilt graph is not derived again into the cache"
    reference = OrtRunner(_fresh_copy(tiny_exports[1], tmp_path / "derived"))
    feeds = _feeds()
    np.testing.assert_array_equal(runner(feeds)["last_hidden_state"], reference(feeds)["last_hidden_state"])


def test_a_prebuilt_graph_that_no_longer_matches_is_rebuilt_in_the_cache_with_a_warning(
    tiny_exports, tmp_path, caplog
):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    assert _build(export_dir, "cpu-int8") == 0
    (export_dir / CPU_INT8_ONNX).write_bytes(_another_qdq_graph(tmp_path))  # e.g. copied from another export
    with caplog.at_level(logging.WARNING):
        runner = OrtRunner(export_dir)
    assert f"not using {export_dir / CPU_INT8_ONNX}" in caplog.text and "not the file its record describes" in caplog.text
    assert runner.choice.cache is CacheStatus.REBUILT and CPU_INT8_ONNX in runner.choice.cache_detail
    assert runner.graph_path in _graph_files(_cache(export_dir))
    again = OrtRunner(export_dir)  # the cached one now; the stale prebuilt one is still named
    assert again.choice.cache is CacheStatus.REUSED and "the prebuilt one was not used" in again.choice.cache_detail


def test_build_target_refuses_an_export_of_another_mode(tiny_exports, capsys):
    float_dir, _ = tiny_exports
    assert _build(float_dir, "cpu-int8") == 2
    assert "the CPU INT8 graph is derived from qdq exports" in capsys.readouterr().err
    assert not (float_dir / CPU_INT8_ONNX).exists()


def test_cache_dir_and_the_environment_variable_serve_many_exports(tiny_exports, tmp_path, monkeypatch):
    """One cache directory outside the exports, entries keyed by each export's model.onnx; nothing is written
    into the exports."""
    float_dir, qdq_dir = (_fresh_copy(d, tmp_path / d.name) for d in tiny_exports)
    shared, named = tmp_path / "shared-cache", tmp_path / "named-cache"
    monkeypatch.setenv("QBERT_CACHE_DIR", str(shared))
    runners = [OrtRunner(qdq_dir), OrtRunner(float_dir)]
    assert [r.choice.graph for r in runners] == ["cpu-int8", "cpu-float"]
    assert all(r.choice.cache is CacheStatus.CREATED and "QBERT_CACHE_DIR" not in r.choice.cache_detail for r in runners)
    assert {p.name for p in shared.iterdir()} == {_cache(qdq_dir).name, _cache(float_dir).name}
    assert _graph_files(_cache(qdq_dir, shared)) == [runners[0].graph_path]
    assert not (qdq_dir / CACHE_DIR).exists() and not (float_dir / CACHE_DIR).exists()
    assert OrtRunner(qdq_dir).choice.cache is CacheStatus.REUSED
    # the option wins over the environment
    explicit = OrtRunner(qdq_dir, cache_dir=named)
    assert explicit.choice.cache is CacheStatus.CREATED and explicit.graph_path in _graph_files(_cache(qdq_dir, named))


def test_cache_off_derives_in_memory_and_writes_nothing(tiny_exports, tmp_path):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    before = _snapshot(export_dir)
    runner = OrtRunner(export_dir, cache=False)
    assert runner.choice.graph == "cpu-int8" and runner.choice.cache is CacheStatus.IN_MEMORY
    assert "cache=False" in runner.choice.cache_detail and runner.graph_path is None
    assert _snapshot(export_dir) == before
    reference = OrtRunner(_fresh_copy(tiny_exports[1], tmp_path / "cached"))
    feeds = _feeds()
    np.testing.assert_array_equal(runner(feeds)["last_hidden_state"], reference(feeds)["last_hidden_state"])


def test_a_symlinked_cache_is_never_written_through(tiny_exports, tmp_path, caplog):
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (export_dir / CACHE_DIR).symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.INFO):
        runner = OrtRunner(export_dir)
    assert runner.choice.graph == "cpu-int8" and runner.choice.cache is CacheStatus.IN_MEMORY
    assert runner.choice.session_cache is CacheStatus.IN_MEMORY
    assert "is a symbolic link" in runner.choice.cache_detail and str(export_dir / CACHE_DIR) in runner.choice.cache_detail
    assert "deriving the CPU INT8 graph" in caplog.text and "in memory" in caplog.text
    assert list(elsewhere.iterdir()) == [], "nothing was written into the link's target"
    # with a cache directory named, it is used instead
    cached = OrtRunner(export_dir, cache_dir=tmp_path / "cache")
    assert cached.choice.cache is CacheStatus.CREATED and list(elsewhere.iterdir()) == []


def test_a_link_planted_at_a_cached_graphs_name_is_replaced_not_followed(tiny_exports, tmp_path):
    """An export shipped with `.cache/<key>/cpu-int8-....onnx` linking to a file elsewhere: the link is neither
    read as the graph nor written through; the graph is made again in its place."""
    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    derived = OrtRunner(export_dir).graph_path
    assert derived is not None
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    derived.unlink()
    derived.symlink_to(victim)
    runner = OrtRunner(export_dir)
    assert runner.choice.cache is CacheStatus.REBUILT and "symbolic link" in runner.choice.cache_detail
    assert victim.read_text() == "someone else's file"
    assert not derived.is_symlink() and runner.graph_path == derived


def test_backend_chooses_the_cpu_graph_for_qdq_exports_on_the_cpu_only(tiny_exports):
    float_dir, qdq_dir = tiny_exports
    qdq_info = read_export_info(qdq_dir)
    assert choose_graph(qdq_dir, qdq_info).name == "cpu-int8"
    on_cuda = choose_graph(qdq_dir, qdq_info, providers=["CUDAExecutionProvider"])
    assert on_cuda.name == "exported" and on_cuda.path == qdq_dir / MODEL_ONNX
    forced = OrtRunner(qdq_dir, graph="exported")
    assert forced.graph_path == qdq_dir / MODEL_ONNX and "asked for" in forced.choice.graph_reason
    ops = {node.op_type for node in onnx.load(str(forced.graph_path)).graph.node}
    assert "QuantizeLinear" in ops, "the exported (TensorRT-style) Q/DQ graph"
    with pytest.raises(cpu_int8.CpuInt8Error, match="derived from qdq exports"):
        OrtRunner(float_dir, graph="cpu-int8")
    with pytest.raises(ValueError, match="choose one of auto, exported, cpu-int8, cpu-float"):
        OrtRunner(qdq_dir, graph="fast")


def test_without_the_onnx_package_the_exported_graph_runs_and_a_prebuilt_graph_still_serves(
    tiny_exports, tmp_path, monkeypatch, caplog
):
    """A runtime-only environment (numpy, onnxruntime, tokenizers; e.g. a Triton server's) may lack `onnx`:
    it cannot derive the CPU INT8 graph, but it runs one built beforehand (its check needs no onnx)."""
    import sys

    export_dir = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    prebuilt_dir = _fresh_copy(tiny_exports[1], tmp_path / "prebuilt")
    assert _build(prebuilt_dir, "cpu-int8") == 0
    import trt_runtime.backends.onnxruntime as package

    # as if `onnx` were missing: importing trt_runtime.backends.onnxruntime.cpu_int8 raises ImportError
    monkeypatch.setitem(sys.modules, "trt_runtime.backends.onnxruntime.cpu_int8", None)
    monkeypatch.delattr(package, "cpu_int8")
    runner = OrtRunner(export_dir, cache=False)
    assert runner.graph_path == export_dir / MODEL_ONNX and "pip install onnx sympy" in runner.choice.graph_reason
    assert "needs the onnx and sympy packages" in caplog.text
    with pytest.raises(ImportError, match="pip install onnx sympy"):
        OrtRunner(export_dir, cache=False, graph="cpu-int8")
    reference = ort.InferenceSession(str(export_dir / MODEL_ONNX), providers=["CPUExecutionProvider"])
    feeds = _feeds()
    expected = reference.run(["last_hidden_state"], feeds)[0]
    np.testing.assert_allclose(runner(feeds)["last_hidden_state"], expected, rtol=1e-4, atol=1e-4)
    prebuilt = OrtRunner(prebuilt_dir)
    assert prebuilt.choice.graph == "cpu-int8" and prebuilt.choice.cache is CacheStatus.PREBUILT


def test_a_read_only_export_serves_the_cpu_int8_graph_at_full_speed_and_nothing_is_written(tiny_exports, tmp_path):
    source = _fresh_copy(tiny_exports[1], tmp_path / "qdq")
    prebuilt = _fresh_copy(tiny_exports[1], tmp_path / "prebuilt")
    assert _build(prebuilt, "cpu-int8") == 0
    reference = OrtRunner(_fresh_copy(tiny_exports[1], tmp_path / "writable"))
    feeds = _feeds()
    expected = reference(feeds)["last_hidden_state"]
    before = {source: _snapshot(source), prebuilt: _snapshot(prebuilt)}
    with read_only_mount(tmp_path / "ro", source) as mounted, read_only_mount(
        tmp_path / "ro-prebuilt", prebuilt
    ) as mounted_prebuilt:
        with pytest.raises(OSError):
            (mounted / "probe").write_text("x")  # it really is read-only
        # no cache_dir: derived in memory, the CPU INT8 graph (not the slow exported one)
        runner = trt_runtime.load(mounted, backend="onnxruntime")
        assert runner.choice.graph == "cpu-int8" and runner.choice.cache is CacheStatus.IN_MEMORY
        assert runner.choice.session_cache is CacheStatus.IN_MEMORY
        np.testing.assert_array_equal(runner(feeds)["last_hidden_state"], expected)
        explicit = trt_runtime.load(mounted, graph="cpu-int8")  # no bare OSError
        assert explicit.choice.cache is CacheStatus.IN_MEMORY
        # a cache directory elsewhere: written there
        cached = trt_runtime.load(mounted, backend="onnxruntime", cache_dir=tmp_path / "cache")
        assert cached.choice.cache is CacheStatus.CREATED and cached.choice.session_cache is CacheStatus.CREATED
        np.testing.assert_array_equal(cached(feeds)["last_hidden_state"], expected)
        # built beforehand into the export (e.g. in the image build): used as it is
        built = trt_runtime.load(mounted_prebuilt, backend="onnxruntime")
        assert built.choice.cache is CacheStatus.PREBUILT and built.choice.session_cache is CacheStatus.IN_MEMORY
        np.testing.assert_array_equal(built(feeds)["last_hidden_state"], expected)
        pipe = trt_runtime.pipeline("feature-extraction", mounted, "onnxruntime", pooling="mean")
        assert pipe.runner.choice.graph == "cpu-int8" and len(pipe("john lives in paris")) == 32
        # the default CPU backend (loader.CPU_BACKENDS) serves the read-only export too, writing nothing
        assert len(trt_runtime.pipeline("feature-extraction", mounted, pooling="mean")("john lives in paris")) == 32
    assert _snapshot(source) == before[source] and _snapshot(prebuilt) == before[prebuilt], "nothing written"


# --- SmoothQuant-style smoothing divisions folded back into the weights --------------------------------


def _divided_matmuls_model(
    divisor: np.ndarray, weights: list[np.ndarray], op: str = "Div"
) -> onnx.ModelProto:
    """x -> op(x, divisor) -> one MatMul per weight (each a graph output)."""
    k = weights[0].shape[0]
    nodes = [helper.make_node(op, ["x", "s"], ["smoothed"], name="smoothing")]
    outputs = []
    for i, weight in enumerate(weights):
        nodes.append(helper.make_node("MatMul", ["smoothed", f"w{i}"], [f"y{i}"], name=f"linear{i}"))
        outputs.append(
            helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", "sequence", weight.shape[1]])
        )
    graph = helper.make_graph(
        nodes,
        "smoothed-linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", k])],
        outputs,
        [numpy_helper.from_array(divisor, "s")]
        + [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


@pytest.mark.parametrize("op", ["Div", "Mul"])
def test_a_per_channel_division_is_folded_into_the_matmuls_it_feeds(op):
    """Two linear layers behind one per-channel Div (as the Q/K/V projections are): the Div goes, the
    function stays (float weights: to float rounding, against ONNX Runtime on the original graph); a weight
    the export quantized comes back on a per-column int8 grid within half a step of W / s."""
    rng = np.random.default_rng(3)
    k, n = 16, 8
    s = rng.uniform(0.2, 5.0, k).astype(np.float32)
    float_weight = rng.standard_normal((k, n)).astype(np.float32)
    grid_weight = _int8_grid_weight(rng, k, n)
    model = _divided_matmuls_model(s, [float_weight, grid_weight], op)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    expected = _run(model, {"x": x})
    assert cpu_int8.fold_smoothing_divisions(model) == 1
    assert [node.op_type for node in model.graph.node] == ["MatMul", "MatMul"]
    assert all(node.input[0] == "x" for node in model.graph.node)
    got = _run(model, {"x": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5 * np.abs(expected[0]).max())
    folded = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}[
        model.graph.node[1].input[1]
    ]
    unsmoothed = grid_weight.astype(np.float64) / (s if op == "Div" else 1.0 / s.astype(np.float64))[:, None]
    half_step = np.abs(unsmoothed).max(axis=0) / 127 / 2
    assert cpu_int8.on_int8_grid(folded) and np.all(np.abs(folded - unsmoothed) <= half_step * 1.001)


def test_divisions_that_do_not_feed_only_constant_weight_matmuls_are_left_alone():
    rng = np.random.default_rng(4)
    k, n = 16, 8
    weight = rng.standard_normal((k, n)).astype(np.float32)
    scalar = _divided_matmuls_model(np.array(2.0, np.float32), [weight])  # e.g. GELU's / sqrt(2)
    also_added = _divided_matmuls_model(rng.uniform(0.5, 2.0, k).astype(np.float32), [weight])
    also_added.graph.node.append(helper.make_node("Add", ["smoothed", "x"], ["residual"], name="residual"))
    also_added.graph.output.append(helper.make_tensor_value_info("residual", TensorProto.FLOAT, None))
    activation_weight = _divided_matmuls_model(rng.uniform(0.5, 2.0, k).astype(np.float32), [weight])
    activation_weight.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [k, n]))
    del activation_weight.graph.initializer[1:]  # w0 is an input, not a constant
    for model in (scalar, also_added, activation_weight):
        before = model.SerializeToString()
        assert cpu_int8.fold_smoothing_divisions(model) == 0
        assert model.SerializeToString() == before


#: the smoothed exports' placements: the unsmoothed default's sites (residual adds and the FFN output projection's
#: input float: Q/K/V and FFN input smoothed), and the default's, every linear layer's input quantized (the FFN
#: output projection smoothed too)
SMOOTHED_PLACEMENTS = {"ffn-output-float": ("residual-adds", "ffn-output-input"), "residual-adds": ("residual-adds",)}


@pytest.fixture(scope="module")
def smoothed_exports(tiny_exports):
    """placement -> a qdq export of the tiny model smoothed at a fixed alpha (so that every site is smoothed)."""
    import exporter
    from models.quantization import QuantizationRecipe

    float_dir, _ = tiny_exports
    exports = {}
    for placement, keep_float in SMOOTHED_PLACEMENTS.items():
        recipe = QuantizationRecipe(mode="qdq", num_samples=32, smoothing="0.5", keep_float=keep_float)
        out = exporter.export(
            float_dir.parent / "checkpoint",
            float_dir.parent / f"qdq-smoothed-{placement}",
            task="feature-extraction",
            recipe=recipe,
            validate=False,
            log=None,
        )
        exports[placement] = Path(out)
    return exports


def _smoothing_divisions(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Div nodes by a constant with more than one element (per channel)."""
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "Div" and n.input[1] in inits and inits[n.input[1]].size > 1
    ]


@pytest.mark.parametrize("activations", ["row", "static"])
@pytest.mark.parametrize("placement", list(SMOOTHED_PLACEMENTS))
def test_a_smoothed_export_derives_fused_qattention_close_to_the_export_and_to_float(
    tiny_exports, smoothed_exports, placement, activations
):
    """The smoothing divisions folded back: QAttention fused again, no per-channel Div left, and the answers
    within the unsmoothed tests' tolerance of float (and, where the exported Q/DQ graph itself is that close
    to float, of the exported graph; with the FFN output projection's input quantized per tensor the
    exported graph is 0.04 from float on this tiny random model, the CPU graph with per-row scales 0.017)."""
    float_dir, _ = tiny_exports
    export_dir = smoothed_exports[placement]
    exported = onnx.load(str(export_dir / MODEL_ONNX))
    divisions = _smoothing_divisions(exported)
    quantizing = {n.input[0] for n in exported.graph.node if n.op_type == "QuantizeLinear"}
    # per layer: one shared by Q, K and V, the FFN input (and the FFN output projection); before QuantizeLinear
    assert len(divisions) == (4 if placement == "ffn-output-float" else 6)
    assert all(d.output[0] in quantizing for d in divisions)
    model = cpu_int8.derive(
        export_dir, read_export_info(export_dir), cpu_int8.Recipe(activations=activations)
    )
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QAttention") == 2 and ops.count("MatMulIntegerToFloat") == 6
    assert "MatMul" not in ops and "Attention" not in ops and not _smoothing_divisions(model)
    feeds = _feeds(left_padding=True)
    mask = feeds["attention_mask"].astype(bool)

    def run(graph: onnx.ModelProto | str) -> np.ndarray:
        session = ort.InferenceSession(
            graph if isinstance(graph, str) else graph.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in session.get_inputs()}
        return session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0][mask]

    ours, as_exported = run(model), run(str(export_dir / MODEL_ONNX))
    reference = OrtRunner(float_dir)(feeds)["last_hidden_state"][mask]
    assert 1e-5 < _relative_l2(ours, reference) < RELATIVE_L2_TOLERANCE
    if placement == "ffn-output-float":
        assert _relative_l2(ours, as_exported) < RELATIVE_L2_TOLERANCE


def test_an_unsmoothed_exports_graph_has_nothing_to_fold(tiny_exports):
    """The scalar Div / Mul of an unsmoothed export (attention's 1/sqrt(d), GELU's) stay: its derived graph is
    the one it was before the fold existed."""
    _, qdq_dir = tiny_exports
    dequantized = cpu_int8.dequantize_qdq(cpu_int8.load_exported_model(qdq_dir))
    before, scales = dequantized.model.SerializeToString(), dict(dequantized.scales)
    assert cpu_int8.fold_smoothing_divisions(dequantized.model, dequantized.scales) == 0
    assert dequantized.model.SerializeToString() == before and dequantized.scales == scales
