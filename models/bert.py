"""BERT-shaped encoder for BERT, RoBERTa and I-BERT (float) checkpoints, with QDQBERT's quantizer sites.

Module and parameter names follow Hugging Face's `BertModel` / `RobertaModel` / `IBertModel`, and the
quantizer names follow Hugging Face's former `QDQBertModel` (`matmul_q_input_quantizer`,
`add_local_input_quantizer`, ... on top of pytorch-quantization's `QuantLinear`), so both float and
QDQBERT checkpoints load unchanged. In `quantization="none"` every quantizer site is an identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from models.architectures import Architecture, max_positions
from models.layers import (
    check_sequence_length,
    extended_attention_mask,
    make_input_quantizer,
    make_linear,
    roberta_position_ids,
)


class BertEmbeddings(nn.Module):
    def __init__(self, config: PretrainedConfig, position_style: str):
        super().__init__()
        self.position_style = position_style
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings,
            config.hidden_size,
            padding_idx=config.pad_token_id if position_style == "roberta" else None,
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        if self.position_style == "roberta":
            position_ids = roberta_position_ids(input_ids, self.padding_idx)
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"config.json: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.query = make_linear(config.hidden_size, config.hidden_size, quantization)
        self.key = make_linear(config.hidden_size, config.hidden_size, quantization)
        self.value = make_linear(config.hidden_size, config.hidden_size, quantization)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.matmul_q_input_quantizer = make_input_quantizer(quantization)
        self.matmul_k_input_quantizer = make_input_quantizer(quantization)
        self.matmul_v_input_quantizer = make_input_quantizer(quantization)
        self.matmul_a_input_quantizer = make_input_quantizer(quantization)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        query = self._heads(self.query(hidden_states))
        key = self._heads(self.key(hidden_states))
        value = self._heads(self.value(hidden_states))
        scores = torch.matmul(
            self.matmul_q_input_quantizer(query), self.matmul_k_input_quantizer(key.transpose(-1, -2))
        )
        scores = scores / math.sqrt(self.attention_head_size) + attention_mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(self.matmul_a_input_quantizer(probs), self.matmul_v_input_quantizer(value))
        batch, _, seq, _ = context.shape
        return context.transpose(1, 2).reshape(batch, seq, -1)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> (+ residual) -> LayerNorm; BertSelfOutput and BertOutput share this shape."""

    def __init__(self, config: PretrainedConfig, in_features: int, quantization: str):
        super().__init__()
        self.dense = make_linear(in_features, config.hidden_size, quantization)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.add_local_input_quantizer = make_input_quantizer(quantization)
        self.add_residual_input_quantizer = make_input_quantizer(quantization)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        local = self.add_local_input_quantizer(self.dropout(self.dense(hidden_states)))
        return self.LayerNorm(local + self.add_residual_input_quantizer(residual))


class BertAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        self.self = BertSelfAttention(config, quantization)
        self.output = BertResidualOutput(config, config.hidden_size, quantization)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        self.dense = make_linear(config.hidden_size, config.intermediate_size, quantization)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        self.attention = BertAttention(config, quantization)
        self.intermediate = BertIntermediate(config, quantization)
        self.output = BertResidualOutput(config, config.intermediate_size, quantization)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, quantization) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states


class BertPooler(nn.Module):
    """tanh(dense(first token)); kept in float in every mode, as QDQBERT and I-BERT do."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class BertBackbone(nn.Module):
    """`BertModel` / `RobertaModel` / float `IBertModel`: returns (sequence_output, pooled_output or None)."""

    def __init__(
        self, config: PretrainedConfig, arch: Architecture, quantization: str = "none", add_pooling_layer: bool = True
    ):
        super().__init__()
        self.arch = arch
        self.max_length = max_positions(config, arch)
        self.causal = bool(getattr(config, "is_decoder", False))
        self.embeddings = BertEmbeddings(config, arch.position_style)
        self.encoder = BertEncoder(config, quantization)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_sequence_length(input_ids, self.max_length, self.arch.model_type)
        hidden_states = self.embeddings(input_ids, token_type_ids)
        mask = extended_attention_mask(attention_mask, hidden_states.dtype, causal=self.causal)
        sequence_output = self.encoder(hidden_states, mask)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled
