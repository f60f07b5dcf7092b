"""The ibert Triton kernels compiled for a CUDA GPU (marked `gpu`), exactly against the NumPy int64 reference.

Apart from test_plugin_kernels.py so that a GPU machine with only torch, Triton, NumPy and pytest can run
it (scripts/gpu_check.sh): no hypothesis, no ONNX. On a GPU machine:
PYTHONPATH=. python3 -m pytest -m gpu tests/trt_runtime/backends/tensorrt   (results go in tests/GPU_RESULTS.md)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.fixtures.ibert_kernel_cases import all_cases, assert_bitwise_equal, run_case

CASES = all_cases()


# --------------------------------------------------------------------------------------------------
# the compiled kernels on a CUDA GPU


def _cuda_available() -> bool:
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU with Triton and PyTorch")
def test_gpu_kernel_matches_reference_exactly(case):
    import torch

    from trt_runtime.backends.tensorrt.plugins import launchers

    actual = run_case(case, launchers, lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda())
    assert_bitwise_equal(actual, case.expected())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU with Triton and PyTorch")
@pytest.mark.parametrize("seed", range(5))
def test_gpu_kernels_on_random_scales(seed):
    """More scales and shapes than the fixed cases (GELU per channel, softmax bits, LayerNorm shifts)."""
    import torch

    from tests.fixtures.ibert_kernel_cases import gelu_cases, layernorm_cases, softmax_cases
    from trt_runtime.backends.tensorrt.plugins import launchers

    for case in gelu_cases(seed + 10) + softmax_cases(seed + 20) + layernorm_cases(seed + 30):
        actual = run_case(case, launchers, lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda())
        assert_bitwise_equal(actual, case.expected())
