"""The `ibert::` torch custom ops equal the NumPy references exactly, register cleanly, and train (STE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.quantization.integer import ops as integer_ops
from trt_runtime.contract import ibert as ref

RNG = np.random.default_rng(1)


def random_integers(shape, bits: int) -> np.ndarray:
    return RNG.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape)


def gelu_args(scale) -> tuple:
    attrs = ref.gelu_attributes(scale)
    return attrs["input_scale"], attrs["output_scale"]


def softmax_args(scale: float, exp_scale: float, output_bits: int = 8, axis: int = -1) -> tuple:
    attrs = ref.softmax_attributes(scale, exp_scale, output_bits, axis)
    return attrs["axis"], attrs["output_bits"], attrs["input_scale"], attrs["exp_scale"], attrs["output_scale"]


def layernorm_args(scale: float, shift: int, weight: np.ndarray, axis: int = -1) -> tuple:
    attrs = ref.layernorm_attributes(scale, shift, weight, axis)
    return attrs["axis"], attrs["input_scale"], attrs["shift"], attrs["output_scale"]


@pytest.mark.parametrize(
    "scale",
    [np.float32(1e-3), np.float32(2.5e-5), (10 ** RNG.uniform(-6, -2, 40)).astype(np.float32)],
    ids=["per-tensor-coarse", "per-tensor-fine", "per-channel"],
)
@pytest.mark.parametrize("bits", [8, 20, 31])
def test_int_gelu_equals_reference(scale, bits):
    x = ref.dequantize_output(random_integers((6, 5, 40), bits), scale)
    expected = ref.ibert_op("IntGELU", x, **ref.gelu_attributes(scale))
    got = torch.ops.ibert.int_gelu(torch.from_numpy(x), *gelu_args(scale))
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expected)


@pytest.mark.parametrize("scale", [3e-2, 2e-3, 1e-4, 4e-6])
@pytest.mark.parametrize("output_bits", [8, 16])
def test_int_softmax_equals_reference(scale, output_bits):
    x = ref.dequantize_output(np.round(RNG.normal(0, 4, (3, 4, 17, 17)) / scale).astype(np.int64), scale)
    x[1, :, :, 9:] += np.finfo(np.float32).min  # padding keys, as the attention mask adds them
    exp_scale = ref.natural_exp_scale(scale) * float(RNG.uniform(0.7, 1.3))  # calibrated ranges vary
    expected = ref.ibert_op("IntSoftmax", x, **ref.softmax_attributes(scale, exp_scale, output_bits))
    got = torch.ops.ibert.int_softmax(torch.from_numpy(x), *softmax_args(scale, exp_scale, output_bits))
    assert np.array_equal(got.numpy(), expected)


def test_int_softmax_other_axis_equals_reference():
    scale = 1e-3
    x = ref.dequantize_output(random_integers((9, 4, 3), 13), scale)
    attrs = ref.softmax_attributes(scale, ref.natural_exp_scale(scale), axis=0)
    got = torch.ops.ibert.int_softmax(torch.from_numpy(x), *softmax_args(scale, ref.natural_exp_scale(scale), axis=0))
    assert np.array_equal(got.numpy(), ref.ibert_op("IntSoftmax", x, **attrs))


@pytest.mark.parametrize(("bits", "shift"), [(12, 0), (22, 0), (22, 5), (26, 9)])
@pytest.mark.parametrize("axis", [-1, 1])
def test_int_layernorm_equals_reference(bits, shift, axis):
    channels = 24
    weight = RNG.normal(1, 0.4, channels).astype(np.float32)
    bias = RNG.normal(0, 0.3, channels).astype(np.float32)
    shape = (3, 7, channels) if axis == -1 else (3, channels, 7)
    scale = 2e-6
    x = ref.dequantize_output(random_integers(shape, bits) // RNG.integers(1, 64, shape[:1] + (1, 1)), scale)
    expected = ref.ibert_op("IntLayerNorm", x, weight, bias, **ref.layernorm_attributes(scale, shift, weight, axis))
    got = torch.ops.ibert.int_layernorm(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), *layernorm_args(scale, shift, weight, axis)
    )
    assert np.array_equal(got.numpy(), expected)


def test_int_layernorm_constant_rows():
    """A constant row has variance 0: the output is the bias (Hugging Face would produce 0 * inf = nan)."""
    weight, bias = np.ones(8, np.float32), np.linspace(-1, 1, 8).astype(np.float32)
    x = np.full((2, 8), 3e-3, np.float32)
    got = torch.ops.ibert.int_layernorm(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), *layernorm_args(1e-3, 0, weight)
    )
    assert np.array_equal(got.numpy(), ref.ibert_op("IntLayerNorm", x, weight, bias, **ref.layernorm_attributes(1e-3, 0, weight)))
    np.testing.assert_allclose(got.numpy(), np.broadcast_to(bias, (2, 8)), atol=1e-6)


def test_isqrt_and_rounding_helpers_equal_reference():
    n = np.concatenate([np.arange(0, 300), RNG.integers(0, 2**62, 3000)])
    assert np.array_equal(integer_ops.isqrt(torch.from_numpy(n)).numpy(), ref.isqrt(n))
    num, den = RNG.integers(-(2**40), 2**40, 3000), RNG.integers(1, 2**20, 3000)
    num[:100] = den[:100] * RNG.integers(-50, 50, 100) + den[:100] // 2 * (den[:100] % 2 == 0)  # ties
    got = integer_ops.round_div_half_even(torch.from_numpy(num), torch.from_numpy(den))
    assert np.array_equal(got.numpy(), ref.round_div_half_even(num, den))


def test_ops_check_their_derived_argument():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="output_scale does not match"):
        torch.ops.ibert.int_gelu(x, [1e-3], [1e-3])
    with pytest.raises(ValueError, match="output_scale does not match"):
        torch.ops.ibert.int_softmax(x, -1, 8, 1e-3, ref.natural_exp_scale(1e-3), 0.5)
    with pytest.raises(ValueError, match="not calibrated"):
        torch.ops.ibert.int_softmax(x, -1, 8, 1e-3, 1e-8, 2.0**-8)


def test_opcheck_registration():
    """Schema, fake (meta) kernels and autograd registration are consistent (torch.library.opcheck)."""
    scale = 1e-3
    x = torch.from_numpy(ref.dequantize_output(random_integers((2, 3, 8), 12), scale))
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.ibert.int_gelu, (x, *gelu_args(scale)), test_utils=checks)
    torch.library.opcheck(torch.ops.ibert.int_softmax, (x, *softmax_args(scale, ref.natural_exp_scale(scale))), test_utils=checks)
    torch.library.opcheck(
        torch.ops.ibert.int_layernorm, (x, weight, bias, *layernorm_args(scale, 0, weight.numpy())), test_utils=checks
    )


def test_straight_through_gradients_are_those_of_the_float_functions():
    scale = 1e-3
    x = torch.from_numpy(ref.dequantize_output(random_integers((2, 5, 8), 12), scale)).requires_grad_()
    weight = (torch.rand(8) + 0.5).requires_grad_()
    bias = torch.randn(8, requires_grad=True)
    upstream = torch.randn(2, 5, 8)

    def grads(output, inputs):
        return torch.autograd.grad(output, inputs, upstream)

    got = grads(torch.ops.ibert.int_gelu(x, *gelu_args(scale)), x)
    assert torch.allclose(got[0], grads(torch.nn.functional.gelu(x), x)[0])
    got = grads(torch.ops.ibert.int_softmax(x, *softmax_args(scale, ref.natural_exp_scale(scale))), x)
    assert torch.allclose(got[0], grads(torch.softmax(x, -1), x)[0], atol=1e-6)
    inputs = (x, weight, bias)
    got = grads(torch.ops.ibert.int_layernorm(x, weight, bias, *layernorm_args(scale, 0, weight.detach().numpy())), inputs)
    expected = grads(torch.nn.functional.layer_norm(x, (8,), weight, bias, eps=1e-12), inputs)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_trace_records_one_node_per_op_with_constant_attributes():
    scale = 1e-3
    weight, bias = torch.ones(8), torch.zeros(8)
    arguments = (
        gelu_args(scale),
        softmax_args(scale, ref.natural_exp_scale(scale)),
        layernorm_args(2.0**-8, 0, weight.numpy()),
    )

    def block(x):
        y = torch.ops.ibert.int_gelu(x, *arguments[0])
        y = torch.ops.ibert.int_softmax(y, *arguments[1])
        return torch.ops.ibert.int_layernorm(y, weight, bias, *arguments[2])

    x = torch.from_numpy(ref.dequantize_output(random_integers((2, 8), 10), scale))
    traced = torch.jit.trace(block, (x,))
    kinds = [node.kind() for node in traced.graph.nodes()]
    assert [k for k in kinds if k.startswith("ibert::")] == ["ibert::int_gelu", "ibert::int_softmax", "ibert::int_layernorm"]
    assert set(integer_ops.ONNX_OP_TYPES) == {"ibert::int_gelu", "ibert::int_softmax", "ibert::int_layernorm"}
    assert torch.equal(traced(x), block(x))
