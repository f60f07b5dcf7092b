"""Task models: a backbone under its Hugging Face prefix plus the head of one task.

Every task model takes `input_ids`, `attention_mask` and `token_type_ids` (multiple choice:
[batch, choices, seq]) and returns a dict of tensors named as in optimum's ONNX export (DESIGN.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig

from models.architectures import Architecture
from models.heads import (
    BertOnlyMLMHead,
    BertOnlyNSPHead,
    RobertaClassificationHead,
    RobertaLMHead,
    classifier_dropout,
)


def make_backbone(
    config: PretrainedConfig, arch: Architecture, quantization: str, add_pooling_layer: bool
) -> nn.Module:
    if quantization not in arch.quantization_modes:
        raise ValueError(
            f"quantization={quantization!r} is not available for {arch.model_type}; "
            f"choose one of {', '.join(arch.quantization_modes)}"
        )
    if quantization == "integer":
        from models.ibert import IBertIntegerBackbone

        return IBertIntegerBackbone(config, arch, add_pooling_layer=add_pooling_layer)
    if arch.family == "squeezebert":
        from models.squeezebert import SqueezeBertBackbone

        # Hugging Face's SqueezeBertModel always has its pooler, whatever the head.
        return SqueezeBertBackbone(config, arch, quantization, add_pooling_layer=True)
    from models.bert import BertBackbone

    return BertBackbone(config, arch, quantization, add_pooling_layer=add_pooling_layer)


class TaskModel(nn.Module):
    task: ClassVar[str]
    output_names: ClassVar[tuple[str, ...]]
    #: whether the Hugging Face class for this task builds the backbone with its pooler
    uses_pooler: ClassVar[bool] = False
    #: model types whose Hugging Face heads this task has (None: all)
    model_types: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: PretrainedConfig, arch: Architecture, quantization: str = "none"):
        super().__init__()
        self.config = config
        self.arch = arch
        self.quantization = quantization
        self.source_dir: Path | None = None  # the checkpoint directory, set by models.load
        self.add_module(arch.prefix, make_backbone(config, arch, quantization, self.pooler_for(arch)))

    @classmethod
    def pooler_for(cls, arch: Architecture) -> bool:
        return cls.uses_pooler

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.arch.prefix)

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("input_ids", "attention_mask")
        return names + ("token_type_ids",) if self.config.type_vocab_size > 1 else names

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, sequence], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.backbone(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        sequence_output, pooled_output = self.encode(input_ids, attention_mask, token_type_ids)
        return self.head(sequence_output, pooled_output)

    def head(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def tie_weights(self) -> None:
        """Share the output embedding with the input embedding where the config asks for it."""


class ModelForFeatureExtraction(TaskModel):
    task = "feature-extraction"
    output_names = ("last_hidden_state", "pooler_output")
    uses_pooler = True

    def head(self, sequence_output, pooled_output):
        assert pooled_output is not None
        return {"last_hidden_state": sequence_output, "pooler_output": pooled_output}


class _LMHeadMixin(TaskModel):
    """Masked and causal LM heads: `cls.predictions` (BERT style) or `lm_head` (RoBERTa style)."""

    output_names = ("logits",)

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        if arch.head_style == "roberta":
            self.lm_head = RobertaLMHead(config)
        else:
            self.cls = BertOnlyMLMHead(config)
        self.tie_weights()

    @property
    def decoder(self) -> nn.Linear:
        return self.lm_head.decoder if self.arch.head_style == "roberta" else self.cls.predictions.decoder

    def tie_weights(self) -> None:
        if getattr(self.config, "tie_word_embeddings", True):
            embeddings: nn.Embedding = self.backbone.get_submodule("embeddings.word_embeddings")  # type: ignore[assignment]
            self.decoder.weight = embeddings.weight

    def head(self, sequence_output, pooled_output):
        scores = self.lm_head(sequence_output) if self.arch.head_style == "roberta" else self.cls(sequence_output)
        return {"logits": scores}


class ModelForMaskedLM(_LMHeadMixin):
    task = "fill-mask"


class ModelForCausalLM(_LMHeadMixin):
    task = "text-generation"
    model_types = ("bert", "qdqbert", "roberta")


class ModelForSequenceClassification(TaskModel):
    task = "text-classification"
    output_names = ("logits",)

    @classmethod
    def pooler_for(cls, arch):
        return arch.head_style == "bert"  # RoBERTa's head reads the <s> token itself

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        self.classifier: nn.Module
        if arch.head_style == "roberta":
            self.classifier = RobertaClassificationHead(config)
        else:
            self.dropout = nn.Dropout(classifier_dropout(config))
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, sequence_output, pooled_output):
        if self.arch.head_style == "roberta":
            return {"logits": self.classifier(sequence_output)}
        return {"logits": self.classifier(self.dropout(pooled_output))}


class ModelForTokenClassification(TaskModel):
    task = "token-classification"
    output_names = ("logits",)

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, sequence_output, pooled_output):
        return {"logits": self.classifier(self.dropout(sequence_output))}


class ModelForQuestionAnswering(TaskModel):
    task = "question-answering"
    output_names = ("start_logits", "end_logits")

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def head(self, sequence_output, pooled_output):
        logits = self.qa_outputs(sequence_output)
        start, end = logits.split(1, dim=-1)
        return {"start_logits": start.squeeze(-1), "end_logits": end.squeeze(-1)}


class ModelForMultipleChoice(TaskModel):
    task = "multiple-choice"
    output_names = ("logits",)
    uses_pooler = True

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if input_ids.dim() != 3:
            raise ValueError(
                f"multiple-choice input_ids must be [batch, num_choices, sequence], got shape {tuple(input_ids.shape)}"
            )
        batch, choices, seq = input_ids.shape

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(batch * choices, seq)

        _, pooled = self.encode(input_ids.reshape(batch * choices, seq), flat(attention_mask), flat(token_type_ids))
        logits = self.classifier(self.dropout(pooled))
        return {"logits": logits.view(batch, choices)}


class ModelForNextSentencePrediction(TaskModel):
    task = "next-sentence-prediction"
    output_names = ("logits",)
    uses_pooler = True
    model_types = ("bert", "qdqbert")

    def __init__(self, config, arch, quantization="none"):
        super().__init__(config, arch, quantization)
        self.cls = BertOnlyNSPHead(config)

    def head(self, sequence_output, pooled_output):
        return {"logits": self.cls(pooled_output)}


TASKS: dict[str, type[TaskModel]] = {
    cls.task: cls
    for cls in (
        ModelForFeatureExtraction,
        ModelForMaskedLM,
        ModelForCausalLM,
        ModelForSequenceClassification,
        ModelForTokenClassification,
        ModelForQuestionAnswering,
        ModelForMultipleChoice,
        ModelForNextSentencePrediction,
    )
}


def task_class(task: str, arch: Architecture) -> type[TaskModel]:
    try:
        cls = TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}") from None
    if cls.model_types is not None and arch.model_type not in cls.model_types:
        raise ValueError(
            f"task {task!r} is not available for model_type {arch.model_type!r} "
            f"(Hugging Face has that head only for {', '.join(cls.model_types)})"
        )
    return cls
