"""I-BERT integer-only encoder (`quantization="integer"`) for ibert, roberta and bert checkpoints.

The module tree and names are Hugging Face's `IBertModel` (`embeddings.embeddings_act1`,
`encoder.layer.N.attention.self.query_activation`, `...softmax`, `...output.ln_input_act`,
`...LayerNorm`, `pre_intermediate_act`, ...), so I-BERT `quant_mode=true` checkpoints load with their
activation ranges and LayerNorm shifts, and float I-BERT, RoBERTa and BERT checkpoints load their
weights (then need calibration: models.quantization.integer.calibration). Nothing in it depends on
RoBERTa: BERT positions (absolute) and token types work the same way. Every module passes its output
as an `IntegerTensor` (integers, their grid and a static bound); the pooler and the task heads take
the dequantized last hidden state and stay float, as in I-BERT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from models.architectures import Architecture, max_positions
from models.bert import BertPooler
from models.layers import check_sequence_length, extended_attention_mask, roberta_position_ids
from models.quantization.integer.modules import (
    IntegerTensor,
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
    Scale,
    anchored,
    attention_scores_scale,
    dropout,
    int_matmul,
    on_grid,
    snap,
)
from models.quantization.recipe import (  # the recipe owns the sites' names, their check and the default
    DEFAULT_WIDE_ACTIVATIONS,
    WIDE_ACTIVATION_SITE_NAMES,
    check_wide_activations,
)

# I-BERT's bit widths (IBertEmbeddings / IBertSelfAttention / IBertSelfOutput / IBertLayer)
EMBEDDING_BIT = 8
EMBEDDING_ACT_BIT = 16
ACT_BIT = 8
WEIGHT_BIT = 8
BIAS_BIT = 32
LN_INPUT_BIT = 22
LN_OUTPUT_BIT = 32

#: bits of a widened activation site (I-BERT's own widths elsewhere: 16, 22, 32)
WIDE_ACTIVATION_BIT = 16
#: bits of a widened softmax output: probabilities in [0, 2**14], the widest that `IntMatMulWide` (A in
#: [-2**15, 2**15 - 1]) takes; the exp integers it divides are 16-bit (trt_runtime.contract.ibert.EXP_BITS)
WIDE_SOFTMAX_OUTPUT_BIT = 14
#: activation sites that `wide_activations` widens, named as the qdq side names its keep_float sites
#: (models.quantization.SENSITIVE_SITES), with their modules (names in the backbone; {i}: every layer):
#: QuantActs to WIDE_ACTIVATION_BIT instead of ACT_BIT, the IntSoftmax to WIDE_SOFTMAX_OUTPUT_BIT:
#: - "ffn-input": the input of the FFN input projection (the attention block's LayerNorm output, also the
#:   FFN's residual); its GEMM's accumulator is then requantized onto the grid an 8-bit input would give
#:   (a dyadic `Requantize`, one rounding of the exact sum) so that the i-GELU's constants (~1 / scale^2)
#:   stay those of the 8-bit layout and within int64 (IBertIntegerIntermediate);
#: - "ffn-output-input": the input of the FFN output projection (the i-GELU output, long one-sided tail);
#: - "hidden-states": the encoder's hidden states, input of every layer's Q/K/V projections and residual;
#: - "softmax-output": the attention probabilities (I-BERT: 8 bits, steps of 1/256).
#: Integer-only still: a 16-bit x 8-bit GEMM (and probabilities x V, at any width) is two exact 8-bit GEMMs of
#: the activation's high and low bytes (`IntMatMulWide`), also in TensorRT (docs/integer.md). The query and
#: key activations cannot widen: the attention scores' scale would shrink 2**16-fold and the i-exp constants
#: (~1 / scale^2) overflow int64.
WIDE_ACTIVATION_SITES: dict[str, tuple[str, ...]] = {
    "ffn-input": ("encoder.layer.{i}.attention.output.output_activation", "encoder.layer.{i}.pre_intermediate_act"),
    "ffn-output-input": ("encoder.layer.{i}.intermediate.output_activation", "encoder.layer.{i}.pre_output_act"),
    "hidden-states": ("embeddings.output_activation", "encoder.layer.{i}.output.output_activation"),
    "softmax-output": ("encoder.layer.{i}.attention.self.softmax",),
}
assert tuple(WIDE_ACTIVATION_SITES) == WIDE_ACTIVATION_SITE_NAMES  # the recipe's names, in its order


def i_bert_grids(config: PretrainedConfig, arch: Architecture) -> bool:
    """Whether the checkpoint's grids are I-BERT's (every encoder layer on the embeddings' scale): I-BERT
    checkpoints saved with quant_mode=true, whose ranges were trained that way."""
    return arch.model_type == "ibert" and bool(getattr(config, "quant_mode", False))


def default_wide_activations(config: PretrainedConfig, arch: Architecture) -> tuple[str, ...]:
    """() for an I-BERT checkpoint saved with quant_mode=true (Hugging Face's numerics), else the default."""
    return () if i_bert_grids(config, arch) else DEFAULT_WIDE_ACTIVATIONS


def integer_settings_for(
    config: PretrainedConfig,
    arch: Architecture,
    force_dequant: str | None = None,
    wide_activations: Iterable[str] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(force_dequant, wide_activations) the integer model runs with: each as given, or None for the
    checkpoint's: its config's force_dequant (else "none", IBertConfig's default) and wide_activations (else
    `default_wide_activations`). The one home of those defaults: the model applies them and an export
    records them, so whatever compares a recipe with an export's record resolves a recipe here."""
    if force_dequant is None:
        force_dequant = str(getattr(config, "force_dequant", None) or "none")
    if wide_activations is None:
        wide_activations = getattr(config, "wide_activations", None)
    wide = default_wide_activations(config, arch) if wide_activations is None else check_wide_activations(wide_activations)
    return force_dequant, wide


def wide_activation_names(sites: Iterable[str], num_layers: int) -> set[str]:
    """The backbone's QuantAct and IntSoftmax names that `sites` widen."""
    return {
        name.format(i=i)
        for site in check_wide_activations(sites)
        for name in WIDE_ACTIVATION_SITES[site]
        for i in range(num_layers if "{i}" in name else 1)
    }


def _linear(in_features: int, out_features: int) -> QuantLinear:
    return QuantLinear(in_features, out_features, bias=True, weight_bit=WEIGHT_BIT, bias_bit=BIAS_BIT, per_channel=True)


def _layer_norm(config: PretrainedConfig) -> IntLayerNorm:
    return IntLayerNorm(
        config.hidden_size, eps=config.layer_norm_eps, output_bit=LN_OUTPUT_BIT, force_dequant=config.force_dequant
    )


def _dropout(module: nn.Dropout, x: IntegerTensor | Tensor) -> IntegerTensor | Tensor:
    return dropout(module, x) if isinstance(x, IntegerTensor) else module(x)


class IBertIntegerEmbeddings(nn.Module):
    def __init__(self, config: PretrainedConfig, position_style: str):
        super().__init__()
        self.position_style = position_style
        self.padding_idx = config.pad_token_id
        self.word_embeddings = QuantEmbedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id, weight_bit=EMBEDDING_BIT
        )
        self.token_type_embeddings = QuantEmbedding(config.type_vocab_size, config.hidden_size, weight_bit=EMBEDDING_BIT)
        self.position_embeddings = QuantEmbedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id, weight_bit=EMBEDDING_BIT
        )
        self.embeddings_act1 = QuantAct(EMBEDDING_ACT_BIT)
        self.embeddings_act2 = QuantAct(EMBEDDING_ACT_BIT)  # in Hugging Face's model, never called
        self.LayerNorm = _layer_norm(config)
        self.output_activation = QuantAct(ACT_BIT)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> IntegerTensor:
        if self.position_style == "roberta":
            position_ids = roberta_position_ids(input_ids, self.padding_idx)
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids)
        words = self.word_embeddings(input_ids)
        types = self.token_type_embeddings(token_type_ids)
        embeddings = self.embeddings_act1(words, identity=types)
        positions = self.position_embeddings(position_ids)
        # (sic) Hugging Face requantizes both sums with embeddings_act1
        embeddings = self.embeddings_act1(embeddings, identity=positions)
        normalized = _dropout(self.dropout, self.LayerNorm(embeddings))
        return self.output_activation(normalized)


class IBertIntegerSelfAttention(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"config.json: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.query = _linear(config.hidden_size, config.hidden_size)
        self.key = _linear(config.hidden_size, config.hidden_size)
        self.value = _linear(config.hidden_size, config.hidden_size)
        self.query_activation = QuantAct(ACT_BIT)
        self.key_activation = QuantAct(ACT_BIT)
        self.value_activation = QuantAct(ACT_BIT)
        self.output_activation = QuantAct(ACT_BIT)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.softmax = IntSoftmax(ACT_BIT, force_dequant=config.force_dequant)

    def _heads(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, -1, self.attention_head_size).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        batch, _, seq, _ = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, seq, -1)

    def forward(self, hidden_states: IntegerTensor, grid: Scale, attention_mask: Tensor) -> IntegerTensor:
        query = self.query_activation(self.query(hidden_states, grid))
        key = self.key_activation(self.key(hidden_states, grid))
        value = self.value_activation(self.value(hidden_states, grid))
        head_size = self.attention_head_size
        if not self.softmax.quant_mode:
            # force_dequant softmax: the attention core in float on the dequantized Q, K, V, as Hugging Face
            q_f, k_f, v_f = (self._heads(x.dequantize()) for x in (query, key, value))
            scores_f = torch.matmul(q_f, k_f.transpose(-1, -2)) / math.sqrt(head_size)
            probs_f = self.dropout(nn.functional.softmax(scores_f + attention_mask, dim=-1))
            return self.output_activation(self._merge_heads(torch.matmul(probs_f, v_f)))
        # scores = Q K^T, on the grid query_scale * key_scale / sqrt(d) (Hugging Face divides the float scores)
        q, k, v = (_map(x, self._heads) for x in (query, key, value))
        k_t = _map(k, lambda t: t.transpose(-1, -2))
        scores = int_matmul(q, k_t.values, key.scale, head_size * key.bound, layer=self.softmax.name)
        scores = replace(scores, scale=attention_scores_scale(query.scale, key.scale, head_size))
        if q.shadow is not None or k.shadow is not None:
            scores = anchored(scores, torch.matmul(q.dequantize(), k_t.dequantize()) / math.sqrt(head_size))
        probs = self.softmax(scores, attention_mask)
        if self.dropout.training and self.dropout.p > 0:  # dropped probabilities are floats: Hugging Face's float GEMM
            context_float = torch.matmul(self.dropout(probs.dequantize()), v.dequantize())
            scale = (probs.scale * value.scale).astype(np.float32)
            bound = 2**self.softmax.output_bit * value.bound
            return self.output_activation(on_grid(self._merge_heads(context_float), scale, bound))
        # the probabilities of a row sum to at most 2**bits: |context| <= 2**bits x |value| (the bound int_matmul gives)
        context = int_matmul(probs, v.values, value.scale, value.bound, layer=self.output_activation.name)
        if probs.shadow is not None or v.shadow is not None:
            context = anchored(context, torch.matmul(probs.dequantize(), v.dequantize()))
        return self.output_activation(_map(context, self._merge_heads))


def _map(x: IntegerTensor, fn) -> IntegerTensor:
    """A reshaping / transposition applied to the integers and to the shadow."""
    return replace(x, values=fn(x.values), shadow=None if x.shadow is None else fn(x.shadow))


class IBertIntegerResidualOutput(nn.Module):
    """dense -> dropout -> (+ residual, requantized to 22 bits) -> LayerNorm -> 8 bits (SelfOutput and Output)."""

    def __init__(self, config: PretrainedConfig, in_features: int):
        super().__init__()
        self.dense = _linear(in_features, config.hidden_size)
        self.ln_input_act = QuantAct(LN_INPUT_BIT)
        self.LayerNorm = _layer_norm(config)
        self.output_activation = QuantAct(ACT_BIT)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: IntegerTensor, residual: IntegerTensor) -> IntegerTensor:
        projected = _dropout(self.dropout, self.dense(hidden_states))
        summed = self.ln_input_act(projected, identity=residual)
        return self.output_activation(self.LayerNorm(summed))


class IBertIntegerAttention(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.self = IBertIntegerSelfAttention(config)
        self.output = IBertIntegerResidualOutput(config, config.hidden_size)

    def forward(self, hidden_states: IntegerTensor, grid: Scale, attention_mask: Tensor) -> IntegerTensor:
        context = self.self(hidden_states, grid, attention_mask)
        # the residual too is taken on I-BERT's grid (FixedPointMul's round(identity / identity_scaling_factor))
        residual = snap(hidden_states, grid, layer=self.output.ln_input_act.name)
        return self.output(context, residual)


class IBertIntegerIntermediate(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if config.hidden_act != "gelu":
            raise ValueError(
                f"config.json: hidden_act {config.hidden_act!r}; I-BERT's integer mode supports only 'gelu' "
                f"(use quantization='qdq' or 'none' for this model)"
            )
        self.dense = _linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = IntGELU(force_dequant=config.force_dequant)
        self.output_activation = QuantAct(ACT_BIT)
        #: the GEMM's output grid over its input's: 2**(16 - 8) when its input is a widened 16-bit site
        #: ("ffn-input"), so the i-GELU gets the input scale of the 8-bit layout (its constants ~1 / scale^2
        #: would overflow int64 on the 256x finer accumulator grid); set by the backbone
        self.gelu_grid_factor = 1

    def forward(self, hidden_states: IntegerTensor) -> IntegerTensor:
        grid = None
        if self.gelu_grid_factor != 1:
            grid = np.asarray(hidden_states.scale, np.float32).reshape(1) * np.float32(self.gelu_grid_factor)
        return self.output_activation(self.intermediate_act_fn(self.dense(hidden_states, grid)))


class IBertIntegerLayer(nn.Module):
    """One encoder layer; `grid` is the scale I-BERT passes with its input (see IBertIntegerEncoder)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.attention = IBertIntegerAttention(config)
        self.intermediate = IBertIntegerIntermediate(config)
        self.output = IBertIntegerResidualOutput(config, config.intermediate_size)
        self.pre_intermediate_act = QuantAct(ACT_BIT)
        self.pre_output_act = QuantAct(ACT_BIT)

    def forward(self, hidden_states: IntegerTensor, grid: Scale, attention_mask: Tensor) -> IntegerTensor:
        attention_output = self.pre_intermediate_act(self.attention(hidden_states, grid, attention_mask))
        intermediate = self.pre_output_act(self.intermediate(attention_output))
        return self.output(intermediate, attention_output)


class IBertIntegerEncoder(nn.Module):
    """`embeddings_grid`: give every layer the embeddings' scale (I-BERT's checkpoints), else its input's own."""

    def __init__(self, config: PretrainedConfig, embeddings_grid: bool = True):
        super().__init__()
        self.embeddings_grid = embeddings_grid
        self.layer = nn.ModuleList(IBertIntegerLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: IntegerTensor, attention_mask: Tensor) -> IntegerTensor:
        # (sic) I-BERT (fairseq and Hugging Face alike) gives every layer the embeddings' scale, not the
        # previous layer's: the quantization grids of its checkpoints are defined that way. Layers after
        # the first then snap their GEMM accumulators and residual onto that grid (FixedPointMul's
        # rounding). Checkpoints calibrated here have grids of their own: each layer takes its input's.
        grid = hidden_states.scale
        for layer in self.layer:
            hidden_states = layer(hidden_states, grid if self.embeddings_grid else hidden_states.scale, attention_mask)
        return hidden_states


class IBertIntegerBackbone(nn.Module):
    """Integer-only `IBertModel` for ibert, roberta and bert: returns (sequence_output, pooled_output or None).

    sequence_output is the dequantized last hidden state (float32); `integer_output` holds the last
    IntegerTensor of a forward pass for callers that want the integers. config.force_dequant: I-BERT's
    (default none). config.wide_activations: the WIDE_ACTIVATION_SITES widened (default:
    default_wide_activations).
    """

    def __init__(self, config: PretrainedConfig, arch: Architecture, add_pooling_layer: bool = True):
        super().__init__()
        config.force_dequant, config.wide_activations = integer_settings_for(config, arch)
        self.arch = arch
        self.max_length = max_positions(config, arch)
        self.causal = bool(getattr(config, "is_decoder", False))
        self.embeddings = IBertIntegerEmbeddings(config, arch.position_style)
        self.encoder = IBertIntegerEncoder(config, embeddings_grid=i_bert_grids(config, arch))
        self.pooler = BertPooler(config) if add_pooling_layer else None
        widened = wide_activation_names(config.wide_activations, config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, QuantAct | QuantLinear | IntLayerNorm | IntSoftmax | IntGELU):
                module.name = name
            if isinstance(module, QuantAct) and name in widened:
                module.activation_bit = WIDE_ACTIVATION_BIT
                widened.remove(name)
            elif isinstance(module, IntSoftmax) and name in widened:
                module.output_bit = WIDE_SOFTMAX_OUTPUT_BIT
                widened.remove(name)
            elif isinstance(module, IBertIntegerIntermediate) and "ffn-input" in config.wide_activations:
                module.gelu_grid_factor = 2 ** (WIDE_ACTIVATION_BIT - ACT_BIT)
        assert not widened, f"WIDE_ACTIVATION_SITES names modules the backbone does not have: {sorted(widened)}"

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        check_sequence_length(input_ids, self.max_length, self.arch.model_type)
        hidden_states = self.embeddings(input_ids, token_type_ids)
        mask = extended_attention_mask(attention_mask, torch.float32, causal=self.causal)
        sequence_output = self.encoder(hidden_states, mask).dequantize()
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled
