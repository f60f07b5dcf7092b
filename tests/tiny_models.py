"""Tiny random Hugging Face models for tests: every architecture x every task head, saved with save_pretrained.

`save_tiny(tmp_path, model_type, task)` returns (directory, hf_model). The Hugging Face model is the
independent reference our `models.load` must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import BertConfig, IBertConfig, RobertaConfig, SqueezeBertConfig

VOCAB = 99
MAX_POSITIONS = 64

_HF_CLASSES = {
    "bert": {
        "feature-extraction": "BertModel",
        "fill-mask": "BertForMaskedLM",
        "text-generation": "BertLMHeadModel",
        "text-classification": "BertForSequenceClassification",
        "token-classification": "BertForTokenClassification",
        "question-answering": "BertForQuestionAnswering",
        "multiple-choice": "BertForMultipleChoice",
        "next-sentence-prediction": "BertForNextSentencePrediction",
    },
    "roberta": {
        "feature-extraction": "RobertaModel",
        "fill-mask": "RobertaForMaskedLM",
        "text-generation": "RobertaForCausalLM",
        "text-classification": "RobertaForSequenceClassification",
        "token-classification": "RobertaForTokenClassification",
        "question-answering": "RobertaForQuestionAnswering",
        "multiple-choice": "RobertaForMultipleChoice",
    },
    "ibert": {
        "feature-extraction": "IBertModel",
        "fill-mask": "IBertForMaskedLM",
        "text-classification": "IBertForSequenceClassification",
        "token-classification": "IBertForTokenClassification",
        "question-answering": "IBertForQuestionAnswering",
        "multiple-choice": "IBertForMultipleChoice",
    },
    "squeezebert": {
        "feature-extraction": "SqueezeBertModel",
        "fill-mask": "SqueezeBertForMaskedLM",
        "text-classification": "SqueezeBertForSequenceClassification",
        "token-classification": "SqueezeBertForTokenClassification",
        "question-answering": "SqueezeBertForQuestionAnswering",
        "multiple-choice": "SqueezeBertForMultipleChoice",
    },
}

CASES = [(model_type, task) for model_type, tasks in _HF_CLASSES.items() for task in tasks]


def tiny_config(model_type: str, task: str = "feature-extraction", **overrides):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=3,
        id2label={0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"},
        label2id={"NEGATIVE": 0, "NEUTRAL": 1, "POSITIVE": 2},
    )
    if task == "question-answering":
        common.update(num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    if task == "text-generation":
        common["is_decoder"] = True
    if model_type == "bert":
        config = BertConfig(type_vocab_size=2, pad_token_id=0, **common)
    elif model_type == "roberta":
        config = RobertaConfig(
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            **{**common, "max_position_embeddings": MAX_POSITIONS + 2},
        )
    elif model_type == "ibert":
        config = IBertConfig(
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, quant_mode=False,
            **{**common, "max_position_embeddings": MAX_POSITIONS + 2},
        )
    elif model_type == "squeezebert":
        config = SqueezeBertConfig(
            type_vocab_size=2, pad_token_id=0, embedding_size=32,
            q_groups=2, k_groups=2, v_groups=2, post_attention_groups=1, intermediate_groups=4, output_groups=4,
            **common,
        )
    else:
        raise ValueError(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def hf_model(model_type: str, task: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config = tiny_config(model_type, task, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, _HF_CLASSES[model_type][task])(config)
    with torch.no_grad():  # make every parameter non-trivial (some inits are zeros / ones)
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def save_tiny(directory: Path, model_type: str, task: str, seed: int = 0, **overrides):
    model = hf_model(model_type, task, seed, **overrides)
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory, model


def padded_batch(model_type: str, batch: int = 3, seq: int = 12, choices: int | None = None, seed: int = 1):
    """input_ids / attention_mask / token_type_ids with right padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    pad = 1 if model_type in ("roberta", "ibert") else 0
    rows = batch * (choices or 1)
    ids = torch.randint(3, VOCAB, (rows, seq), generator=g)
    mask = torch.ones(rows, seq, dtype=torch.long)
    for r in range(rows):
        length = seq - (r * 3) % (seq - 2)
        ids[r, length:] = pad
        mask[r, length:] = 0
    types = torch.zeros(rows, seq, dtype=torch.long)
    if model_type in ("bert", "squeezebert"):
        types[:, seq // 2 :] = 1
        types = types * mask
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if choices:
        feeds = {k: v.view(batch, choices, seq) for k, v in feeds.items()}
    return feeds


def hf_outputs(model: torch.nn.Module, task: str, feeds: dict) -> dict[str, torch.Tensor]:
    kwargs = dict(feeds)
    if "token_type_ids" in kwargs and model.config.type_vocab_size == 1:
        kwargs.pop("token_type_ids")
    with torch.no_grad():
        out = model(**kwargs)
    if task == "feature-extraction":
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    if task == "question-answering":
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}
    return {"logits": out.logits}
