"""Building blocks shared by the encoders: masks, position ids, and the quantization switch.

The encoders are written once, in float. Where QDQBERT puts fake quantization (linear inputs and
weights, attention matmul inputs, residual-add inputs) they call the factories below, which give
plain torch modules for `quantization="none"` and the toolkit's quantized modules for `"qdq"`.
Parameter names are the same either way, so one checkpoint loads into both.
"""

from __future__ import annotations

import torch
from torch import nn


def make_linear(in_features: int, out_features: int, quantization: str, bias: bool = True) -> nn.Linear:
    if quantization == "qdq":
        from models.quantization.qdq.nn import QuantLinear

        return QuantLinear(in_features, out_features, bias=bias)
    return nn.Linear(in_features, out_features, bias=bias)


def make_conv1x1(in_channels: int, out_channels: int, groups: int, quantization: str) -> nn.Conv1d:
    if quantization == "qdq":
        from models.quantization.qdq.nn import QuantConv1d

        return QuantConv1d(in_channels, out_channels, kernel_size=1, groups=groups)
    return nn.Conv1d(in_channels, out_channels, kernel_size=1, groups=groups)


def make_input_quantizer(quantization: str) -> nn.Module:
    """A per-tensor activation quantizer in qdq mode, the identity otherwise."""
    if quantization == "qdq":
        from models.quantization.qdq.nn import QuantLinear
        from models.quantization.qdq.tensor_quantizer import TensorQuantizer

        return TensorQuantizer(QuantLinear.default_quant_desc_input)
    return nn.Identity()


def extended_attention_mask(
    attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool = False
) -> torch.Tensor:
    """[batch, seq] 1/0 mask -> additive [batch, 1, q, seq] mask (0 where attended, dtype-min where not)."""
    mask = attention_mask[:, None, None, :].to(dtype)
    if causal:
        seq = attention_mask.shape[-1]
        lower = torch.ones(seq, seq, dtype=dtype, device=attention_mask.device).tril()
        mask = mask * lower[None, None, :, :]
    return (1.0 - mask) * torch.finfo(dtype).min


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Positions count from padding_idx + 1 over non-padding tokens; padding keeps padding_idx (fairseq)."""
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


def check_sequence_length(input_ids: torch.Tensor, limit: int, model_type: str) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # export traces one example; the runtime checks lengths against export.json instead
    length = input_ids.shape[-1]
    if length > limit:
        raise ValueError(
            f"input_ids has sequence length {length}, but this {model_type} model's position embeddings "
            f"cover at most {limit} tokens; truncate the input (tokenizer(..., truncation=True, "
            f"max_length={limit}))"
        )
