"""The ibert plugin kernels: host constants and AOT compilation to PTX, on the CPU (the compiled kernels on a
GPU are in test_gpu_kernels.py)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.ibert_kernel_cases import realistic_exp_scale
from trt_runtime.contract import ibert as constants
from trt_runtime.contract import ibert as ref

F32 = np.float32


# --------------------------------------------------------------------------------------------------
# host constants: trt_runtime's copy of the derivations against the reference's own


def _f32_floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=float(F32(low)), max_value=float(F32(high)), width=32)


scales = _f32_floats(1e-4, 2.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(scales, min_size=1, max_size=16))
def test_gelu_constants_equal_the_reference(values):
    ours, theirs = constants.gelu_constants(values), ref.gelu_constants(values)
    for name in ("b_int", "c_int", "shift_int", "output_scale"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    ints, floats = constants.gelu_tables(values)
    np.testing.assert_array_equal(ints, np.stack([theirs.b_int, theirs.c_int, theirs.shift_int]))
    np.testing.assert_array_equal(floats, np.stack([np.asarray(values, F32), theirs.output_scale]))


@settings(max_examples=200, deadline=None)
@given(_f32_floats(2e-3, 1.0), st.floats(min_value=0.5, max_value=2.0))
def test_softmax_constants_equal_the_reference(input_scale, fraction):
    exp_scale = realistic_exp_scale(input_scale, fraction)
    assert constants.softmax_constants(input_scale, exp_scale) == constants.SoftmaxConstants(
        **vars(ref.softmax_constants(input_scale, exp_scale))
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=1024), st.integers(min_value=0, max_value=2**31))
def test_layernorm_constants_equal_the_reference(channels, seed):
    rng = np.random.default_rng(seed)
    weight = (rng.uniform(0.05, 3, channels) * rng.choice([-1, 1], channels)).astype(F32)
    bias = rng.normal(0, 1, channels).astype(F32)
    ours, theirs = constants.layernorm_constants(weight, bias), ref.layernorm_constants(weight, bias)
    np.testing.assert_array_equal(ours.bias_int, theirs.bias_int)
    np.testing.assert_array_equal(ours.output_scale, theirs.output_scale)


def test_constant_errors_match_the_reference():
    for call in (lambda m: m.gelu_constants([1e-30]), lambda m: m.softmax_constants(0.05, 1.0),
                 lambda m: m.layernorm_constants(np.zeros(3, F32), np.ones(3, F32))):
        with pytest.raises(ValueError):
            call(ref)
        with pytest.raises(ValueError):
            call(constants)


def test_kernel_constants_equal_the_reference():
    from trt_runtime.backends.tensorrt.plugins import kernels

    pytest.importorskip("triton")
    assert int(kernels.GELU_SHIFT_BITS) == ref.GELU_SHIFT_BITS
    assert int(kernels.EXP_SHIFT_BITS) == ref.EXP_SHIFT_BITS and int(kernels.EXP_MAX_Q) == ref.EXP_MAX_Q
    assert int(kernels.EXP_MAX) == 2 ** (ref.EXP_BITS - 1) - 1
    assert int(kernels.SOFTMAX_NUMERATOR) == 2**ref.SOFTMAX_SUM_BITS
    assert int(kernels.LAYERNORM_NUMERATOR) == 2**ref.LAYERNORM_FACTOR_BITS
    assert int(kernels.ISQRT_ITERATIONS) == ref.ISQRT_ITERATIONS


# --------------------------------------------------------------------------------------------------
# AOT: the kernels compile to PTX for TensorRT's calling convention (no GPU needed)

PTX = """
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
{
\tld.param.b64 \t%rd1, [k_param_0];
\tld.param.b32 \t%r1, [k_param_1];
\tld.param.b64 \t%rd2, [k_param_2];
}
"""


def _entry_params(ptx: str, name: str) -> list[str]:
    match = re.search(rf"\.entry\s+{name}\s*\(([^)]*)\)", ptx)
    assert match is not None
    return [p.strip().split()[-1] for p in match.group(1).split(",") if p.strip()]


def test_scratch_params_are_dropped_when_unused():
    from trt_runtime.backends.tensorrt.plugins.aot import drop_scratch_params

    ptx = drop_scratch_params(PTX, "k", 3)
    assert _entry_params(ptx, "k") == ["k_param_0", "k_param_1", "k_param_2"]
    assert ptx.count("ld.param") == 3 and "k_param_3" not in ptx
    assert drop_scratch_params(ptx, "k", 3) == ptx


def test_scratch_params_that_are_read_are_refused():
    from trt_runtime.backends.tensorrt.plugins.aot import AotCompileError, drop_scratch_params

    read = PTX.replace("}\n", "\tld.param.b64 \t%rd3, [k_param_3];\n}\n")
    with pytest.raises(AotCompileError, match="reads its parameter k_param_3"):
        drop_scratch_params(read, "k", 3)
    with pytest.raises(AotCompileError, match="fewer than the 6 expected"):
        drop_scratch_params(PTX, "k", 6)
    with pytest.raises(AotCompileError, match="no .entry other"):
        drop_scratch_params(PTX, "other", 3)


@pytest.fixture(scope="module")
def aot():
    pytest.importorskip("triton", reason="Triton is not installed")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted and cannot be compiled")
    from trt_runtime.backends.tensorrt.plugins import aot

    return aot


@pytest.mark.parametrize("capability", [80, 89, 90])
def test_kernels_compile_to_ptx_for_tensorrt(aot, capability):
    target = ("cuda", capability, 32)
    compiled = {
        # kernel: (tensor inputs + int32 sizes + output) as TensorRT passes them
        aot.int_gelu(True, target): 3 + 2 + 1,
        aot.int_gelu(False, target): 3 + 2 + 1,
        aot.int_softmax(0.05, realistic_exp_scale(0.05, 1.0), 8, target): 1 + 2 + 1,
        aot.int_layernorm(0.01, 2, target): 5 + 2 + 1,
    }
    for kernel, params in compiled.items():
        assert f".target sm_{capability}" in kernel.ptx
        names = _entry_params(kernel.ptx, kernel.name)
        assert len(names) == params, (kernel.name, names)
        assert kernel.block_threads == 128 and kernel.shared_mem >= 0
        assert f".reqntid {kernel.block_threads}" in kernel.ptx  # the block size TensorRT must launch with


def test_ptx_version_follows_the_driver(aot):
    """Triton 3.6 writes PTX ISA 8.7 (its ptxas 12.8) unless told otherwise, which drivers before CUDA 12.8
    refuse; the builder compiles for the driver it runs on (review D4)."""
    from triton.backends.nvidia.compiler import ptx_get_version

    assert aot.ptx_version_for_driver((12, 4)) == ptx_get_version("12.4") == 84
    assert aot.ptx_version_for_driver((13, 0)) == 87  # capped by Triton's own ptxas (12.8)
    assert aot.min_cuda_driver_for_ptx(84) == (12, 4) and aot.min_cuda_driver_for_ptx(87) == (12, 8)
    target = ("cuda", 90, 32)
    assert ".version 8.4" in aot.int_gelu(False, target, ptx_version=84).ptx
    assert ".version 8.7" in aot.int_gelu(False, target).ptx


def test_aot_constexprs_carry_the_reference_constants(aot):
    exp_scale = realistic_exp_scale(0.05, 1.0)
    pairs = dict(aot.softmax_constexprs(0.05, exp_scale, 8))
    expected = ref.softmax_constants(0.05, exp_scale)
    assert (pairs["X0_INT"], pairs["B_INT"], pairs["C_INT"]) == (expected.x0_int, expected.b_int, expected.c_int)
    assert (pairs["EXP_MANTISSA"], pairs["EXP_EXPONENT"]) == (expected.exp_mantissa, expected.exp_exponent)
    assert pairs["INPUT_SCALE"] == float(F32(0.05)) and pairs["OUTPUT_BITS"] == 8
    with pytest.raises(ValueError, match="shift must be >= 0"):
        aot.layernorm_constexprs(0.01, -1)
