"""I-BERT integer-only encoder (`quantization="integer"`) for ibert, roberta and bert checkpoints.

The module tree and names are Hugging Face's `IBertModel` (`embeddings.embeddings_act1`,
`encoder.layer.N.attention.self.query_activation`, `...softmax`, `...output.ln_input_act`,
`...LayerNorm`, `pre_intermediate_act`, ...), so I-BERT `quant_mode=true` checkpoints load with their
activation ranges and LayerNorm shifts, and float I-BERT, RoBERTa and BERT checkpoints load their
weights (then need calibration: models.quantization.integer.calibration). Nothing in it depends on
RoBERTa: BERT positions (absolute) and token types work the same way. Every module passes its output
with its scale (`(tensor, scale)`, as Hugging Face does); the pooler stays float, as in I-BERT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from models.architectures import Architecture, max_positions
from models.bert import BertPooler
from models.layers import check_sequence_length, extended_attention_mask, roberta_position_ids
from models.quantization.integer.modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
    Scale,
    attention_scores_scale,
)
from models.quantization.recipe import DEFAULT_WIDE_ACTIVATIONS  # the recipe owns the default sites

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
#: activation sites that `wide_activations` requantizes to WIDE_ACTIVATION_BIT instead of ACT_BIT, named as
#: the qdq side names its keep_float sites (models.quantization.SENSITIVE_SITES), with their QuantActs
#: (module names in the backbone; {i}: every layer):
#: - "ffn-output-input": the input of the FFN output projection (the i-GELU output, long one-sided tail);
#: - "hidden-states": the encoder's hidden states, input of every layer's Q/K/V projections and residual.
#: Integer-only still (16-bit x 8-bit GEMMs); an ONNX export has no int16 Q/DQ for them, so the GEMMs they
#: feed run in float in TensorRT (docs/integer.md). Sites before the i-GELU or the attention scores cannot
#: widen: the i-GELU and i-exp constants (~1 / scale^2) would overflow int64.
WIDE_ACTIVATION_SITES: dict[str, tuple[str, ...]] = {
    "ffn-output-input": ("encoder.layer.{i}.intermediate.output_activation", "encoder.layer.{i}.pre_output_act"),
    "hidden-states": ("embeddings.output_activation", "encoder.layer.{i}.output.output_activation"),
}


def check_wide_activations(sites: Iterable[str]) -> tuple[str, ...]:
    """The sites as a tuple in canonical order; unknown names are a ValueError naming the valid ones."""
    if isinstance(sites, str):
        sites = (sites,)
    chosen = tuple(sites)
    unknown = [site for site in chosen if site not in WIDE_ACTIVATION_SITES]
    if unknown:
        raise ValueError(
            f"wide_activations: unknown site(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(WIDE_ACTIVATION_SITES)} (or none: I-BERT's 8-bit activations everywhere)"
        )
    return tuple(site for site in WIDE_ACTIVATION_SITES if site in chosen)


def default_wide_activations(config: PretrainedConfig, arch: Architecture) -> tuple[str, ...]:
    """() for an I-BERT checkpoint saved with quant_mode=true (Hugging Face's numerics), else the default."""
    if arch.model_type == "ibert" and getattr(config, "quant_mode", False):
        return ()
    return DEFAULT_WIDE_ACTIVATIONS


def wide_activation_names(sites: Iterable[str], num_layers: int) -> set[str]:
    """The backbone's QuantAct names that `sites` widen."""
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

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> tuple[Tensor, Scale | None]:
        if self.position_style == "roberta":
            position_ids = roberta_position_ids(input_ids, self.padding_idx)
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids)
        words, words_scale = self.word_embeddings(input_ids)
        types, types_scale = self.token_type_embeddings(token_type_ids)
        embeddings, scale = self.embeddings_act1(words, words_scale, identity=types, identity_scaling_factor=types_scale)
        positions, positions_scale = self.position_embeddings(position_ids)
        # (sic) Hugging Face requantizes both sums with embeddings_act1
        embeddings, scale = self.embeddings_act1(
            embeddings, scale, identity=positions, identity_scaling_factor=positions_scale
        )
        embeddings, scale = self.LayerNorm(embeddings, scale)
        embeddings = self.dropout(embeddings)
        return self.output_activation(embeddings, scale)


class IBertIntegerSelfAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, input_on_own_grid: bool = True):
        super().__init__()
        self.snap_inputs = not input_on_own_grid
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

    def forward(self, hidden_states: Tensor, scale: Scale, attention_mask: Tensor) -> tuple[Tensor, Scale | None]:
        snap = self.snap_inputs
        query, query_scale = self.query_activation(*self.query(hidden_states, scale), snap_inputs=snap)
        key, key_scale = self.key_activation(*self.key(hidden_states, scale), snap_inputs=snap)
        value, value_scale = self.value_activation(*self.value(hidden_states, scale), snap_inputs=snap)
        query, key, value = self._heads(query), self._heads(key), self._heads(value)

        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        assert query_scale is not None and key_scale is not None and value_scale is not None
        scores_scale = attention_scores_scale(query_scale, key_scale, self.attention_head_size)
        probs, probs_scale = self.softmax(scores + attention_mask, scores_scale)
        probs = self.dropout(probs)

        context = torch.matmul(probs, value)
        context_scale = None if probs_scale is None else probs_scale * value_scale
        batch, _, seq, _ = context.shape
        context = context.permute(0, 2, 1, 3).reshape(batch, seq, -1)
        return self.output_activation(context, context_scale)


class IBertIntegerResidualOutput(nn.Module):
    """dense -> dropout -> (+ residual, requantized to 22 bits) -> LayerNorm -> 8 bits (SelfOutput and Output)."""

    def __init__(self, config: PretrainedConfig, in_features: int, residual_on_own_grid: bool = True):
        super().__init__()
        self.snap_inputs = not residual_on_own_grid
        self.dense = _linear(in_features, config.hidden_size)
        self.ln_input_act = QuantAct(LN_INPUT_BIT)
        self.LayerNorm = _layer_norm(config)
        self.output_activation = QuantAct(ACT_BIT)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: Tensor, scale: Scale, residual: Tensor, residual_scale: Scale
    ) -> tuple[Tensor, Scale | None]:
        hidden_states, scale_out = self.dense(hidden_states, scale)
        hidden_states = self.dropout(hidden_states)
        hidden_states, scale_out = self.ln_input_act(
            hidden_states, scale_out, residual, residual_scale, snap_inputs=self.snap_inputs
        )
        hidden_states, scale_out = self.LayerNorm(hidden_states, scale_out)
        return self.output_activation(hidden_states, scale_out)


class IBertIntegerAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, input_on_own_grid: bool = True):
        super().__init__()
        self.self = IBertIntegerSelfAttention(config, input_on_own_grid)
        self.output = IBertIntegerResidualOutput(config, config.hidden_size, residual_on_own_grid=input_on_own_grid)

    def forward(self, hidden_states: Tensor, scale: Scale, attention_mask: Tensor) -> tuple[Tensor, Scale | None]:
        context, context_scale = self.self(hidden_states, scale, attention_mask)
        assert context_scale is not None
        return self.output(context, context_scale, hidden_states, scale)


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

    def forward(self, hidden_states: Tensor, scale: Scale) -> tuple[Tensor, Scale | None]:
        hidden_states, scale_out = self.dense(hidden_states, scale)
        hidden_states, scale_out = self.intermediate_act_fn(hidden_states, scale_out)
        return self.output_activation(hidden_states, scale_out)


class IBertIntegerLayer(nn.Module):
    """One encoder layer. `first`: its input is on the grid of the scale it is given (see IBertIntegerEncoder)."""

    def __init__(self, config: PretrainedConfig, first: bool = True):
        super().__init__()
        self.attention = IBertIntegerAttention(config, input_on_own_grid=first)
        self.intermediate = IBertIntegerIntermediate(config)
        self.output = IBertIntegerResidualOutput(config, config.intermediate_size)
        self.pre_intermediate_act = QuantAct(ACT_BIT)
        self.pre_output_act = QuantAct(ACT_BIT)

    def forward(self, hidden_states: Tensor, scale: Scale, attention_mask: Tensor) -> tuple[Tensor, Scale]:
        attention_output, attention_scale = self.attention(hidden_states, scale, attention_mask)
        attention_output, attention_scale = self.pre_intermediate_act(attention_output, attention_scale)
        intermediate, intermediate_scale = self.pre_output_act(*self.intermediate(attention_output, attention_scale))
        assert attention_scale is not None and intermediate_scale is not None
        output, output_scale = self.output(intermediate, intermediate_scale, attention_output, attention_scale)
        assert output_scale is not None
        return output, output_scale


class IBertIntegerEncoder(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.layer = nn.ModuleList(IBertIntegerLayer(config, first=i == 0) for i in range(config.num_hidden_layers))

    def forward(self, hidden_states: Tensor, scale: Scale, attention_mask: Tensor) -> Tensor:
        # (sic) I-BERT (fairseq and Hugging Face alike) gives every layer the embeddings' scale, not the
        # previous layer's: the quantization grids of its checkpoints are defined that way. Layers after
        # the first therefore round their input to that grid where FixedPointMul does (snap_inputs).
        for layer in self.layer:
            hidden_states, _ = layer(hidden_states, scale, attention_mask)
        return hidden_states


class IBertIntegerBackbone(nn.Module):
    """Integer-only `IBertModel` for ibert, roberta and bert: returns (sequence_output, pooled_output or None).

    config.force_dequant: I-BERT's (default none). config.wide_activations: the WIDE_ACTIVATION_SITES requantized
    to 16 bits (default: default_wide_activations).
    """

    def __init__(self, config: PretrainedConfig, arch: Architecture, add_pooling_layer: bool = True):
        super().__init__()
        if not hasattr(config, "force_dequant"):
            config.force_dequant = "none"
        wide = getattr(config, "wide_activations", None)
        config.wide_activations = default_wide_activations(config, arch) if wide is None else check_wide_activations(wide)
        self.arch = arch
        self.max_length = max_positions(config, arch)
        self.causal = bool(getattr(config, "is_decoder", False))
        self.embeddings = IBertIntegerEmbeddings(config, arch.position_style)
        self.encoder = IBertIntegerEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        widened = wide_activation_names(config.wide_activations, config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, QuantAct):
                module.name = name
                if name in widened:
                    module.activation_bit = WIDE_ACTIVATION_BIT
                    widened.remove(name)
        assert not widened, f"WIDE_ACTIVATION_SITES names modules the backbone does not have: {sorted(widened)}"

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        check_sequence_length(input_ids, self.max_length, self.arch.model_type)
        hidden_states, scale = self.embeddings(input_ids, token_type_ids)
        assert scale is not None
        mask = extended_attention_mask(attention_mask, hidden_states.dtype, causal=self.causal)
        sequence_output = self.encoder(hidden_states, scale, mask)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled
