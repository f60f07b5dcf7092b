"""integer export: the `ibert` function bodies against the NumPy int64 reference, and I-BERT models end to end.

The function bodies must match `trt_runtime.contract.ibert.integer_op` exactly (bitwise), in ONNX Runtime
with and without its graph optimizations and in onnx.reference. Whole models must compute the PyTorch
integer model's integers bit for bit: the exporter's own validation (exporter.validation.compare_integer)
checks every integer value by name; these tests add onnx.reference and real text.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import exporter
import models
from exporter.__main__ import main
from exporter.errors import ExportValidationError
from exporter.ibert_functions import ibert_function
from exporter.validation import TOLERANCES, compare_integer, integer_validation_shapes
from models.ibert import DEFAULT_WIDE_ACTIVATIONS
from models.quantization.integer.modules import uncalibrated
from models.quantization.integer.ops import exp_values
from tests.fixtures.tiny_models import CASES, padded_batch, save_tiny
from trt_runtime.contract import ibert as ref
from trt_runtime.contract.export_dir import read_export_info

# --- the function bodies -----------------------------------------------------------------------------

ONNX_TYPES = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int32): TensorProto.INT32,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.float32): TensorProto.FLOAT}
LEVELS = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def single_op_model(op_type: str, feeds: dict[str, np.ndarray], attributes: dict, opset: int) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, ONNX_TYPES[v.dtype], [None] * v.ndim) for name, v in feeds.items()]
    rank = max(v.ndim for v in feeds.values())
    output = helper.make_tensor_value_info("Y", ONNX_TYPES[np.dtype(ref.INTEGER_OUTPUT_TYPES[op_type])], [None] * rank)
    node = helper.make_node(op_type, list(feeds), ["Y"], domain="ibert", **attributes)
    model = helper.make_model(
        helper.make_graph([node], op_type, inputs, [output]),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ibert", 1)],
        functions=[ibert_function(op_type, opset)],
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_exact(op_type: str, feeds: dict[str, np.ndarray], attributes: dict, opset: int) -> np.ndarray:
    expected = ref.integer_op(op_type, *feeds.values(), **attributes)
    model = single_op_model(op_type, feeds, attributes, opset)
    for level, value in LEVELS.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = value
        got = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert got.dtype == expected.dtype, level
        np.testing.assert_array_equal(got, expected, err_msg=f"ONNX Runtime, optimizations {level}")
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, feeds)[0], expected, err_msg="onnx.reference")
    return expected


def with_constants(op_type: str, attributes: dict, weight=None, bias=None) -> dict:
    return {**attributes, **ref.integer_constant_attributes(op_type, attributes, weight, bias)}


OPSETS = [17, 20]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("scale", [3e-4, 2e-3, 0.01, 0.1])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int_gelu_body_is_the_reference(scale, per_channel, opset):
    rng = np.random.default_rng(int(scale * 1e5) + opset)
    channels = 24
    scales = (scale * rng.uniform(0.5, 2.0, channels if per_channel else 1)).astype(np.float32)
    x = rng.integers(-int(8 / scale), int(8 / scale), (3, 5, channels)).astype(np.int32)
    x[0, 0, :4] = [0, 1, 2**31 - 1, -(2**31)]  # zero, and saturation of the erf range
    assert_exact("IntGELU", {"X": x}, with_constants("IntGELU", ref.gelu_attributes(scales)), opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("scale", "output_bits"), [(0.08, 8), (0.02, 8), (0.004, 8), (0.02, 14), (0.05, 16)])
def test_int_softmax_body_is_the_reference(scale, output_bits, opset):
    rng = np.random.default_rng(int(scale * 1e4) + opset)
    x = rng.integers(-int(12 / scale), int(12 / scale), (2, 3, 6, 7)).astype(np.int32)
    x[0, 0, 0] = ref.INT32_MIN  # a masked row (the attention mask's value); x[0, 0, 1, :2] masked keys
    x[0, 0, 1, :2] = ref.INT32_MIN
    # exp_scale as the model's 16-bit QuantAct sets it: from the largest exp integer
    exp_scale = float(np.float32(exp_values(torch.from_numpy(x), scale).max().item() / (2**15 - 1)))
    attributes = with_constants("IntSoftmax", ref.softmax_attributes(scale, exp_scale, output_bits))
    expected = assert_exact("IntSoftmax", {"X": x}, attributes, opset)
    assert expected.max() > 25  # a real softmax, not all zeros


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("bits", "shift"), [(16, 0), (22, 3), (22, 8), (12, 1)])
def test_int_layernorm_body_is_the_reference(bits, shift, opset):
    rng = np.random.default_rng(shift + opset + bits)
    channels = 32
    weight = rng.uniform(0.3, 2.0, channels).astype(np.float32) * rng.choice([-1, 1], channels).astype(np.float32)
    bias = rng.normal(0.0, 0.2, channels).astype(np.float32)
    x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (2, 5, channels)).astype(np.int32)
    x[0, 0] = 7  # a constant row: variance 0
    x[0, 1] = 1000 + (np.arange(channels) == 3)  # deviations that shift to 0
    attributes = with_constants("IntLayerNorm", ref.layernorm_attributes(1e-4, shift, weight), weight, bias)
    assert_exact("IntLayerNorm", {"X": x, "weight": weight, "bias": bias}, attributes, opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("constant_b", [True, False])
def test_int_matmul_bodies_are_exact(wide, constant_b, opset):
    """u8 x u8 MatMulIntegers with zero points, A at its extremes: exact on every x86 CPU (see _int_matmul)."""
    rng = np.random.default_rng(opset + wide)
    op = "IntMatMulWide" if wide else "IntMatMul"
    bound = ref.INT_MATMUL_WIDE_A_BOUND if wide else ref.INT_MATMUL_A_BOUND
    a = rng.integers(-bound, bound, (2, 3, 7, 256)).astype(np.int32)
    a[0, 0, 0], a[0, 0, 1] = bound - 1, -bound  # the extremes, against extreme weights
    b = rng.integers(-128, 128, (256, 9)).astype(np.int8)
    b[:, 0], b[:, 1] = 127, -128
    feeds = {"A": a, "B": b if constant_b else b.astype(np.int32)}
    assert_exact(op, feeds, ref.matmul_attributes(0.1, [0.01] * 9), opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", ["per-channel", "identity", "ties", "negative-multipliers", "snap", "wide"])
def test_requantize_bodies_are_the_reference(case, opset):
    rng = np.random.default_rng(opset)
    channels = 9
    zero = np.zeros((), np.int32)
    identity = None
    op = "Requantize"
    if case == "per-channel":
        x = rng.integers(-(2**31), 2**31, (4, channels)).astype(np.int32)
        attributes = ref.requantize_attributes(rng.uniform(1e-6, 1e-4, channels).astype(np.float32), 3.0, 16)
    elif case == "identity":
        x = rng.integers(-(2**20), 2**20, (4, channels)).astype(np.int32)
        identity = rng.integers(-(2**15), 2**15, (4, channels)).astype(np.int32)
        attributes = ref.requantize_attributes(rng.uniform(1e-6, 5e-6, channels).astype(np.float32), 1e-5, 22, 2e-6)
    elif case == "ties":  # ratio 1/2: every odd x is a tie
        x = np.arange(-20, 20, dtype=np.int32).reshape(4, 10)
        attributes = ref.requantize_attributes(1.0, 2.0, 8)
    elif case == "negative-multipliers":  # a LayerNorm output: int64, negative channel scales where weights are
        x = rng.integers(-(3 * 2**30), 3 * 2**30, (4, channels), dtype=np.int64)
        attributes = ref.requantize_attributes(
            (rng.uniform(1e-9, 1e-8, channels) * rng.choice([-1, 1], channels)).astype(np.float32), 0.2, 8
        )
    elif case == "snap":  # per-channel output grid, int32 range
        x = rng.integers(-(2**28), 2**28, (4, channels)).astype(np.int32)
        scales = rng.uniform(1e-5, 1e-4, channels).astype(np.float32)
        attributes = ref.requantize_attributes(scales, (scales * np.float32(1.07)).astype(np.float32), 32)
    else:  # an IntGELU output
        op = "RequantizeWide"
        x = rng.integers(-(2**50), 2**50, (4, channels), dtype=np.int64)
        attributes = ref.requantize_attributes(rng.uniform(1e-9, 1e-8, channels).astype(np.float32), 600.0, 16)
    expected = assert_exact(op, {"X": x, "Identity": zero if identity is None else identity}, attributes, opset)
    assert np.mean(np.abs(expected) < 2 ** (attributes["output_bits"] - 1) - 1) > 0.5  # mostly not saturated


def run_body(op_type: str, feeds: dict[str, np.ndarray], attributes: dict, opset: int) -> dict[str, np.ndarray]:
    """One op's body on `feeds` in ONNX Runtime (optimizations off and all) and onnx.reference, by name."""
    model = single_op_model(op_type, feeds, attributes, opset)
    results = {"onnx.reference": ReferenceEvaluator(model).run(None, feeds)[0]}
    for level, value in LEVELS.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = value
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results[f"ONNX Runtime, optimizations {level}"] = session.run(None, feeds)[0]
    return results


def requantize_edges(wide: bool) -> tuple[np.ndarray, list[int], list[int]]:
    """X at the op's bound, 0 and ties, against multipliers at +-2**31, +-2**30, odd and 0 and the shifts at
    the ends of their range (1 or 30, 31, 61): rows of x, per-channel (multiplier, shift)."""
    bound = ref.REQUANTIZE_WIDE_INPUT_BOUND if wide else ref.REQUANTIZE_INPUT_BOUND
    shifts = [30, 31, 45, 61] if wide else [1, 2, 30, 31, 61]
    multipliers = [2**31, -(2**31), 2**30, -(2**30) - 1, 2**31 - 1, 1_234_567_891, 0]
    channels = [(m, e) for m in multipliers for e in shifts]
    # the largest |x| whose rescaled value stays in the contract's int64 (|x m / 2**e| < 2**62: rescale checks it)
    limits = [min(bound - 1, 2 ** (61 + e) // max(abs(m), 1)) for m, e in channels]
    rows = [limits, [-v for v in limits], [0] * len(channels), [1] * len(channels), [-1] * len(channels)]
    for sign in (1, -1):  # ties: x m = (2t + 1) 2**(e-1) for the odd t and the even t next to it
        for t in (0, 1, 2, 3):
            row = []
            for (m, e), limit in zip(channels, limits):
                # x = (2t + 1) 2**(e-1) / m when m is a power of two, else x = 0 (no tie for that channel)
                magnitude = abs(m)
                tie = (2 * t + 1) * 2 ** (e - 1)
                fits = magnitude and tie % magnitude == 0 and tie // magnitude <= limit
                row.append(sign * tie // magnitude if fits else 0)
            rows.append(row)
    rng = np.random.default_rng(7)
    rows += (rng.uniform(-1, 1, (6, len(channels))) * np.asarray(limits, np.float64)).astype(np.int64).tolist()
    return np.asarray(rows, np.int64), [m for m, _ in channels], [e for _, e in channels]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("wide", [False, True])
def test_requantize_bodies_at_the_bounds_of_their_integers(wide, opset):
    """The uint64 rescales against the exact (Python integer) rescale, x at the bound the static checks allow,
    every multiplier and shift the contract allows at its ends, ties of both signs, with and without identity."""
    x, multipliers, shifts = requantize_edges(wide)
    op = "RequantizeWide" if wide else "Requantize"
    identity_bound = ref.REQUANTIZE_INPUT_BOUND
    identity = np.resize(np.array([identity_bound - 1, -(identity_bound - 1), 0, 3, -3, 2**29 + 1], np.int64), x.shape)
    for identity_multiplier, identity_shift, feed in [(0, 31, np.zeros((), np.int32)), (-(2**31), 61, identity),
                                                      (2**30 + 7, 1, identity), (2**31, 30, identity)]:
        for bits in (8, 32):
            attributes = {
                "input_scale": [1.0], "identity_scale": 0.0, "output_scale": [1.0], "output_bits": bits,
                "multiplier": multipliers, "shift": shifts, "identity_multiplier": identity_multiplier,
                "identity_shift": identity_shift,
            }
            total = ref.rescale(x, np.asarray(multipliers), np.asarray(shifts)).astype(object)
            if feed.ndim:
                total = total + ref.rescale(feed, identity_multiplier, identity_shift).astype(object)
            low, high = ref.signed_range(bits)
            expected = np.clip(total, low, high).astype(np.int32)
            for where, got in run_body(op, {"X": x, "Identity": feed}, attributes, opset).items():
                np.testing.assert_array_equal(got, expected, err_msg=f"{op} {where}, identity ({identity_multiplier}, "
                                                                     f"{identity_shift}), {bits} bits")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize(("scale", "exp_factor"), [(1e-6, 1.0), (3e-6, 1.0), (0.5, 1.0), (0.02, 1e-3), (0.02, 40.0)])
def test_int_softmax_body_at_the_bounds_of_its_integers(scale, exp_factor, opset):
    """IntSoftmax where its integers are largest: the finest input scale the constants allow (c_int ~ 2**41, the
    exponent E above 30), a coarse one (q reaching its clamp at 30), an exp_scale far off (all exp16 saturated
    at 2**15 - 1, or mostly 0), rows spanning the whole int32 range."""
    exp_scale = float(np.float32(ref.natural_exp_scale(scale) * exp_factor))
    attributes = with_constants("IntSoftmax", ref.softmax_attributes(scale, exp_scale, 8))
    rng = np.random.default_rng(3)
    x0 = -attributes["x0_int"]
    x = rng.integers(-40 * x0, 1, (3, 4, 64)).astype(np.int64)
    x[0, 0] = np.linspace(ref.INT32_MIN, ref.INT32_MAX, 64).astype(np.int64)  # the whole int32 range in one row
    x[0, 1] = ref.INT32_MAX
    x[0, 2, ::2] = ref.INT32_MIN
    x[1] += rng.integers(ref.INT32_MIN + 40 * x0, ref.INT32_MAX, (4, 1))  # rows far from 0, either sign
    x[2, :, :31] = -np.arange(31) * x0  # one exp per q in 0..30 (r = 0) and their neighbours below
    x[2, :, 31:62] = -np.arange(31) * x0 - 1
    expected = ref.integer_op("IntSoftmax", x, **attributes)
    for where, got in run_body("IntSoftmax", {"X": x.astype(np.int32)}, attributes, opset).items():
        np.testing.assert_array_equal(got, expected, err_msg=where)


def test_function_defaults_and_contract():
    softmax = ibert_function("IntSoftmax", 17)
    assert (softmax.domain, softmax.name) == ("ibert", "IntSoftmax")
    assert {a.name: a.i for a in softmax.attribute_proto} == {"axis": -1, "output_bits": 8}
    assert set(softmax.attribute) == {"input_scale", "exp_scale", "output_scale", *ref.INTEGER_CONSTANT_ATTRIBUTES["IntSoftmax"]}
    assert list(ibert_function("IntLayerNorm", 17).input) == ["X", "weight", "bias"]
    assert list(ibert_function("Requantize", 17).input) == ["X", "Identity"]
    for op in ref.INTEGER_OP_TYPES:
        body = ibert_function(op, 17).node
        assert {n.domain for n in body} == {""}  # standard ops only
        if op in ("IntGELU", "IntSoftmax", "IntLayerNorm"):  # integers only: no float op in the data path
            assert not {n.op_type for n in body} & {"Floor", "Round", "Sqrt", "Log", "Reciprocal", "Mod"}


# --- whole models ------------------------------------------------------------------------------------

INTEGER_CASES = [case for case in CASES if case[0] != "squeezebert"]
FAST = {("ibert", "feature-extraction"), ("roberta", "text-classification"), ("bert", "multiple-choice"),
        ("ibert", "fill-mask"), ("bert", "text-generation")}


def rebuilt_integer_module(directory, task, out):
    """The PyTorch integer module with the export's calibration.json (its force_dequant and wide_activations)."""
    model = models.load(directory, task=task, quantization="integer", calibration=out / "calibration.json")
    assert not uncalibrated(model)
    return model


@pytest.mark.parametrize(
    ("model_type", "task"),
    [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow, id="-".join(c)) for c in INTEGER_CASES],
)
def test_integer_export_computes_the_integer_module_bit_for_bit(tmp_path, model_type, task):
    """The export's own validation is exact (every integer value, ONNX Runtime with and without optimizations,
    sequences 1 to the maximum); onnx.reference computes the same integers."""
    directory, _ = save_tiny(tmp_path / "ckpt", model_type, task)
    lines: list[str] = []
    out = exporter.export(
        directory, tmp_path / "out", task=task, quantization="integer", num_calibration_samples=8,
        calibration_batch_size=8, log=lines.append,
    )
    checked = [line for line in lines if "integer tensors bit for bit equal" in line]
    info = read_export_info(out)
    assert len(checked) == len(integer_validation_shapes(_signature(directory, task), info.max_sequence_length)) == 8
    assert info.quantization == "integer" and info.force_dequant == "none"
    assert {"ibert::IntGELU", "ibert::IntLayerNorm", "ibert::IntSoftmax", "ibert::IntMatMul"} <= set(info.custom_ops)
    # onnx.reference, with the module's last integers as an output: equal
    integer = rebuilt_integer_module(directory, task, out)
    model = onnx.load(str(out / "model.onnx"))
    last = f"{_prefix(integer)}.encoder.layer.1.output.output_activation"
    model.graph.output.append(helper.make_empty_tensor_value_info(last))
    feeds = padded_batch(model_type, batch=2, seq=7, choices=3 if task == "multiple-choice" else None)
    feeds = {name: feeds[name] for name in info.input_names}
    from exporter.validation import captured_integers

    with torch.no_grad(), captured_integers(integer) as capture:
        integer(**feeds)
    got = ReferenceEvaluator(model).run([last], {k: v.numpy() for k, v in feeds.items()})[0]
    np.testing.assert_array_equal(got, capture.values[last])


def _signature(directory, task):
    from exporter.signature import signature_of

    return signature_of(models.load(directory, task=task, quantization="none"))


def _prefix(model) -> str:
    return next(name for name, _ in model.named_children())


def test_integer_graph_carries_its_functions_and_module_names(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "ibert", "text-classification")
    out = exporter.export(directory, tmp_path / "out", task="text-classification", quantization="integer",
                          num_calibration_samples=8, calibration_batch_size=8, opset=19, validate=False, log=None)
    model = onnx.load(str(out / "model.onnx"))
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 19), ("ibert", 1)}
    used = sorted({n.op_type for n in model.graph.node if n.domain == "ibert"})
    assert sorted(f.name for f in model.functions) == used
    assert {"IntGELU", "IntSoftmax", "IntLayerNorm", "IntMatMul", "IntMatMulWide", "Requantize", "RequantizeWide"} == set(used)
    # no float arithmetic on integers: Q/DQ are gone, every MatMul left is a float head's
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    values = {v for n in model.graph.node for v in n.output}
    for name in ("ibert.embeddings.word_embeddings", "ibert.embeddings.embeddings_act1_1",
                 "ibert.encoder.layer.0.attention.self.query", "ibert.encoder.layer.1.attention.self.softmax",
                 "ibert.encoder.layer.1.output.output_activation"):
        assert name in values, name
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers["ibert.encoder.layer.0.attention.self.query_activation"].op_type == "Requantize"
    assert producers["ibert.encoder.layer.0.intermediate.output_activation"].op_type == "RequantizeWide"
    query = producers["ibert.encoder.layer.1.attention.self.query"]  # a checkpoint calibrated here: its own grids
    assert query.op_type == "Add" and producers[query.input[0]].op_type == "IntMatMulWide"  # 16-bit hidden states


def test_i_bert_checkpoints_keep_their_embeddings_grid(tmp_path):
    """(sic) I-BERT gives every layer the embeddings' scale: layer 1 of a quant_mode checkpoint snaps its Q
    accumulator onto that grid before the bias, as FixedPointMul rounds there."""
    from tests.models.quantization.integer.test_model import hf_calibrated

    hf_calibrated(tmp_path / "ckpt", "feature-extraction")
    out = exporter.export(tmp_path / "ckpt", tmp_path / "out", quantization="integer", num_calibration_samples=8,
                          calibration_batch_size=8, log=None)  # validation included
    model = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    query = producers["ibert.encoder.layer.1.attention.self.query"]
    assert query.op_type == "Add" and producers[query.input[0]].op_type == "Requantize"
    assert producers[producers[query.input[0]].input[0]].op_type == "IntMatMul"


def test_validation_names_the_first_module_whose_integers_differ(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    out = exporter.export(directory, tmp_path / "out", quantization="integer", num_calibration_samples=8,
                          calibration_batch_size=8, validate=False, log=None)
    integer = rebuilt_integer_module(directory, "feature-extraction", out)
    model = onnx.load(str(out / "model.onnx"))
    target = "bert.encoder.layer.1.attention.self.key_activation"
    node = next(n for n in model.graph.node if target in n.output)
    multiplier = next(a for a in node.attribute if a.name == "multiplier")
    multiplier.ints[0] //= 2  # an export bug: one channel's dyadic multiplier halved
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    from exporter.signature import signature_of

    signature = signature_of(integer)
    feeds = {k: v.numpy() for k, v in padded_batch("bert", batch=3, seq=29).items() if k in signature.input_names}
    from exporter.sample_inputs import Shape

    with pytest.raises(ExportValidationError, match=f"the first module whose integers differ is {target}: "):
        compare_integer(broken, integer, signature, [(Shape(3, 29), feeds)], log=lambda _: None)


def test_roberta_masked_lm_with_146_positions_exports_without_no_validate(tmp_path):
    """Issue 16: a RoBERTa-architecture masked LM (position table 146, not 514), quant_mode false, refused by the
    statistical rule before; exact validation passes it."""
    directory, _ = save_tiny(tmp_path / "ckpt", "roberta", "fill-mask", max_position_embeddings=146)
    out = tmp_path / "out"
    argv = ["--model", str(directory), "--task", "fill-mask", "--output", str(out), "--quantization", "integer",
            "--quiet", "--num-calibration-samples", "8", "--calibration-batch-size", "8"]
    assert main(argv) == 0
    info = read_export_info(out)
    assert info.max_sequence_length == 144 and info.quantization == "integer"


def test_overflowing_integer_arithmetic_is_refused_at_export(tmp_path, capsys):
    """A checkpoint whose FFN weights are tiny makes i-GELU's constants (~1 / scale**2) leave int64: refused
    with the layer and the fix, never computed wrongly."""
    directory, reference = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    with torch.no_grad():
        reference.encoder.layer[1].intermediate.dense.weight.mul_(1e-7)
    reference.save_pretrained(directory)
    argv = ["--model", str(directory), "--output", str(tmp_path / "out"), "--quantization", "integer", "--quiet",
            "--num-calibration-samples", "8", "--calibration-batch-size", "8"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "encoder.layer.1.intermediate.intermediate_act_fn" in error
    assert "int64" in error and "refused rather than computed wrongly" in error and "Fix:" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("force_dequant", "ops"), [("gelu", {"IntLayerNorm", "IntSoftmax"}), ("nonlinear", set())])
def test_force_dequant_keeps_those_ops_in_float(tmp_path, force_dequant, ops):
    directory, _ = save_tiny(tmp_path / "ckpt", "roberta", "feature-extraction")
    out = exporter.export(directory, tmp_path / "out", quantization="integer", force_dequant=force_dequant,
                          num_calibration_samples=8, calibration_batch_size=8, log=None)  # validation included
    info = read_export_info(out)
    assert info.force_dequant == force_dequant
    nonlinear = {op.removeprefix("ibert::") for op in info.custom_ops} & {"IntGELU", "IntSoftmax", "IntLayerNorm"}
    assert nonlinear == ops
    model = onnx.load(str(out / "model.onnx"))
    assert {n.op_type for n in model.graph.node if n.domain == "ibert"} >= ops | {"IntMatMul", "Requantize"}


# --- wide (16-bit) activation sites ------------------------------------------------------------------

LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")
#: the linears each site feeds (their input is a 16-bit activation: two 8-bit GEMMs, IntMatMulWide)
FED_BY = {"hidden-states": LINEARS[:3], "ffn-input": LINEARS[4:5], "ffn-output-input": LINEARS[5:], "softmax-output": ()}


def linear_gemms(model: onnx.ModelProto) -> dict[str, str]:
    """{"layer.N.<linear>": the op type of its GEMM}."""
    found = {}
    for node in model.graph.node:
        if node.op_type in ("IntMatMul", "IntMatMulWide"):
            scope = node.name.rpartition("/")[0].strip("/").replace("/", ".")
            for linear in LINEARS:
                if scope.endswith(linear):
                    found[scope.split("encoder.")[-1]] = node.op_type
    return found


@pytest.mark.parametrize(
    "sites", [None, ["none"], ["ffn-output-input"], ["ffn-input"]], ids=["default", "none", "ffn-output-input", "ffn-input"]
)
def test_wide_activations_through_the_command_line(tmp_path, sites, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    out = tmp_path / "out"
    argv = ["--model", str(directory), "--output", str(out), "--quantization", "integer", "--quiet",
            "--num-calibration-samples", "8", "--calibration-batch-size", "8"]
    for site in sites or []:
        argv += ["--wide-activations", site]
    assert main(argv) == 0, capsys.readouterr().err  # validation included
    wide = list(DEFAULT_WIDE_ACTIVATIONS) if sites is None else [s for s in sites if s != "none"]
    assert read_export_info(out).calibration["wide_activations"] == wide
    calibration = json.loads((out / "calibration.json").read_text())
    assert (calibration["mode"], calibration["method"], calibration["wide_activations"]) == ("integer", "ibert-minmax", wide)

    gemms = linear_gemms(onnx.load(str(out / "model.onnx")))
    assert len(gemms) == 2 * len(LINEARS)
    widened = {linear for site in wide for linear in FED_BY[site]}
    for name, op_type in gemms.items():
        assert op_type == ("IntMatMulWide" if name.split(".", 2)[2] in widened else "IntMatMul"), name


def test_wide_activations_errors_on_the_command_line(tmp_path, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    base = ["--model", str(directory), "--output", str(tmp_path / "out")]
    assert main([*base, "--quantization", "qdq", "--wide-activations", "hidden-states"]) == 2
    assert "--wide-activations applies to --quantization integer only" in capsys.readouterr().err
    assert main([*base, "--quantization", "integer", "--wide-activations", "none", "--wide-activations",
                 "hidden-states"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_qdq_tolerance_accepts_flip_cascades_but_not_extra_error():
    """qdq validation: beyond 0.75 x the quantization error, ONNX Runtime must be as close to float as torch."""
    rng = np.random.default_rng(0)
    floats = rng.normal(0, 1, (4, 16, 32)).astype(np.float32)
    torch_out = floats + rng.normal(0, 0.2, floats.shape).astype(np.float32)  # quantization error ~0.2
    # another sample of the same quantization noise (what a cascade of one-step flips gives): 1.4 x q from torch
    cascade = floats + rng.normal(0, 0.2, floats.shape).astype(np.float32)
    tolerance = TOLERANCES["qdq"]
    assert tolerance.violation(cascade, torch_out, floats) is None
    without_float_rule = dataclasses.replace(tolerance, float_error_ratio=None)
    assert "relative L2 error" in without_float_rule.violation(cascade, torch_out, floats)  # the first rule alone refuses
    # an export bug adds its own error on top: 1.6 x further from float than torch
    broken = cascade + rng.normal(0, 0.25, floats.shape).astype(np.float32)
    assert "error to float is 1.6" in tolerance.violation(broken, torch_out, floats)
    # and one that lost its quantization (the float model itself) is as wrong
    assert "error to float is 0 x" in tolerance.violation(floats, torch_out, floats)
    assert "integer" not in TOLERANCES  # integer exports are validated exactly


@pytest.mark.slow
def test_minilm_on_real_sentences_is_bit_for_bit_everywhere(minilm_dir, sentences, tmp_path):
    """all-MiniLM-L6-v2 on real text: PyTorch integer == ONNX Runtime (optimizations off and on) ==
    onnx.reference, every sentence, bit for bit (the last hidden state is dequantized integers)."""
    from transformers import AutoTokenizer

    out = exporter.export(minilm_dir, tmp_path / "out", task="feature-extraction", quantization="integer",
                          num_calibration_samples=64, validate=False, log=None)
    integer = rebuilt_integer_module(minilm_dir, "feature-extraction", out)
    batch = AutoTokenizer.from_pretrained(minilm_dir)(sentences, padding=True, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in batch.items()}
    with torch.no_grad():
        expected = integer(**{k: torch.from_numpy(v) for k, v in feeds.items()})["last_hidden_state"].numpy()
    for level, value in LEVELS.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = value
        session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(["last_hidden_state"], feeds)[0], expected, err_msg=level)
    reference = ReferenceEvaluator(str(out / "model.onnx")).run(["last_hidden_state"], feeds)[0]
    np.testing.assert_array_equal(reference, expected, err_msg="onnx.reference")
    # the CPU integer graph (GEMMs on u8 x s8 kernels), where this CPU's dot products make it apply
    from trt_runtime.backends.onnxruntime import cpu_integer
    from trt_runtime.backends.onnxruntime.recipes import u8s8_gemms_are_exact

    if u8s8_gemms_are_exact():
        derived = cpu_integer.derive(out, read_export_info(out)).SerializeToString()
        session = ort.InferenceSession(derived, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(["last_hidden_state"], feeds)[0], expected, err_msg="cpu-integer")
