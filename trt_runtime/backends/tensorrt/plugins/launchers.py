"""Launch the ibert Triton kernels on torch tensors: what the JIT plugins run, and what the tests call.

Tensors are CUDA tensors on a GPU, or CPU tensors when TRITON_INTERPRET=1 was set before
`trt_runtime.backends.tensorrt.plugins.kernels` was imported (Triton's interpreter). The constant tables come from
`trt_runtime.contract.ibert` (`gelu_tables`, `layernorm_tables`), as the builder puts them into
the TensorRT network.
"""

from __future__ import annotations

import numpy as np
import torch
import triton

from trt_runtime.backends.tensorrt.plugins import aot, kernels


def _check(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    if tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {tensor.dtype}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _rows(x: torch.Tensor) -> tuple[int, int]:
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"expected a non-empty tensor of rank >= 1, got shape {tuple(x.shape)}")
    return x.numel() // x.shape[-1], x.shape[-1]


def _constexpr_kwargs(pairs: tuple[tuple[str, object], ...]) -> dict[str, object]:
    return dict(pairs)


def int_gelu(
    x: torch.Tensor, int_constants: torch.Tensor, float_constants: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """IntGELU over the last axis' channels; tables int64 [3, C], float32 [2, C] with C in (1, channels)."""
    _check("x", x, torch.float32)
    _check("int_constants", int_constants, torch.int64)
    _check("float_constants", float_constants, torch.float32)
    _, row_length = _rows(x)
    columns = int_constants.shape[-1]
    if int_constants.shape != (3, columns) or float_constants.shape != (2, columns) or columns not in (1, row_length):
        raise ValueError(
            f"IntGELU tables must be [3, C] and [2, C] with C = 1 or {row_length}; got "
            f"{tuple(int_constants.shape)}, {tuple(float_constants.shape)}"
        )
    y = torch.empty_like(x) if out is None else out
    n = x.numel()
    grid = (triton.cdiv(n, kernels.GELU_BLOCK),)
    kernels.int_gelu_kernel[grid](
        x, int_constants, float_constants, n, row_length, y,
        PER_CHANNEL=columns > 1, BLOCK=kernels.GELU_BLOCK, num_warps=kernels.NUM_WARPS,
    )
    return y


def int_softmax(
    x: torch.Tensor, input_scale: float, exp_scale: float, output_bits: int = 8, out: torch.Tensor | None = None
) -> torch.Tensor:
    """IntSoftmax over the last axis."""
    _check("x", x, torch.float32)
    n_rows, row_length = _rows(x)
    y = torch.empty_like(x) if out is None else out
    constexprs = _constexpr_kwargs(aot.softmax_constexprs(input_scale, exp_scale, output_bits))
    kernels.int_softmax_kernel[(n_rows,)](x, n_rows, row_length, y, num_warps=kernels.NUM_WARPS, **constexprs)
    return y


def int_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    int_constants: torch.Tensor,
    float_constants: torch.Tensor,
    input_scale: float,
    shift: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """IntLayerNorm over the last axis; tables int64 [1, C] (bias_int), float32 [1, C] (output scale)."""
    _check("x", x, torch.float32)
    _check("int_constants", int_constants, torch.int64)
    _check("float_constants", float_constants, torch.float32)
    n_rows, channels = _rows(x)
    if int_constants.shape != (1, channels) or float_constants.shape != (1, channels):
        raise ValueError(
            f"IntLayerNorm tables must be [1, {channels}]; got {tuple(int_constants.shape)}, {tuple(float_constants.shape)}"
        )
    y = torch.empty_like(x) if out is None else out
    constexprs = _constexpr_kwargs(aot.layernorm_constexprs(input_scale, shift))
    kernels.int_layernorm_kernel[(n_rows,)](
        x, weight, bias, int_constants, float_constants, n_rows, channels, y,
        num_warps=kernels.NUM_WARPS, **constexprs,
    )
    return y


def as_tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A NumPy table as a tensor on `like`'s device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(like.device)
