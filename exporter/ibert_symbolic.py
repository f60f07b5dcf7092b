"""TorchScript-exporter symbolics: each `torch.ops.ibert.*` custom op becomes one `ibert::` ONNX node.

The torch ops' arguments after the tensors are the ONNX attributes, in order
(models.quantization.integer.ops); here they become node attributes of the matching type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.onnx import register_custom_op_symbolic, symbolic_helper

from trt_runtime.contract import ibert


def _typed_like(output: Any, x: Any) -> Any:
    output.setType(x.type())  # float32, same shape: lets the exporter's shape inference continue
    return output


@symbolic_helper.parse_args("v", "fs", "fs")
def _int_gelu(g: Any, x: Any, input_scale: list[float], output_scale: list[float]) -> Any:
    return _typed_like(
        g.op(f"{ibert.DOMAIN}::IntGELU", x, input_scale_f=input_scale, output_scale_f=output_scale), x
    )


@symbolic_helper.parse_args("v", "i", "i", "f", "f", "f")
def _int_softmax(
    g: Any, x: Any, axis: int, output_bits: int, input_scale: float, exp_scale: float, output_scale: float
) -> Any:
    node = g.op(
        f"{ibert.DOMAIN}::IntSoftmax", x, axis_i=axis, output_bits_i=output_bits, input_scale_f=input_scale,
        exp_scale_f=exp_scale, output_scale_f=output_scale,
    )
    return _typed_like(node, x)


@symbolic_helper.parse_args("v", "v", "v", "i", "f", "i", "fs")
def _int_layernorm(
    g: Any, x: Any, weight: Any, bias: Any, axis: int, input_scale: float, shift: int, output_scale: list[float]
) -> Any:
    node = g.op(
        f"{ibert.DOMAIN}::IntLayerNorm", x, weight, bias, axis_i=axis, input_scale_f=input_scale, shift_i=shift,
        output_scale_f=output_scale,
    )
    return _typed_like(node, x)


SYMBOLICS: dict[str, Callable[..., Any]] = {"ibert::int_gelu": _int_gelu, "ibert::int_softmax": _int_softmax, "ibert::int_layernorm": _int_layernorm}


def register_ibert_symbolics(opset: int) -> None:
    """Register the three symbolics for `opset` (idempotent: a later registration replaces the earlier)."""
    import models.quantization.integer.ops  # noqa: F401  (defines the torch ops the symbolics map)

    for name, symbolic in SYMBOLICS.items():
        register_custom_op_symbolic(name, symbolic, opset)
