"""The `ibert::` torch custom ops equal the NumPy int64 reference (trt_runtime.contract.ibert) exactly, on integers,
and register cleanly; the int64 rescaling equals Python's exact integer arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.quantization.integer import ops as integer_ops
from trt_runtime.contract import ibert as ref

RNG = np.random.default_rng(1)


def random_integers(shape, bits: int) -> np.ndarray:
    return RNG.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape)


def gelu_args(scale) -> tuple:
    a = ref.gelu_attributes(scale)
    c = ref.integer_constant_attributes("IntGELU", a)
    return a["input_scale"], a["output_scale"], c["b_int"], c["c_int"], c["shift_int"]


def softmax_args(scale: float, exp_scale: float, output_bits: int = 8, axis: int = -1) -> tuple:
    a = ref.softmax_attributes(scale, exp_scale, output_bits, axis)
    c = ref.integer_constant_attributes("IntSoftmax", a)
    return (a["axis"], a["output_bits"], a["input_scale"], a["exp_scale"], a["output_scale"], *c.values())


def layernorm_args(scale: float, shift: int, weight: np.ndarray, bias: np.ndarray, axis: int = -1) -> tuple:
    a = ref.layernorm_attributes(scale, shift, weight, axis)
    return a["axis"], a["input_scale"], a["shift"], a["output_scale"], ref.integer_constant_attributes("IntLayerNorm", a, weight, bias)["bias_int"]


def requantize_args(input_scale, output_scale, bits: int, identity_scale=None) -> tuple:
    a = ref.requantize_attributes(input_scale, output_scale, bits, identity_scale)
    return tuple(a[name] for name in ("input_scale", "identity_scale", "output_scale", "output_bits", "multiplier",
                                      "shift", "identity_multiplier", "identity_shift"))


@pytest.mark.parametrize(
    "scale",
    [np.float32(1e-3), np.float32(2.5e-5), (10 ** RNG.uniform(-6, -2, 40)).astype(np.float32)],
    ids=["per-tensor-coarse", "per-tensor-fine", "per-channel"],
)
@pytest.mark.parametrize("bits", [8, 20, 31])
def test_int_gelu_equals_reference(scale, bits):
    x = random_integers((6, 5, 40), bits)
    got = torch.ops.ibert.int_gelu(torch.from_numpy(x).to(torch.int32), *gelu_args(scale))
    assert got.dtype == torch.int64
    assert np.array_equal(got.numpy(), ref.int_gelu(x, scale)[0])


@pytest.mark.parametrize("scale", [3e-2, 2e-3, 1e-4, 4e-6])
@pytest.mark.parametrize("output_bits", [8, 16])
def test_int_softmax_equals_reference(scale, output_bits):
    x = np.round(RNG.normal(0, 4, (3, 4, 17, 17)) / scale).astype(np.int64)
    x[1, :, :, 9:] = ref.INT32_MIN  # padding keys, as the attention mask sets them
    exp_scale = ref.natural_exp_scale(scale) * float(RNG.uniform(0.7, 1.3))  # calibrated ranges vary
    got = torch.ops.ibert.int_softmax(torch.from_numpy(x).to(torch.int32), *softmax_args(scale, exp_scale, output_bits))
    assert got.dtype == torch.int32
    assert np.array_equal(got.numpy(), ref.int_softmax(x, scale, exp_scale, output_bits)[0])


def test_int_softmax_other_axis_equals_reference():
    scale = 1e-3
    x = random_integers((9, 4, 3), 13)
    got = torch.ops.ibert.int_softmax(torch.from_numpy(x), *softmax_args(scale, ref.natural_exp_scale(scale), axis=0))
    assert np.array_equal(got.numpy(), ref.int_softmax(x, scale, ref.natural_exp_scale(scale), axis=0)[0])


@pytest.mark.parametrize(("bits", "shift"), [(12, 0), (22, 0), (22, 5), (26, 9)])
@pytest.mark.parametrize("axis", [-1, 1])
def test_int_layernorm_equals_reference(bits, shift, axis):
    channels = 24
    weight = RNG.normal(1, 0.4, channels).astype(np.float32)
    bias = RNG.normal(0, 0.3, channels).astype(np.float32)
    shape = (3, 7, channels) if axis == -1 else (3, channels, 7)
    x = random_integers(shape, bits) // RNG.integers(1, 64, shape[:1] + (1, 1))
    got = torch.ops.ibert.int_layernorm(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), *layernorm_args(2e-6, shift, weight, bias, axis)
    )
    assert np.array_equal(got.numpy(), ref.int_layernorm(x, weight, bias, shift, axis)[0])


def test_int_layernorm_constant_rows():
    """A constant row has variance 0: the output is the bias (Hugging Face would produce 0 * inf = nan)."""
    weight, bias = np.ones(8, np.float32), np.linspace(-1, 1, 8).astype(np.float32)
    x = np.full((2, 8), 3, np.int64)
    got = torch.ops.ibert.int_layernorm(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), *layernorm_args(1e-3, 0, weight, bias)
    )
    assert np.array_equal(got.numpy(), ref.int_layernorm(x, weight, bias, 0)[0])
    scale = np.asarray(ref.layernorm_attributes(1e-3, 0, weight)["output_scale"], np.float32)
    np.testing.assert_allclose(got.numpy() * scale, np.broadcast_to(bias, (2, 8)), atol=1e-6)


@pytest.mark.parametrize("wide", [False, True])
def test_int_matmul_is_exact(wide):
    bound = ref.INT_MATMUL_WIDE_A_BOUND if wide else ref.INT_MATMUL_A_BOUND
    a = RNG.integers(-bound, bound, (2, 3, 9, 1536))
    a[0, 0, 0], a[0, 0, 1] = bound - 1, -bound  # the extremes
    b = RNG.integers(-128, 128, (1536, 11)).astype(np.int8)
    b[:, 0] = 127
    op = torch.ops.ibert.int_matmul_wide if wide else torch.ops.ibert.int_matmul
    got = op(torch.from_numpy(a).to(torch.int32), torch.from_numpy(b), 0.1, [0.01] * 11)
    assert got.dtype == (torch.int64 if wide else torch.int32)
    assert np.array_equal(got.numpy(), a.astype(object).dot(b.astype(object)).astype(np.int64))  # Python integers


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**62) + 1, 2**62 - 1), st.integers(-(2**31), 2**31), st.integers(1, 61))
def test_rescale_equals_the_reference(z, multiplier, shift):
    if abs(z * multiplier) >= 2 ** (shift + 61):
        return  # the result must fit int64
    expected = ref.rescale(np.array([z]), multiplier, shift)
    args = (torch.tensor([z]), torch.tensor([multiplier]), torch.tensor([shift]))
    assert integer_ops.rescale(*args).tolist() == expected.tolist()
    if abs(z) < ref.REQUANTIZE_INPUT_BOUND:
        assert integer_ops.rescale_small(*args).tolist() == expected.tolist()


def test_rescale_ties_and_signs():
    z = torch.tensor([1, 3, 5, -1, -3, -5, 2**40 + 1])
    m, e = torch.tensor([2**30]), torch.tensor([31])
    assert integer_ops.rescale(z, m, e).tolist() == [0, 2, 2, 0, -2, -2, 2**39]
    assert integer_ops.rescale_small(z[:6], -m, e).tolist() == [0, -2, -2, 0, 2, 2]


@pytest.mark.parametrize("wide", [False, True])
def test_requantize_equals_reference(wide):
    channels = 12
    low, bound, output_scale = (1e-9, 2**50, 600.0) if wide else (1e-6, ref.REQUANTIZE_INPUT_BOUND, 2.0)
    input_scale = (RNG.uniform(low, 10 * low, channels) * RNG.choice([-1, 1], channels)).astype(np.float32)
    x = RNG.integers(-bound, bound, (4, 5, channels), dtype=np.int64)
    identity = RNG.integers(-(2**15), 2**15, (4, 5, channels))
    args = requantize_args(input_scale, output_scale, 16, identity_scale=2e-4)
    op = torch.ops.ibert.requantize_wide if wide else torch.ops.ibert.requantize
    got = op(torch.from_numpy(x), torch.from_numpy(identity).to(torch.int32), *args)
    assert got.dtype == torch.int32
    expected = ref.requantize(x, input_scale, output_scale, 16, identity, 2e-4)
    assert np.array_equal(got.numpy(), expected)
    assert np.mean(np.abs(expected) < 2**15 - 1) > 0.5  # mostly in range


def test_isqrt_and_rounding_helpers_equal_reference():
    n = np.concatenate([np.arange(0, 300), RNG.integers(0, 2**62, 3000)])
    assert np.array_equal(integer_ops.isqrt(torch.from_numpy(n)).numpy(), ref.isqrt(n))
    num, den = RNG.integers(-(2**40), 2**40, 3000), RNG.integers(1, 2**20, 3000)
    num[:100] = den[:100] * RNG.integers(-50, 50, 100) + den[:100] // 2 * (den[:100] % 2 == 0)  # ties
    got = integer_ops.round_div_half_even(torch.from_numpy(num), torch.from_numpy(den))
    assert np.array_equal(got.numpy(), ref.round_div_half_even(num, den))


def test_ops_check_their_derived_arguments():
    x = torch.zeros(2, 4, dtype=torch.int32)
    args = list(gelu_args([1e-3]))
    with pytest.raises(ValueError, match="output_scale does not match"):
        torch.ops.ibert.int_gelu(x, args[0], [1e-3], *args[2:])
    with pytest.raises(ValueError, match="integer constants do not match"):
        torch.ops.ibert.int_gelu(x, *args[:2], [0], *args[3:])
    with pytest.raises(ValueError, match="not calibrated"):
        torch.ops.ibert.int_softmax(x, -1, 8, 1e-3, 1e-8, 2.0**-8, 0, 0, 0, 0, 0)
    args = list(requantize_args(1e-3, 0.1, 8))
    args[4] = [1]
    with pytest.raises(ValueError, match="requantize_attributes"):
        torch.ops.ibert.requantize(x, torch.zeros((), dtype=torch.int32), *args)


def test_opcheck_registration():
    """Schema and fake (meta) kernels are consistent (torch.library.opcheck)."""
    x = torch.from_numpy(random_integers((2, 3, 8), 12)).to(torch.int32)
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.ibert.int_gelu, (x, *gelu_args(1e-3)), test_utils=checks)
    torch.library.opcheck(torch.ops.ibert.int_softmax, (x, *softmax_args(1e-3, ref.natural_exp_scale(1e-3))), test_utils=checks)
    torch.library.opcheck(
        torch.ops.ibert.int_layernorm, (x, weight, bias, *layernorm_args(1e-3, 0, weight.numpy(), bias.numpy())),
        test_utils=checks,
    )
    b = torch.from_numpy(RNG.integers(-128, 128, (8, 5)).astype(np.int8))
    torch.library.opcheck(torch.ops.ibert.int_matmul, (x.clamp(-128, 128), b, 0.1, [0.01]), test_utils=checks)
    torch.library.opcheck(torch.ops.ibert.int_matmul_wide, (x, b, 0.1, [0.01]), test_utils=checks)
    zero = torch.zeros((), dtype=torch.int32)
    torch.library.opcheck(torch.ops.ibert.requantize, (x, zero, *requantize_args(1e-3, 0.1, 8)), test_utils=checks)
    torch.library.opcheck(torch.ops.ibert.requantize_wide, (x, zero, *requantize_args(1e-3, 0.1, 8)), test_utils=checks)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_trace_records_one_node_per_op_with_constant_arguments():
    weight, bias = torch.ones(8), torch.zeros(8)
    b = torch.from_numpy(RNG.integers(-127, 127, (8, 8)).astype(np.int8))
    zero = torch.zeros((), dtype=torch.int32)

    def block(x):
        y = torch.ops.ibert.int_matmul(x, b, 0.1, [0.01])
        y = torch.ops.ibert.requantize(y, zero, *requantize_args([1e-3], 0.05, 8))
        y = torch.ops.ibert.int_gelu(y, *gelu_args(0.05))
        y = torch.ops.ibert.requantize_wide(y, zero, *requantize_args(ref.gelu_attributes(0.05)["output_scale"], 0.1, 16))
        y = torch.ops.ibert.int_softmax(y, *softmax_args(1e-3, ref.natural_exp_scale(1e-3)))
        return torch.ops.ibert.int_layernorm(y, weight, bias, *layernorm_args(2.0**-8, 0, weight.numpy(), bias.numpy()))

    x = torch.from_numpy(random_integers((2, 8), 8)).to(torch.int32)
    traced = torch.jit.trace(block, (x,))
    kinds = [node.kind() for node in traced.graph.nodes() if node.kind().startswith("ibert::")]
    assert kinds == ["ibert::int_matmul", "ibert::requantize", "ibert::int_gelu", "ibert::requantize_wide",
                     "ibert::int_softmax", "ibert::int_layernorm"]
    assert set(integer_ops.ONNX_OP_TYPES.values()) == set(ref.INTEGER_OP_TYPES)
    assert torch.equal(traced(x), block(x))
