"""SqueezeBERT (Iandola et al., 2020): BERT whose Q/K/V, post-attention and FFN layers are grouped 1x1 convolutions.

The encoder keeps activations in [batch, channels, sequence] (NCW) layout, as Hugging Face's
`SqueezeBertModel` does, so grouped `Conv1d`s apply directly; names match it for checkpoint loading.
QDQBERT's quantizer sites carry over: conv inputs and weights, attention matmul inputs, residual adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from models.architectures import Architecture, max_positions
from models.bert import BertPooler
from models.layers import check_sequence_length, extended_attention_mask, make_conv1x1, make_input_quantizer


class SqueezeBertEmbeddings(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if config.embedding_size != config.hidden_size:
            raise ValueError(
                f"config.json: SqueezeBERT needs embedding_size == hidden_size "
                f"(got {config.embedding_size} and {config.hidden_size})"
            )
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class SqueezeBertLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 1)).permute(0, 2, 1)


class SqueezeBertSelfAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        channels = config.hidden_size
        if channels % config.num_attention_heads:
            raise ValueError(
                f"config.json: hidden_size {channels} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = channels // config.num_attention_heads
        self.query = make_conv1x1(channels, channels, config.q_groups, quantization)
        self.key = make_conv1x1(channels, channels, config.k_groups, quantization)
        self.value = make_conv1x1(channels, channels, config.v_groups, quantization)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.matmul_q_input_quantizer = make_input_quantizer(quantization)
        self.matmul_k_input_quantizer = make_input_quantizer(quantization)
        self.matmul_v_input_quantizer = make_input_quantizer(quantization)
        self.matmul_a_input_quantizer = make_input_quantizer(quantization)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, W] -> [N, heads, head_size, W]"""
        return x.view(x.shape[0], self.num_attention_heads, self.attention_head_size, x.shape[-1])

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        query = self._heads(self.query(hidden_states)).transpose(-1, -2)  # [N, h, W, d]
        key = self._heads(self.key(hidden_states))  # [N, h, d, W]
        value = self._heads(self.value(hidden_states)).transpose(-1, -2)  # [N, h, W, d]
        scores = torch.matmul(self.matmul_q_input_quantizer(query), self.matmul_k_input_quantizer(key))
        scores = scores / math.sqrt(self.attention_head_size) + attention_mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(self.matmul_a_input_quantizer(probs), self.matmul_v_input_quantizer(value))
        context = context.transpose(-1, -2)  # [N, h, d, W]
        return context.reshape(context.shape[0], -1, context.shape[-1])


class ConvDropoutLayerNorm(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, dropout_prob: float, quantization: str):
        super().__init__()
        self.conv1d = make_conv1x1(cin, cout, groups, quantization)
        self.layernorm = SqueezeBertLayerNorm(cout, eps=1e-12)
        self.dropout = nn.Dropout(dropout_prob)
        self.add_local_input_quantizer = make_input_quantizer(quantization)
        self.add_residual_input_quantizer = make_input_quantizer(quantization)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        local = self.add_local_input_quantizer(self.dropout(self.conv1d(hidden_states)))
        return self.layernorm(local + self.add_residual_input_quantizer(residual))


class ConvActivation(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, act: str, quantization: str):
        super().__init__()
        self.conv1d = make_conv1x1(cin, cout, groups, quantization)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1d(x))


class SqueezeBertModule(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.attention = SqueezeBertSelfAttention(config, quantization)
        self.post_attention = ConvDropoutLayerNorm(
            hidden, hidden, config.post_attention_groups, config.hidden_dropout_prob, quantization
        )
        self.intermediate = ConvActivation(hidden, inner, config.intermediate_groups, config.hidden_act, quantization)
        self.output = ConvDropoutLayerNorm(
            inner, hidden, config.output_groups, config.hidden_dropout_prob, quantization
        )

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        attention_output = self.post_attention(self.attention(hidden_states, attention_mask), hidden_states)
        return self.output(self.intermediate(attention_output), attention_output)


class SqueezeBertEncoder(nn.Module):
    def __init__(self, config: PretrainedConfig, quantization: str):
        super().__init__()
        self.layers = nn.ModuleList(SqueezeBertModule(config, quantization) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 1)  # [N, W, C] -> [N, C, W]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states.permute(0, 2, 1)


class SqueezeBertBackbone(nn.Module):
    """`SqueezeBertModel`: returns (sequence_output, pooled_output or None)."""

    def __init__(
        self, config: PretrainedConfig, arch: Architecture, quantization: str = "none", add_pooling_layer: bool = True
    ):
        super().__init__()
        self.arch = arch
        self.max_length = max_positions(config, arch)
        self.embeddings = SqueezeBertEmbeddings(config)
        self.encoder = SqueezeBertEncoder(config, quantization)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_sequence_length(input_ids, self.max_length, self.arch.model_type)
        hidden_states = self.embeddings(input_ids, token_type_ids)
        mask = extended_attention_mask(attention_mask, hidden_states.dtype)
        sequence_output = self.encoder(hidden_states, mask)
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled
