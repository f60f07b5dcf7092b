"""The CPU integer graph (trt_runtime.backends.onnxruntime.cpu_integer): an integer export's GEMMs on u8 x s8
kernels where this CPU's u8 x s8 dot products add in int32. Its bodies against NumPy int64 (onnx.reference on
any CPU; ONNX Runtime where the graph applies) with operands at the ends of their ranges, what graph="auto"
picks on the CPU the tests run on, the exported graph's integers bit for bit, and `build --target cpu-integer`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import exporter
from exporter.ibert_functions import ibert_function
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import padded_batch, save_tiny
from trt_runtime.backends.base import CacheStatus
from trt_runtime.backends.onnxruntime import cpu_integer, graphs, recipes
from trt_runtime.backends.onnxruntime.recipes import CpuIntegerError, u8s8_gemms_are_exact
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.contract import ibert as ref
from trt_runtime.contract.export_dir import CPU_INTEGER_JSON, CPU_INTEGER_ONNX, read_export_info

APPLIES = u8s8_gemms_are_exact()  # measured: VNNI / AMX on x86
LEVELS = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
OPSET = 17


def _gemm_model(op_type: str, b_type: int, depth: int, constant_b: np.ndarray | None) -> onnx.ModelProto:
    """One IntMatMul / IntMatMulWide node with the CPU integer graph's body (B an input, or a constant)."""
    output_type = helper.np_dtype_to_tensor_dtype(np.dtype(ref.INTEGER_OUTPUT_TYPES[op_type]))
    inputs = [helper.make_tensor_value_info("A", TensorProto.INT32, [None, depth])]
    initializers = []
    if constant_b is None:
        inputs.append(helper.make_tensor_value_info("B", b_type, [depth, None]))
    else:
        initializers.append(onnx.numpy_helper.from_array(constant_b, "B"))
    node = helper.make_node(op_type, ["A", "B"], ["Y"], domain=ref.DOMAIN, **ref.matmul_attributes(0.1, [0.01] * 5))
    model = helper.make_model(
        helper.make_graph([node], op_type, inputs, [helper.make_tensor_value_info("Y", output_type, [None, None])],
                          initializers),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(ref.DOMAIN, ref.DOMAIN_VERSION)],
        functions=[cpu_integer.u8s8_function(ibert_function(op_type, OPSET))],
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _extreme_operands(wide: bool, rows: int, depth: int = 3072) -> tuple[np.ndarray, np.ndarray]:
    """A at both ends of its range against B at both of int8's, over a BERT-base FFN's depth: every pair of
    u8 x s8 products at 255 x -128 (a saturating int16 pair sum, vpmaddubsw's, would clip it), plus random rows
    (one row: MLAS's GEMV kernel)."""
    bound = ref.INT_MATMUL_WIDE_A_BOUND if wide else ref.INT_MATMUL_A_BOUND
    rng = np.random.default_rng(wide)
    a = rng.integers(-bound, bound, (rows, depth)).astype(np.int32)
    a[0] = bound - 1
    a[-1] = -bound if rows > 1 else a[-1]
    b = rng.integers(-128, 128, (depth, 5)).astype(np.int8)
    b[:, 0], b[:, 1] = -128, 127
    return a, b


@pytest.mark.parametrize("rows", [1, 6])
@pytest.mark.parametrize("constant_b", [True, False], ids=["weights", "activations"])
@pytest.mark.parametrize("op_type", ["IntMatMul", "IntMatMulWide"])
def test_u8s8_bodies_are_the_contracts_integers(op_type, constant_b, rows):
    a, b = _extreme_operands(op_type == "IntMatMulWide", rows)
    expected = ref.integer_op(op_type, a, b, **ref.matmul_attributes(0.1, [0.01] * b.shape[1]))
    np.testing.assert_array_equal(expected, a.astype(np.int64) @ b.astype(np.int64))  # the contract: exact
    feeds = {"A": a} if constant_b else {"A": a, "B": b.astype(np.int32)}
    model = _gemm_model(op_type, TensorProto.INT32, a.shape[1], b if constant_b else None)
    got = ReferenceEvaluator(model).run(None, feeds)[0]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected, err_msg="onnx.reference")
    if not APPLIES:
        return  # ONNX Runtime's u8 x s8 kernel here does not add in int32: the graph is not used here
    for level, value in LEVELS.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = value
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected, err_msg=f"ONNX Runtime, {level}")


@pytest.mark.parametrize("op_type", ["IntMatMul", "IntMatMulWide"])
def test_u8s8_bodies_keep_the_exporters_body_but_take_b_as_int8(op_type):
    exported = ibert_function(op_type, OPSET)
    derived = cpu_integer.u8s8_function(exported)
    gemms = [node for node in derived.node if node.op_type == "MatMulInteger"]
    assert len(gemms) == sum(node.op_type == "MatMulInteger" for node in exported.node)  # 1, or 2 (digit split)
    casts = {node.output[0]: node for node in derived.node if node.op_type == "Cast" and list(node.input) == ["B"]}
    for gemm in gemms:  # B's int8 itself, and no B zero point
        assert len(gemm.input) == 3 and gemm.input[1] in casts
        assert helper.get_attribute_value(casts[gemm.input[1]].attribute[0]) == TensorProto.INT8
    # nothing else of B is left (its uint8 form and that form's constants are gone)
    users_of_b = [node for node in derived.node if "B" in node.input]
    assert [node.op_type for node in users_of_b] == ["Cast"]
    assert len(derived.node) < len(exported.node)


def test_a_body_of_another_shape_is_refused_with_the_fix():
    exported = ibert_function("IntMatMul", OPSET)
    changed = onnx.FunctionProto()
    changed.CopyFrom(exported)
    producer = {output: node for node in changed.node for output in node.output}
    widened_b = next(node.output[0] for node in changed.node if node.op_type == "Cast" and list(node.input) == ["B"])
    add = next(node for node in changed.node if node.op_type == "Add" and node.input[0] == widened_b)
    offset = producer[add.input[1]]  # B + 64 instead of B + 128: not the body this runtime can rewrite
    offset.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(64, np.int32), "value"))
    with pytest.raises(CpuIntegerError, match="re-export the model"):
        cpu_integer.u8s8_function(changed)
    per_column = onnx.FunctionProto()  # a zero point per column of B
    per_column.CopyFrom(exported)
    gemm = next(node for node in per_column.node if node.op_type == "MatMulInteger")
    zero_point = next(node for node in per_column.node if node.output[0] == gemm.input[3])
    zero_point.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array([128, 128], np.uint8), "value"))
    with pytest.raises(CpuIntegerError, match="re-export the model"):
        cpu_integer.u8s8_function(per_column)


@pytest.fixture(scope="module")
def integer_export(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cpu-integer")
    checkpoint, _ = save_tiny(root / "checkpoint", "bert", "text-classification")
    recipe = QuantizationRecipe(mode="integer", num_samples=8, batch_size=8)
    out = exporter.export(checkpoint, root / "export", task="text-classification", recipe=recipe, log=None)
    return checkpoint, Path(out)


def _fresh(export_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def _feeds(runner: OrtRunner) -> dict[str, np.ndarray]:
    batch = padded_batch("bert", batch=3, seq=12)
    return {k: v.numpy() for k, v in batch.items() if k in runner.info.input_names}


def test_auto_picks_by_this_cpus_dot_products_and_keeps_the_exported_integers(integer_export, tmp_path):
    export_dir = _fresh(integer_export[1], tmp_path)
    runner = OrtRunner(export_dir)
    exported = OrtRunner(export_dir, graph="exported")
    if not APPLIES:
        assert runner.choice.graph == "exported" and "does not add in int32" in runner.choice.graph_reason
        with pytest.raises(CpuIntegerError, match="the exported graph .* is the exact one here"):
            OrtRunner(export_dir, graph="cpu-integer")
        return
    assert runner.choice.graph == "cpu-integer" and runner.choice.cache is CacheStatus.CREATED
    derived = onnx.load(str(runner.graph_path))
    gemms = [n for f in derived.functions if f.name in cpu_integer.GEMM_OPS for n in f.node if n.op_type == "MatMulInteger"]
    assert gemms and all(len(n.input) <= 3 for n in gemms), "B int8 without a zero point"
    assert [n.op_type for n in derived.graph.node] == [n.op_type for n in onnx.load(str(export_dir / "model.onnx")).graph.node]
    feeds = _feeds(runner)
    ours, theirs = runner(feeds), exported(feeds)
    assert set(ours) == set(theirs)
    for name in theirs:  # dequantized integers: equal, not close
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert OrtRunner(export_dir).choice.cache is CacheStatus.REUSED


def test_build_target_cpu_integer(integer_export, tmp_path, capsys):
    from trt_runtime.__main__ import main

    export_dir = _fresh(integer_export[1], tmp_path)
    code = main(["build", str(export_dir), "--target", "cpu-integer"])
    if not APPLIES:
        assert code == 2 and "does not add in int32" in capsys.readouterr().err
        assert not (export_dir / CPU_INTEGER_ONNX).exists()
        return
    assert code == 0 and f"wrote {export_dir / CPU_INTEGER_ONNX}" in capsys.readouterr().out
    record = json.loads((export_dir / CPU_INTEGER_JSON).read_text())
    assert record["kind"] == "cpu-integer" and record["made_with"]["u8s8_gemms_exact"] is True
    assert record["made_with"]["onnxruntime_version"] == ort.__version__
    runner = OrtRunner(export_dir)
    assert runner.choice.cache is CacheStatus.PREBUILT and runner.graph_path == export_dir / CPU_INTEGER_ONNX
    # a graph built where the GEMMs saturate (its record says so) is not this CPU's: derived again
    record["made_with"]["u8s8_gemms_exact"] = False
    (export_dir / CPU_INTEGER_JSON).write_text(json.dumps(record))
    again = OrtRunner(export_dir)
    assert again.choice.cache is CacheStatus.REBUILT and again.graph_path != export_dir / CPU_INTEGER_ONNX


def test_other_modes_are_refused_with_the_reason(tmp_path):
    from tests.fixtures.runtime_exports import tiny_export

    _, float_dir = tiny_export("bert", "feature-extraction")
    info = read_export_info(float_dir)
    with pytest.raises(CpuIntegerError, match="is a 'none' export; the CPU integer graph is derived from integer"):
        cpu_integer.derive(float_dir, info)
    with pytest.raises(CpuIntegerError, match="derived from integer exports"):
        OrtRunner(float_dir, graph="cpu-integer", cache=False)


def test_the_measured_kernel_agrees_with_the_cpu_flags_on_x86():
    """MLAS's dispatch as its sources have it (platform.cpp): an int32-accumulating u8 x s8 kernel (VNNI's
    vpdpbusd, AMX's tdpbusd) exactly where the CPU has one of those flags, vpmaddubsw's saturating int16 pairs
    elsewhere. The probe runs the kernels; this says they still behave as the flags predict."""
    if recipes.platform.machine().lower() not in recipes.X86_MACHINES:
        pytest.skip("the flags are x86's")
    assert u8s8_gemms_are_exact() == recipes.int8_dot_products_are_exact()


def test_where_the_gemms_saturate_auto_keeps_the_exported_graph(integer_export, tmp_path, monkeypatch):
    """The AVX2 branch on any CPU: with the probe saying "not exact", auto runs model.onnx and says why, the
    explicit graph is refused, and a graph built here before (its record) is not used."""
    export_dir = _fresh(integer_export[1], tmp_path)
    if APPLIES:
        assert OrtRunner(export_dir, graph="cpu-integer").choice.cache is CacheStatus.CREATED
    for module in (recipes, graphs):
        monkeypatch.setattr(module, "u8s8_gemms_are_exact", lambda: False)
    runner = OrtRunner(export_dir)
    assert runner.choice.graph == "exported" and "does not add in int32" in runner.choice.graph_reason
    with pytest.raises(CpuIntegerError, match="the exported graph .* is the exact one here"):
        OrtRunner(export_dir, graph="cpu-integer")
