"""TensorQuantizer and the quantized layers against NumPy float64 and NVIDIA modelopt, and their ONNX export."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.quantization import (
    QUANT_DESC_8BIT_PER_CHANNEL_AXIS0,
    QUANT_DESC_8BIT_PER_TENSOR,
    NotCalibratedError,
    QuantConv1d,
    QuantDescriptor,
    QuantLinear,
    TensorQuantizer,
)


def numpy_fake_quant(x, amax, num_bits=8, unsigned=False, narrow_range=False, axis=None):
    """Reference: float64, scale = float32(amax / bound), round half to even, clamp, rescale."""
    x = np.asarray(x, dtype=np.float64)
    bound = 2 ** (num_bits - 1 + int(unsigned)) - 1
    low = 0 if unsigned else (-bound if narrow_range else -bound - 1)
    amax = np.asarray(amax, dtype=np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        amax = amax.reshape(shape)
    scale = (amax / bound).astype(np.float32).astype(np.float64)
    q = np.clip(np.rint(x / scale), low, bound)
    return (q * scale).astype(np.float32), x / scale


def quantizer(amax, **desc) -> TensorQuantizer:
    q = TensorQuantizer(QuantDescriptor(**desc))
    q.amax = amax
    return q


def assert_matches_reference(got: torch.Tensor, expected: np.ndarray, unrounded: np.ndarray) -> None:
    """Bit-exact except where x / scale lies within float32 rounding of a .5 tie (one step off at most)."""
    got_np = got.detach().numpy()
    differ = got_np != expected
    near_tie = np.abs(np.abs(unrounded - np.floor(unrounded)) - 0.5) < 1e-4
    assert not (differ & ~near_tie).any(), f"{int((differ & ~near_tie).sum())} elements differ away from ties"
    assert differ.mean() < 1e-3


@pytest.mark.parametrize(
    "desc",
    [
        dict(),
        dict(narrow_range=True),
        dict(unsigned=True),
        dict(num_bits=4),
        dict(num_bits=6, narrow_range=True),
    ],
    ids=["int8", "int8-narrow", "uint8", "int4", "int6-narrow"],
)
def test_per_tensor_bit_exact_with_ties(desc):
    """Power-of-two scales make x / scale exact, so every tie (k + 0.5) must round to the even integer."""
    bits = desc.get("num_bits", 8)
    bound = 2 ** (bits - 1 + int(desc.get("unsigned", False))) - 1
    scale = 2.0**-5
    ties = (np.arange(-140, 140) + 0.5) * scale
    rng = np.random.default_rng(0)
    x = np.concatenate([ties, rng.normal(0, 2, 5000), [bound * scale * 1.5, -bound * scale * 1.5]]).astype(np.float32)
    expected, _ = numpy_fake_quant(x, bound * scale, **desc)
    got = quantizer(bound * scale, **desc)(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), expected)
    # ties went to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
    step_values = got.numpy()[:280] / scale
    assert set(np.unique(step_values[np.abs(step_values) < bound]) % 2) <= {0.0}


@settings(max_examples=60, deadline=None)
@given(
    amax=st.floats(1e-3, 1e3),
    spread=st.floats(0.1, 3.0),
    bits=st.sampled_from([4, 8]),
    unsigned=st.booleans(),
    narrow=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_per_tensor_any_amax(amax, spread, bits, unsigned, narrow, seed):
    x = (np.random.default_rng(seed).standard_normal(2000) * amax * spread).astype(np.float32)
    desc = dict(num_bits=bits, unsigned=unsigned, narrow_range=narrow)
    expected, unrounded = numpy_fake_quant(x, np.float32(amax), **desc)
    got = quantizer(float(np.float32(amax)), **desc)(torch.from_numpy(x))
    assert_matches_reference(got, expected, unrounded)


def test_full_and_narrow_range_ends():
    amax = 127.0  # scale 1
    x = torch.tensor([-200.0, -128.0, -127.6, -127.0, 127.4, 200.0])
    full = quantizer(amax)(x)
    narrow = quantizer(amax, narrow_range=True)(x)
    unsigned = quantizer(255.0, unsigned=True)(torch.tensor([-3.0, 0.4, 254.6, 300.0]))
    assert full.tolist() == [-128.0, -128.0, -128.0, -127.0, 127.0, 127.0]
    assert narrow.tolist() == [-127.0, -127.0, -127.0, -127.0, 127.0, 127.0]
    assert unsigned.tolist() == [0.0, 0.0, 255.0, 255.0]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel(axis):
    rng = np.random.default_rng(axis + 5)
    x = rng.normal(0, 1, (6, 5, 4)).astype(np.float32) * rng.uniform(0.1, 5, (6, 1, 1)).astype(np.float32)
    reduce = tuple(d for d in range(3) if d != axis % 3)
    amax = (np.abs(x).max(axis=reduce) * 0.8).astype(np.float32)  # clip some values too
    q = quantizer(torch.from_numpy(amax), axis=axis, narrow_range=True)
    expected, unrounded = numpy_fake_quant(x, amax, narrow_range=True, axis=axis)
    assert_matches_reference(q(torch.from_numpy(x)), expected, unrounded)
    with pytest.raises(ValueError, match="6 per-channel amax values but the tensor has 5 channels"):
        quantizer(torch.ones(6), axis=1)(torch.from_numpy(x))


def test_descriptor_defaults_and_validation():
    assert QUANT_DESC_8BIT_PER_TENSOR.axis is None and not QUANT_DESC_8BIT_PER_TENSOR.narrow_range
    assert QUANT_DESC_8BIT_PER_CHANNEL_AXIS0.axis == 0 and QUANT_DESC_8BIT_PER_CHANNEL_AXIS0.narrow_range
    assert (QUANT_DESC_8BIT_PER_CHANNEL_AXIS0.min_bound, QUANT_DESC_8BIT_PER_CHANNEL_AXIS0.max_bound) == (-127, 127)
    assert QuantDescriptor(axis=(0,)).axis == 0
    with pytest.raises(ValueError, match="one axis"):
        QuantDescriptor(axis=(0, 1))
    with pytest.raises(ValueError, match="calib_method"):
        QuantDescriptor(calib_method="entropy")
    with pytest.raises(ValueError, match="needs one amax"):
        quantizer([1.0, 2.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        quantizer(-1.0)


def test_uncalibrated_quantizer_says_what_to_do():
    q = TensorQuantizer()
    with pytest.raises(NotCalibratedError, match=r"not calibrated: run models\.quantization\.calibrate"):
        q(torch.ones(3))


def test_disable_and_disable_quant_give_back_float_exactly():
    layer = QuantLinear(8, 4)
    layer.input_quantizer.amax = 0.5
    layer.weight_quantizer.amax = layer.weight.detach().abs().amax(1, keepdim=True) / 2
    x = torch.randn(3, 8)
    reference = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert not torch.equal(layer(x), reference)
    for q in (layer.input_quantizer, layer.weight_quantizer):
        q.disable_quant()
    assert torch.equal(layer(x), reference)
    layer.input_quantizer.enable_quant()
    layer.input_quantizer.disable()
    layer.weight_quantizer.enable_quant()
    layer.weight_quantizer.disable()
    assert torch.equal(layer(x), reference)


def test_straight_through_gradient():
    q = quantizer(1.0)
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    q(x).sum().backward()
    scale = np.float32(1.0 / 127)
    inside = np.rint(x.detach().numpy() / scale)
    expected = ((inside >= -128) & (inside <= 127)).astype(np.float32)
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_learn_amax_gets_a_gradient():
    q = TensorQuantizer(QuantDescriptor(learn_amax=True, amax=1.0))
    assert isinstance(q.amax, torch.nn.Parameter)
    x = torch.tensor([-3.0, 0.2, 0.5, 2.0])
    q(x).sum().backward()
    assert q.amax.grad is not None and q.amax.grad.item() == pytest.approx(0.0)  # +1 for 2.0, -1 for -3.0
    q.amax.grad = None
    q(torch.tensor([2.0, 3.0])).sum().backward()
    assert q.amax.grad.item() == pytest.approx(2.0)


def test_amax_buffer_in_state_dict_and_back():
    q = TensorQuantizer(QUANT_DESC_8BIT_PER_CHANNEL_AXIS0)
    assert "_amax" not in q.state_dict()
    q.amax = torch.arange(1, 5, dtype=torch.float32).reshape(4, 1)
    state = q.state_dict()
    assert state["_amax"].shape == (4, 1)
    fresh = TensorQuantizer(QUANT_DESC_8BIT_PER_CHANNEL_AXIS0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.amax, q.amax)


def test_quant_conv1d_matches_reference():
    conv = QuantConv1d(8, 6, kernel_size=1, groups=2)
    x = torch.randn(2, 8, 5)
    w = conv.weight.detach().numpy()
    w_amax = np.abs(w).max(axis=(1, 2))
    conv.weight_quantizer.amax = torch.from_numpy(w_amax).reshape(6, 1, 1)
    conv.input_quantizer.amax = 1.5
    xq, _ = numpy_fake_quant(x.numpy(), 1.5)
    wq, _ = numpy_fake_quant(w, w_amax, narrow_range=True, axis=0)
    expected = torch.nn.functional.conv1d(torch.from_numpy(xq), torch.from_numpy(wq), conv.bias, groups=2)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-6)


def test_against_modelopt_tensor_quantizer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.config import QuantizerAttributeConfig
        from modelopt.torch.quantization.nn import TensorQuantizer as ModeloptQuantizer
    torch.manual_seed(0)
    x = torch.randn(64, 48) * 3
    for axis, narrow, unsigned in [(None, False, False), (None, True, False), (0, True, False), (None, False, True)]:
        data = x.abs() if unsigned else x
        if axis is None:
            amax = torch.tensor(data.abs().max().item() * 0.7)
        else:
            amax = data.abs().amax(dim=1, keepdim=True) * 0.7
        reference = ModeloptQuantizer(
            QuantizerAttributeConfig(num_bits=8, axis=axis, narrow_range=narrow, unsigned=unsigned)
        )
        reference.amax = amax
        ours = quantizer(amax, axis=axis, narrow_range=narrow, unsigned=unsigned)
        expected, got = reference(data), ours(data)
        # modelopt computes round(x * (bound / amax)) / (bound / amax); ours x * (1 / scale) then * scale:
        # the same integer except at float32 ties, and the same value to float32 rounding.
        step = (amax / (255 if unsigned else 127)).expand_as(data) if axis is not None else amax / 127
        assert ((expected - got).abs() <= 1e-6 * data.abs().max() + 1e-7).float().mean() > 0.999
        assert ((expected - got).abs() <= step * 1.001).all()


def _export_ort(module: torch.nn.Module, x: torch.Tensor, path, dynamo: bool) -> tuple[list[str], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo else 17,
            input_names=["x"], output_names=["y"], verbose=False,
        )
    model = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [n.op_type for n in model.graph.node], session.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_emits_qdq_and_matches_onnxruntime(tmp_path, dynamo):
    """Both torch exporters turn the fake-quant ops into QuantizeLinear/DequantizeLinear (weights narrow range)."""
    torch.manual_seed(0)
    layer = QuantLinear(16, 8)
    with torch.no_grad():  # weights beyond the weight amax: narrow range must clamp them to +-127 steps
        layer.weight[0, 0] = -1.0
    layer.weight_quantizer.amax = torch.full((8, 1), 0.25)  # power-of-two scales: exact in every backend
    layer.input_quantizer.amax = 127 * 2.0**-4
    x = torch.randn(4, 16) * 3
    ops, got = _export_ort(layer.eval(), x, tmp_path / "m.onnx", dynamo)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2, ops
    with torch.no_grad():
        expected = layer(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
