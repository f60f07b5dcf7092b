"""The ONNX signature of a task model: input/output names, dtypes, dims and dynamic axes (as optimum names them).

One home for "what the graph's interface looks like": the torch export, the clean-up, the validation
and export.json all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models import TaskModel
from trt_runtime.contract.export_dir import TensorSpec

# Dynamic axis names of Hugging Face optimum's ONNX export.
BATCH = "batch_size"
SEQUENCE = "sequence_length"
CHOICES = "num_choices"

# Which output dims are dynamic, per task and output (the others are fixed by the config: hidden size,
# vocabulary, labels). optimum's ONNX configs name them the same way.
_DYNAMIC_OUTPUT_DIMS: dict[str, dict[str, tuple[str, ...]]] = {
    "feature-extraction": {"last_hidden_state": (BATCH, SEQUENCE), "pooler_output": (BATCH,)},
    "fill-mask": {"logits": (BATCH, SEQUENCE)},
    "text-generation": {"logits": (BATCH, SEQUENCE)},
    "text-classification": {"logits": (BATCH,)},
    "token-classification": {"logits": (BATCH, SEQUENCE)},
    "question-answering": {"start_logits": (BATCH, SEQUENCE), "end_logits": (BATCH, SEQUENCE)},
    "multiple-choice": {"logits": (BATCH, CHOICES)},
    "next-sentence-prediction": {"logits": (BATCH,)},
}


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of one exported task model; output dims are named where dynamic, ints elsewhere."""

    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @property
    def has_choices(self) -> bool:
        return self.task == "multiple-choice"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's `dynamic_axes`: every named dim of every input and output."""
        return {
            spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
            for spec in (*self.inputs, *self.outputs)
        }


def _fixed_dims(model: TaskModel, output: str) -> tuple[int, ...]:
    """Output dims that the config fixes (hidden size, vocabulary, labels), after the dynamic ones."""
    config = model.config
    if model.task == "feature-extraction":
        return (int(config.hidden_size),)
    if model.task in ("fill-mask", "text-generation"):
        return (int(config.vocab_size),)
    if model.task in ("text-classification", "token-classification"):
        labels: int = config.num_labels  # type: ignore[assignment]  # a property of PretrainedConfig
        return (labels,)
    if model.task == "next-sentence-prediction":
        return (2,)
    return ()  # question-answering, multiple-choice: one score per token / choice


def signature_of(model: TaskModel) -> Signature:
    task = model.task
    input_dims: tuple[str, ...] = (BATCH, CHOICES, SEQUENCE) if task == "multiple-choice" else (BATCH, SEQUENCE)
    inputs = tuple(TensorSpec(name, "int64", input_dims) for name in model.input_names)
    dynamic = _DYNAMIC_OUTPUT_DIMS[task]
    outputs = tuple(
        TensorSpec(name, "float32", (*dynamic[name], *_fixed_dims(model, name))) for name in model.output_names
    )
    return Signature(task, inputs, outputs)


class OnnxSignatureModule(nn.Module):
    """Wraps a task model so that torch.onnx.export sees keyword inputs in ONNX order and a tuple of outputs.

    Calls with the optional `token_type_ids` left out export a graph without that input.
    """

    def __init__(self, model: TaskModel, signature: Signature):
        super().__init__()
        self.model = model
        self.output_names = signature.output_names

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(outputs[name] for name in self.output_names)
