"""Which of our module trees serves a Hugging Face `model_type`, and under which parameter names.

One row per supported `model_type`. The `prefix` is the attribute name Hugging Face gives the
backbone in its task models (`bert.`, `roberta.`, `ibert.`, `transformer.`), so checkpoint keys
load unchanged; `head_style` says whose task heads the checkpoint carries (BERT's `cls.*` and
pooler-based classifier, or RoBERTa's `lm_head.*` and `<s>`-token classification head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import BertConfig, IBertConfig, PretrainedConfig, RobertaConfig, SqueezeBertConfig

# the modes and I-BERT's force_dequant values are the recipe's (torch-free, for the command lines)
from models.quantization.recipe import FORCE_DEQUANT_VALUES as FORCE_DEQUANT_VALUES
from models.quantization.recipe import QUANTIZATION_MODES as QUANTIZATION_MODES

Family = Literal["bert", "squeezebert"]
HeadStyle = Literal["bert", "roberta"]
PositionStyle = Literal["absolute", "roberta"]


@dataclass(frozen=True)
class Architecture:
    model_type: str
    family: Family  # which module tree implements the encoder
    prefix: str  # attribute name of the backbone inside task models
    head_style: HeadStyle
    position_style: PositionStyle  # RoBERTa counts positions from padding_idx + 1 and skips padding
    config_class: type[PretrainedConfig]
    quantization_modes: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"{self.model_type} ({self.family} encoder, {self.head_style}-style heads)"


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert", "bert", "bert", "bert", "absolute", BertConfig, QUANTIZATION_MODES),
    # Hugging Face's QDQBERT checkpoints are BERT checkpoints plus quantizer `_amax` buffers.
    "qdqbert": Architecture("qdqbert", "bert", "bert", "bert", "absolute", BertConfig, QUANTIZATION_MODES),
    "roberta": Architecture(
        "roberta", "bert", "roberta", "roberta", "roberta", RobertaConfig, QUANTIZATION_MODES
    ),
    "ibert": Architecture("ibert", "bert", "ibert", "roberta", "roberta", IBertConfig, QUANTIZATION_MODES),
    # I-BERT's integer nonlinearities assume a Linear-GELU FFN; SqueezeBERT is served float or qdq.
    "squeezebert": Architecture(
        "squeezebert", "squeezebert", "transformer", "bert", "absolute", SqueezeBertConfig, ("none", "qdq")
    ),
}


def architecture_for(model_type: str, where: str = "config.json") -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(
            f"{where}: model_type {model_type!r} is not supported; supported model types: {supported}"
        ) from None


def max_positions(config: PretrainedConfig, arch: Architecture) -> int:
    """Longest sequence the position embeddings can index (RoBERTa reserves padding_idx + 1 slots)."""
    n = int(config.max_position_embeddings)
    if arch.position_style == "roberta":
        n -= int(config.pad_token_id) + 1
    return n
