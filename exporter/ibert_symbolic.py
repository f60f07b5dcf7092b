"""TorchScript-exporter symbolics: each `torch.ops.ibert.*` custom op becomes one `ibert::` ONNX node.

The torch ops' arguments after the tensors are the ONNX attributes, in order
(models.quantization.integer.ops); here they become node attributes of the matching type, and the
node's output gets the op's integer type (trt_runtime.contract.ibert.INTEGER_OUTPUT_TYPES) so that
the traced integer arithmetic around it (bias adds, masks, reshapes) keeps its types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.onnx import register_custom_op_symbolic, symbolic_helper

from trt_runtime.contract import ibert

_TORCH_TYPES: dict[type, torch.dtype] = {np.int32: torch.int32, np.int64: torch.int64}


def _typed(output: Any, op_type: str, like: Any, sizes: list[int | None] | None = None) -> Any:
    """The output's type: the op's integer type, `like`'s shape (or `sizes`), for the exporter's inference."""
    dtype = _TORCH_TYPES[ibert.INTEGER_OUTPUT_TYPES[op_type]]
    kind = like.type().with_dtype(dtype)
    if sizes is not None:
        kind = kind.with_sizes(sizes)
    output.setType(kind)
    return output


def _node(g: Any, op_type: str, *inputs: Any, **attributes: Any) -> Any:
    return g.op(f"{ibert.DOMAIN}::{op_type}", *inputs, **attributes)


@symbolic_helper.parse_args("v", "fs", "fs", "is", "is", "is")
def _int_gelu(
    g: Any, x: Any, input_scale: list[float], output_scale: list[float], b_int: list[int], c_int: list[int],
    shift_int: list[int],
) -> Any:
    node = _node(
        g, "IntGELU", x, input_scale_f=input_scale, output_scale_f=output_scale, b_int_i=b_int, c_int_i=c_int,
        shift_int_i=shift_int,
    )
    return _typed(node, "IntGELU", x)


@symbolic_helper.parse_args("v", "i", "i", "f", "f", "f", "i", "i", "i", "i", "i")
def _int_softmax(
    g: Any, x: Any, axis: int, output_bits: int, input_scale: float, exp_scale: float, output_scale: float,
    x0_int: int, b_int: int, c_int: int, exp_mantissa: int, exp_exponent: int,
) -> Any:
    node = _node(
        g, "IntSoftmax", x, axis_i=axis, output_bits_i=output_bits, input_scale_f=input_scale, exp_scale_f=exp_scale,
        output_scale_f=output_scale, x0_int_i=x0_int, b_int_i=b_int, c_int_i=c_int, exp_mantissa_i=exp_mantissa,
        exp_exponent_i=exp_exponent,
    )
    return _typed(node, "IntSoftmax", x)


@symbolic_helper.parse_args("v", "v", "v", "i", "f", "i", "fs", "is")
def _int_layernorm(
    g: Any, x: Any, weight: Any, bias: Any, axis: int, input_scale: float, shift: int, output_scale: list[float],
    bias_int: list[int],
) -> Any:
    node = _node(
        g, "IntLayerNorm", x, weight, bias, axis_i=axis, input_scale_f=input_scale, shift_i=shift,
        output_scale_f=output_scale, bias_int_i=bias_int,
    )
    return _typed(node, "IntLayerNorm", x)


def _matmul_sizes(a: Any, b: Any) -> list[int | None] | None:
    a_sizes, b_sizes = symbolic_helper._get_tensor_sizes(a), symbolic_helper._get_tensor_sizes(b)
    if a_sizes is None or b_sizes is None or len(a_sizes) < 2 or len(b_sizes) < 2:
        return None
    batch = a_sizes[:-2] if len(a_sizes) >= len(b_sizes) else b_sizes[:-2]
    return list(batch) + [a_sizes[-2], b_sizes[-1]]


def _matmul(op_type: str) -> Callable[..., Any]:
    @symbolic_helper.parse_args("v", "v", "f", "fs")
    def symbolic(g: Any, a: Any, b: Any, a_scale: float, b_scale: list[float]) -> Any:
        return _typed(_node(g, op_type, a, b, a_scale_f=a_scale, b_scale_f=b_scale), op_type, a, _matmul_sizes(a, b))

    return symbolic


def _requantize(op_type: str) -> Callable[..., Any]:
    @symbolic_helper.parse_args("v", "v", "fs", "f", "fs", "i", "is", "is", "i", "i")
    def symbolic(
        g: Any, x: Any, identity: Any, input_scale: list[float], identity_scale: float, output_scale: list[float],
        output_bits: int, multiplier: list[int], shift: list[int], identity_multiplier: int, identity_shift: int,
    ) -> Any:
        node = _node(
            g, op_type, x, identity, input_scale_f=input_scale, identity_scale_f=identity_scale,
            output_scale_f=output_scale, output_bits_i=output_bits, multiplier_i=multiplier, shift_i=shift,
            identity_multiplier_i=identity_multiplier, identity_shift_i=identity_shift,
        )
        return _typed(node, op_type, x)

    return symbolic


SYMBOLICS: dict[str, Callable[..., Any]] = {
    "ibert::int_gelu": _int_gelu,
    "ibert::int_softmax": _int_softmax,
    "ibert::int_layernorm": _int_layernorm,
    "ibert::int_matmul": _matmul("IntMatMul"),
    "ibert::int_matmul_wide": _matmul("IntMatMulWide"),
    "ibert::requantize": _requantize("Requantize"),
    "ibert::requantize_wide": _requantize("RequantizeWide"),
}


def register_ibert_symbolics(opset: int) -> None:
    """Register the symbolics for `opset` (idempotent: a later registration replaces the earlier)."""
    from models.quantization.integer.ops import ONNX_OP_TYPES  # defines the torch ops the symbolics map

    assert set(SYMBOLICS) == set(ONNX_OP_TYPES), "a torch op without its symbolic"
    for name, symbolic in SYMBOLICS.items():
        register_custom_op_symbolic(name, symbolic, opset)
