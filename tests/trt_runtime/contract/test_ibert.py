"""The NumPy references of I-BERT's integer ops: exact integer helpers, the paper's error bounds, and
bit-for-bit agreement with Hugging Face's float32 emulation wherever that emulation is itself exact."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax as float_softmax
from transformers.models.ibert.quant_modules import IntGELU, IntLayerNorm, IntSoftmax

from trt_runtime.contract import ibert as ref

RNG = np.random.default_rng(0)


def float_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def on_grid(values: np.ndarray, scale) -> np.ndarray:
    """float32 values that are exactly integer x scale (what the ops take)."""
    return ref.dequantize_output(np.round(np.asarray(values) / scale).astype(np.int64), scale)


# -- integer helpers -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**62 - 1))
def test_isqrt_is_floor_sqrt(n):
    assert int(ref.isqrt(np.array([n]))[0]) == math.isqrt(n)


def test_isqrt_edges_and_unrolled_iteration_bound():
    bits = np.arange(0, 62)
    roots = np.concatenate([np.array([0, 1, 2, 3]), (np.int64(1) << (bits // 2)) + 3, RNG.integers(1, 2**31, 2000)])
    n = np.concatenate([roots * roots, roots * roots - 1, roots * roots + 1, RNG.integers(0, 2**62, 5000)])
    n = n[(n >= 0) & (n < 2**62)]
    expected = np.array([math.isqrt(int(v)) for v in n])
    assert np.array_equal(ref.isqrt(n), expected)
    # an implementation that unrolls ISQRT_ITERATIONS Newton steps (ONNX, Triton) gets the same answer
    x = np.left_shift(np.int64(1), (ref.bit_length(n) + 1) // 2)
    for _ in range(ref.ISQRT_ITERATIONS):
        x = np.minimum(x, (x + n // np.maximum(x, 1)) // 2)
    assert np.array_equal(x, expected)


def test_bit_length():
    n = np.concatenate([np.arange(0, 70), RNG.integers(0, 2**62, 1000)])
    assert ref.bit_length(n).tolist() == [int(v).bit_length() for v in n]


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**40), 2**40), st.integers(1, 2**20))
def test_round_div_half_even_is_exact(numerator, denominator):
    expected = round(Fraction(numerator, denominator))  # Python rounds half to even
    assert int(ref.round_div_half_even(np.array([numerator]), denominator)[0]) == expected


def test_round_div_half_even_ties():
    assert ref.round_div_half_even(np.array([5, 7, -5, -7, 3]), 2).tolist() == [2, 4, -2, -4, 2]


def test_quantize_input_rounds_half_to_even_and_clips_masked_scores():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1e30, -np.finfo(np.float32).max, 1e30], np.float32)
    assert ref.quantize_input(x, 1.0).tolist() == [0, 2, 2, 0, -(2**31), -(2**31), 2**31 - 1]


# -- error bounds of the paper (Kim et al., I-BERT, Table 1 / section 3) ----------------------------


@pytest.mark.parametrize("scale", [1e-4, 1e-5])
def test_i_gelu_error_bounds(scale):
    """i-GELU on [-4, 4]: L-inf 1.8e-2 and L2 (RMS) 8.2e-3 in the paper (the polynomial's own L-inf is 0.01815)."""
    x = np.linspace(-4, 4, 20001)
    y = ref.ibert_op("IntGELU", x.astype(np.float32), **ref.gelu_attributes(scale))
    error = y - float_gelu(x)
    print(f"i-GELU scale {scale}: L-inf {np.abs(error).max():.5f}, RMS {np.sqrt(np.mean(error**2)):.5f}")
    assert np.abs(error).max() <= 0.0185
    assert np.sqrt(np.mean(error**2)) <= 0.0083


@pytest.mark.parametrize("scale", [2e-3, 3e-4, 3e-5])
def test_i_softmax_error_bound(scale):
    """8-bit probabilities within about one output step (1/256) of float softmax."""
    x = on_grid(RNG.normal(0, 3, (256, 48)), scale)
    attrs = ref.softmax_attributes(scale, ref.natural_exp_scale(scale))
    y = ref.ibert_op("IntSoftmax", x, **attrs)
    error = np.abs(y - float_softmax(x.astype(np.float64), axis=-1))
    print(f"i-softmax scale {scale}: L-inf {error.max() * 256:.3f}/256, mean {error.mean() * 256:.3f}/256")
    assert error.max() <= 1.5 / 256
    assert error.mean() <= 0.3 / 256
    assert np.all(y >= 0)


def test_i_exp_error_bound():
    """exp(x) = 2^-q exp(r) with the second-order polynomial on (-ln 2, 0]: relative error below 0.5 %."""
    scale = 1e-4
    consts = ref.exp_constants(scale)
    x = np.linspace(-8, 0, 5001)
    z, q = ref.int_exp(np.round(x / scale).astype(np.int64), consts)
    approx = z.astype(np.float64) * 2.0 ** -q.astype(np.float64) * ref.EXP_A * scale**2
    exact = np.exp(np.round(x / scale) * scale)
    assert np.max(np.abs(approx / exact - 1)) < 5e-3


@pytest.mark.parametrize("shift", [0, 3])
def test_int_layernorm_error_bound(shift):
    channels = 64
    weight = (RNG.normal(1, 0.3, channels)).astype(np.float32)
    bias = (RNG.normal(0, 0.2, channels)).astype(np.float32)
    scale = 3e-6
    x = on_grid(RNG.normal(0, 1, (32, channels)) * RNG.uniform(0.5, 3, (32, 1)), scale)
    attrs = ref.layernorm_attributes(scale, shift, weight)
    y = ref.ibert_op("IntLayerNorm", x, weight, bias, **attrs)
    xf = x.astype(np.float64)
    centered = xf - xf.mean(-1, keepdims=True)
    expected = centered / np.sqrt((centered**2).mean(-1, keepdims=True)) * weight + bias
    error = np.abs(y - expected)
    # I-BERT's factor = floor(2**31 / std) keeps about 10 bits when std_int ~ 2**19 * sqrt(C), as here
    # (x_int up to ~2**21): |error| <= |normalized| * |weight| / factor ~ 1e-2
    assert error.max() <= 2e-2
    assert error.mean() <= 1.5e-3


# -- agreement with Hugging Face where its float32 emulation is exact ------------------------------
# Hugging Face keeps the integers in float32 and does not round x / scale; with power-of-two scales
# x / scale is exact, and below 2**24 so is its arithmetic: there our integer reference and its
# `quant_modules` must agree bit for bit (constants included).


def test_gelu_matches_hugging_face_bitwise_per_channel():
    channels = 48
    scale = (2.0 ** -RNG.integers(5, 11, channels)).astype(np.float32)
    x = on_grid(RNG.normal(0, 2, (16, channels)), scale)
    expected, expected_scale = IntGELU(quant_mode=True)(torch.from_numpy(x), torch.from_numpy(scale))
    attrs = ref.gelu_attributes(scale)
    assert np.array_equal(np.asarray(attrs["output_scale"], np.float32), -expected_scale.numpy())
    assert np.array_equal(ref.ibert_op("IntGELU", x, **attrs), expected.numpy())


def test_gelu_constants_match_hugging_face_for_any_scale():
    """The output scale (which carries every float32 constant expression) for arbitrary scales."""
    scale = (10 ** RNG.uniform(-6, -1, 4096)).astype(np.float32)
    _, expected_scale = IntGELU(quant_mode=True)(torch.zeros(4096), torch.from_numpy(scale))
    assert np.array_equal(ref.gelu_constants(scale).output_scale, -expected_scale.numpy())


@pytest.mark.parametrize("scale", [2.0**-4, 2.0**-6, 2.0**-7])
def test_softmax_matches_hugging_face_bitwise(scale):
    x = on_grid(RNG.normal(0, 2, (4, 8, 24)), scale)
    x[0, :, 20:] += np.finfo(np.float32).min  # masked keys
    module = IntSoftmax(8, quant_mode=True)
    module.train()  # one pass to give the inner QuantAct(16) its range, as I-BERT calibrates
    module(torch.from_numpy(x), torch.tensor([scale]))
    module.eval()
    expected, expected_scale = module(torch.from_numpy(x), torch.tensor([scale]))
    attrs = ref.softmax_attributes(scale, float(module.act.act_scaling_factor))
    assert attrs["output_scale"] == expected_scale
    assert np.array_equal(ref.ibert_op("IntSoftmax", x, **attrs), expected.numpy())


def test_layernorm_matches_hugging_face_to_float32_precision():
    """Hugging Face takes floor(sqrt(var)) in float32 (which rounds up just below a perfect square) and rounds
    y * factor (~2**30) to float32 before its floor; we compute both exactly: agreement to ~1e-6 relative."""
    channels = 16
    module = IntLayerNorm(channels, eps=1e-5, output_bit=32, quant_mode=True).eval()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(RNG.normal(1, 0.3, channels).astype(np.float32)))
        module.bias.copy_(torch.from_numpy(RNG.normal(0, 0.2, channels).astype(np.float32)))
    scale = np.float32(2.0**-9)
    x = on_grid(RNG.normal(0, 0.5, (8, 6, channels)), scale)  # |x_int| < 2**11: the variance stays below 2**24
    expected, expected_scale = module(torch.from_numpy(x), torch.tensor([scale]))
    weight, bias = module.weight.detach().numpy(), module.bias.detach().numpy()
    attrs = ref.layernorm_attributes(float(scale), 0, weight)
    assert np.array_equal(np.asarray(attrs["output_scale"], np.float32), expected_scale.detach().numpy())
    ours = ref.ibert_op("IntLayerNorm", x, weight, bias, **attrs)
    np.testing.assert_allclose(ours, expected.detach().numpy(), rtol=1e-5, atol=1e-5)


# -- op-level contract -----------------------------------------------------------------------------


def test_ibert_op_softmax_other_axis_and_bits():
    scale = 1e-3
    x = on_grid(RNG.normal(0, 2, (24, 5)), scale)
    attrs = ref.softmax_attributes(scale, ref.natural_exp_scale(scale), output_bits=12, axis=0)
    y = ref.ibert_op("IntSoftmax", x, **attrs)
    assert attrs["output_scale"] == 2.0**-12
    assert np.abs(y - float_softmax(x.astype(np.float64), axis=0)).max() <= 2 / 256
    same = ref.ibert_op("IntSoftmax", x.T.copy(), **{**attrs, "axis": -1})
    assert np.array_equal(y, same.T)


def test_ibert_op_rejects_inconsistent_attributes():
    x = np.zeros((2, 4), np.float32)
    attrs = ref.gelu_attributes([1e-3])
    with pytest.raises(ValueError, match="output_scale.*gelu_attributes"):
        ref.ibert_op("IntGELU", x, input_scale=attrs["input_scale"], output_scale=[1.0])
    with pytest.raises(ValueError, match="1 or the size of the last axis"):
        ref.ibert_op("IntGELU", x, **ref.gelu_attributes([1e-3, 2e-3, 3e-3]))
    with pytest.raises(ValueError, match="unknown op ibert::IntRelu.*IntGELU"):
        ref.ibert_op("IntRelu", x)
    with pytest.raises(ValueError, match="three inputs"):
        ref.ibert_op("IntLayerNorm", x, **ref.layernorm_attributes(1e-3, 0, np.ones(4)))
    with pytest.raises(ValueError, match="positive"):
        ref.gelu_attributes([0.0])
    with pytest.raises(ValueError, match="not calibrated"):
        ref.softmax_attributes(1e-3, 1e-8)  # an exp_scale no calibrated model has


# -- requantization, GEMMs and the integer interface ------------------------------------------------
# Independent references: Python's unbounded integers and fractions, and Hugging Face's own
# `batch_frexp`, `FixedPointMul` and `SymmetricQuantFunction` where their float arithmetic is exact.


def test_dyadic_multiplier_is_hugging_face_batch_frexp():
    from transformers.models.ibert.quant_modules import batch_frexp

    ratio = np.concatenate([10 ** RNG.uniform(-9, 4, 4000), -(10 ** RNG.uniform(-9, 2, 1000)), [0.5, 1.0, 0.75]])
    expected_m, expected_e = batch_frexp(torch.from_numpy(ratio))
    multiplier, shift = ref.dyadic_multiplier(ratio)
    assert multiplier.tolist() == expected_m.to(torch.int64).tolist()
    assert shift.tolist() == expected_e.to(torch.int64).tolist()


def test_tiny_ratios_keep_shift_61_with_a_shorter_multiplier():
    """A LayerNorm channel whose weight is ~0 (all-MiniLM-L6-v2 has three at -5e-33) has ratio ~1e-37."""
    multiplier, shift = ref.dyadic_multiplier(np.array([-6e-37, 1e-10, 2.0**-31, 2.0**-30]))
    assert shift.tolist() == [61, 61, 61, 60]
    assert multiplier.tolist() == [0, round(1e-10 * 2**61), 2**30, 2**30]
    with pytest.raises(ValueError, match="2\\*\\*30 or more"):
        ref.dyadic_multiplier(np.array([2.0**31]))


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**62) + 1, 2**62 - 1), st.integers(-(2**31), 2**31), st.integers(1, 61))
def test_rescale_is_round_half_even_of_the_exact_product(z, multiplier, shift):
    exact = Fraction(z * multiplier, 2**shift)
    if abs(exact) >= 2**61:
        return  # the result must fit int64; the callers' bounds guarantee it
    assert int(ref.rescale(np.array([z]), multiplier, shift)[0]) == round(exact)  # Python rounds half to even


def test_rescale_ties_go_to_even():
    z = np.array([1, 3, 5, -1, -3, -5, 7])
    assert ref.rescale(z, 2**30, 31).tolist() == [0, 2, 2, 0, -2, -2, 4]  # z / 2


def test_requantize_is_hugging_face_fixed_point_mul_where_that_is_exact():
    """FixedPointMul rounds each input on its own grid, multiplies by the 31-bit mantissa in float64 and
    rounds: exact while |z * m| < 2**53, as here (|z| < 2**21)."""
    from transformers.models.ibert.quant_modules import FixedPointMul

    x_scale = (RNG.uniform(1e-4, 1e-3, 24)).astype(np.float32)
    identity_scale, output_scale = np.float32(0.003), np.float32(0.1)
    x_int = RNG.integers(-(2**21), 2**21, (5, 24))
    identity = RNG.integers(-(2**15), 2**15, (5, 24))
    expected = FixedPointMul.apply(
        torch.from_numpy((x_int * x_scale).astype(np.float32)), torch.from_numpy(x_scale), 16,
        torch.tensor([output_scale]), torch.from_numpy((identity * identity_scale).astype(np.float32)),
        torch.tensor([identity_scale]),
    )
    got = ref.requantize(x_int, x_scale, output_scale, 16, identity, identity_scale)
    assert 0 < np.abs(got).max() < 2**15 - 1  # not saturated
    assert np.array_equal(got, expected.numpy().reshape(got.shape).astype(np.int64))


def test_quantize_is_hugging_face_symmetric_quant_function():
    from transformers.models.ibert.quant_modules import SymmetricQuantFunction

    x = RNG.normal(0, 3, (7, 40)).astype(np.float32)
    scale = np.float32(0.037)
    expected = SymmetricQuantFunction.apply(torch.from_numpy(x), 8, False, torch.tensor([scale]))
    assert np.array_equal(ref.quantize(x, scale, 8), expected.numpy().astype(np.int64))


def test_layernorm_std_is_at_least_two_to_the_shift():
    """Rows whose deviations all shift to 0 without being 0 (var = 0): std is 2**shift, so the normalized part
    stays within int32 (layernorm_output_bound); it would be y * 2**30 with std 1."""
    weight, bias = np.ones(16, np.float32), np.zeros(16, np.float32)
    x = 1000 + np.eye(16, dtype=np.int64)[:4] * np.array([[1], [3], [7], [5]])  # one deviation per row, below 2**3
    y, _ = ref.int_layernorm(x, weight, bias, shift=3)
    centered = x - np.round(x.mean(-1, keepdims=True))
    assert np.all((centered >= 0) & (centered < 8)) and np.any(centered > 0)
    np.testing.assert_array_equal(y, centered * (2**31 // 8) // 2)
    assert np.abs(y).max() <= ref.layernorm_output_bound(weight, bias)


def test_static_bounds_hold_on_extreme_inputs():
    channels = 48
    scale = (RNG.uniform(1e-4, 1e-3, channels)).astype(np.float32)
    x = np.concatenate([np.full((1, channels), 2**20), np.full((1, channels), -(2**20)), RNG.integers(-(2**20), 2**20, (30, channels))])
    y, _ = ref.int_gelu(x, scale)
    assert np.abs(y).max() <= ref.gelu_output_bound(2**20, scale)
    weights = RNG.integers(-127, 127, (64, 9))
    extreme = np.sign(weights.T) * 2**15
    assert np.abs(ref.int_matmul(extreme, weights)).max(axis=0).tolist() == ref.matmul_bound(2**15, weights).tolist()


def integer_attributes(op_type: str, attributes: dict, weight=None, bias=None) -> dict:
    return {**attributes, **ref.integer_constant_attributes(op_type, attributes, weight, bias)}


def test_integer_op_is_the_float_interface_on_integers():
    """The exported graph's nodes (integers in and out) and the plugins' float interface agree."""
    scale = np.float32(2e-3)
    x_int = RNG.integers(-3000, 3000, (4, 6, 20))
    x = ref.dequantize_output(x_int, scale)
    gelu = ref.gelu_attributes([scale])
    got = ref.integer_op("IntGELU", x_int, **integer_attributes("IntGELU", gelu))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(ref.dequantize_output(got, gelu["output_scale"]), ref.ibert_op("IntGELU", x, **gelu))
    softmax = ref.softmax_attributes(float(scale), ref.natural_exp_scale(float(scale)))
    got = ref.integer_op("IntSoftmax", x_int, **integer_attributes("IntSoftmax", softmax))
    assert got.dtype == np.int32 and got.min() >= 0 and got.max() <= 256
    np.testing.assert_array_equal(ref.dequantize_output(got, 2.0**-8), ref.ibert_op("IntSoftmax", x, **softmax))
    weight, bias = RNG.uniform(0.5, 1.5, 20).astype(np.float32), RNG.normal(0, 0.2, 20).astype(np.float32)
    layernorm = ref.layernorm_attributes(float(scale), 1, weight)
    got = ref.integer_op("IntLayerNorm", x_int, weight, bias, **integer_attributes("IntLayerNorm", layernorm, weight, bias))
    np.testing.assert_array_equal(
        ref.dequantize_output(got, np.asarray(layernorm["output_scale"], np.float32)),
        ref.ibert_op("IntLayerNorm", x, weight, bias, **layernorm),
    )


def test_integer_op_checks_attributes_and_operand_ranges():
    gelu = ref.gelu_attributes([1e-3])
    with pytest.raises(ValueError, match="lacks its constant attribute 'b_int'"):
        ref.integer_op("IntGELU", np.zeros((2, 3), np.int64), **gelu)
    wrong = integer_attributes("IntGELU", gelu) | {"c_int": [0]}
    with pytest.raises(ValueError, match="attribute c_int does not match"):
        ref.integer_op("IntGELU", np.zeros((2, 3), np.int64), **wrong)
    a = ref.requantize_attributes(1e-3, 0.1, 8)
    with pytest.raises(ValueError, match="multiplier.*requantize_attributes"):
        ref.integer_op("Requantize", np.zeros(3, np.int64), np.int64(0), **{**a, "multiplier": [1]})
    with pytest.raises(ValueError, match="beyond its bound"):
        ref.integer_op("Requantize", np.array([2**32]), np.int64(0), **a)
    matmul = ref.matmul_attributes(0.1, [0.01])
    with pytest.raises(ValueError, match=re.escape("outside [-128, 127]")):
        ref.integer_op("IntMatMul", np.array([[128]]), np.array([[1]], np.int8), **matmul)
    assert ref.integer_op("IntMatMul", np.array([[-128]]), np.array([[-128]], np.int8), **matmul).tolist() == [[2**14]]
    with pytest.raises(ValueError, match=re.escape("outside [-32768, 32767]")):
        ref.integer_op("IntMatMulWide", np.array([[2**15]]), np.array([[1]], np.int8), **matmul)
    assert ref.integer_op("IntMatMulWide", np.array([[-(2**15)]]), np.array([[-128]], np.int8), **matmul).tolist() == [[2**22]]
