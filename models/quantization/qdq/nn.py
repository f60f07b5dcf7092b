"""Quantized layers: `nn.Linear` / `nn.Conv1d` with an input and a weight `TensorQuantizer`.

Drop-in for pytorch-quantization's `quant_nn.QuantLinear` / `quant_nn.QuantConv1d`: same parameter
names (`weight`, `bias`, so float checkpoints load unchanged), quantizers `_input_quantizer` (per
tensor) and `_weight_quantizer` (per output channel, axis 0, narrow range), and the class-level
defaults `default_quant_desc_input` / `default_quant_desc_weight`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from models.quantization.qdq.descriptor import (
    QUANT_DESC_8BIT_PER_CHANNEL_AXIS0,
    QUANT_DESC_8BIT_PER_TENSOR,
    QuantDescriptor,
)
from models.quantization.qdq.tensor_quantizer import TensorQuantizer


class _QuantInputWeightMixin:
    """The two quantizers and the defaults shared by the quantized layers."""

    default_quant_desc_input: QuantDescriptor = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight: QuantDescriptor = QUANT_DESC_8BIT_PER_CHANNEL_AXIS0
    _input_quantizer: TensorQuantizer
    _weight_quantizer: TensorQuantizer

    @classmethod
    def set_default_quant_desc_input(cls, value: QuantDescriptor) -> None:
        if not isinstance(value, QuantDescriptor):
            raise TypeError(f"expected a QuantDescriptor, got {type(value).__name__}")
        cls.default_quant_desc_input = value

    @classmethod
    def set_default_quant_desc_weight(cls, value: QuantDescriptor) -> None:
        if not isinstance(value, QuantDescriptor):
            raise TypeError(f"expected a QuantDescriptor, got {type(value).__name__}")
        cls.default_quant_desc_weight = value

    def _init_quantizers(self, quant_desc_input: QuantDescriptor | None, quant_desc_weight: QuantDescriptor | None):
        self._input_quantizer = TensorQuantizer(quant_desc_input or self.default_quant_desc_input)
        self._weight_quantizer = TensorQuantizer(quant_desc_weight or self.default_quant_desc_weight)

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    @property
    def weight_quantizer(self) -> TensorQuantizer:
        return self._weight_quantizer


class QuantLinear(_QuantInputWeightMixin, nn.Linear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quant_desc_input: QuantDescriptor | None = None,
        quant_desc_weight: QuantDescriptor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quantizers(quant_desc_input, quant_desc_weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input_quantizer(input), self._weight_quantizer(self.weight), self.bias)


class QuantConv1d(_QuantInputWeightMixin, nn.Conv1d):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        *,
        quant_desc_input: QuantDescriptor | None = None,
        quant_desc_weight: QuantDescriptor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        nn.Conv1d.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self._init_quantizers(quant_desc_input, quant_desc_weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._input_quantizer(input), self._weight_quantizer(self.weight), self.bias)
