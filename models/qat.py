"""Fine-tuning, in float or quantization-aware (QAT), and saving the result as a checkpoint.

    model = new_task_model(ckpt, "text-classification", labels=["negative", "positive"])  # float, new head
    finetune(model, train_batches, eval_fn=accuracy_on_dev, config=FinetuneConfig(epochs=3))
    save_checkpoint(model, ckpt, "out/float-finetuned")

    qdq = models.load("out/float-finetuned", quantization="qdq")          # then QAT:
    calibrate(qdq, calibration_batches(load_texts(), "out/float-finetuned"), method="percentile")
    finetune(qdq, train_batches, eval_fn=accuracy_on_dev, config=FinetuneConfig(epochs=1, learning_rate=1e-5))
    save_checkpoint(qdq, ckpt, "out/qat")                                  # weights and `_amax` buffers
    models.load("out/qat", quantization="qdq")                             # the same model, same outputs

QAT trains through the fake-quantization ops with the straight-through estimator (their gradient
is 1 inside the quantization range and 0 where the value is clipped); amax stays as calibrated
(learned too for quantizers built with learn_amax=True). Optimizer AdamW (no decay on biases and
LayerNorm weights), learning rate warmed up linearly then decayed linearly to zero
(`transformers.get_linear_schedule_with_warmup`), gradient norm clipped.

Batches are dicts of model inputs plus the task's targets: `labels` (text-, token- and
multiple-choice classification, fill-mask, text-generation, next-sentence-prediction) or
`start_positions` / `end_positions` (question-answering).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from models.data import MODEL_INPUTS
from models.loading import load_config, load_weights, read_state_dict
from models.quantization.qdq.quantized_model import check_calibrated
from models.tasks import TaskModel, task_class
from trt_runtime.contract.files import atomic_directory

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]

# Hugging Face class names, so that config.json's `architectures` names the task (models.load reads
# the task from it) and transformers' Auto classes load the checkpoint too.
_HF_CLASS_PREFIX = {
    "bert": "Bert", "qdqbert": "Bert", "roberta": "Roberta", "ibert": "IBert", "squeezebert": "SqueezeBert",
}
_HF_CLASS_SUFFIX = {
    "feature-extraction": "Model",
    "fill-mask": "ForMaskedLM",
    "text-generation": "ForCausalLM",
    "text-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
    "multiple-choice": "ForMultipleChoice",
    "next-sentence-prediction": "ForNextSentencePrediction",
}


def hf_class_name(model_type: str, task: str) -> str:
    if task == "text-generation" and model_type in ("bert", "qdqbert"):
        return "BertLMHeadModel"
    return _HF_CLASS_PREFIX[model_type] + _HF_CLASS_SUFFIX[task]


@dataclass
class FinetuneConfig:
    epochs: int = 3
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent warming the learning rate up from 0
    max_grad_norm: float = 1.0
    shuffle: bool = True  # reshuffle the order of the batches every epoch (a Sequence of batches only)
    seed: int = 0


# -- starting a model -----------------------------------------------------------------------------


def new_task_model(
    checkpoint_dir: str | os.PathLike,
    task: str,
    labels: Sequence[str] | None = None,
    quantization: str = "none",
) -> TaskModel:
    """A task model with the checkpoint's backbone and, where the checkpoint has none, a new head.

    labels: class names for classification heads (sets num_labels, id2label, label2id). A new head is
    initialized as transformers does (normal(0, initializer_range) weights, zero biases).
    """
    directory = Path(checkpoint_dir)
    config, arch = load_config(directory)
    if labels is not None:
        labels = list(labels)
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct class names, got {labels!r}")
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    model = task_class(task, arch)(config, arch, quantization)
    state, source = read_state_dict(directory)
    load_weights(model, state, source, init_missing_head=True)
    model.tie_weights()
    _init_new_head(model, state, float(getattr(config, "initializer_range", 0.02)))
    model.source_dir = directory
    return model.eval()


def _init_new_head(model: TaskModel, state: Mapping[str, torch.Tensor], std: float) -> None:
    """transformers' init for head parameters the checkpoint lacks (skipping those tied to the backbone)."""
    prefix = model.arch.prefix + "."
    backbone = {p.data_ptr() for p in model.backbone.parameters()}
    new = []
    with torch.no_grad():
        for name, param in model.named_parameters(remove_duplicate=False):
            if name.startswith(prefix) or name in state or param.data_ptr() in backbone:
                continue
            module_name, _, kind = name.rpartition(".")
            module = model.get_submodule(module_name)
            if kind == "bias":
                param.zero_()
            elif isinstance(module, nn.LayerNorm):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)
            new.append(name)
    if new:
        logger.info("new head initialized: %s", ", ".join(new))


# -- training -------------------------------------------------------------------------------------


def task_loss(model: TaskModel, outputs: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """The loss transformers uses for the model's task head."""
    task = model.task
    if task == "question-answering":
        length = outputs["start_logits"].shape[1]
        start = batch["start_positions"].clamp(0, length)
        end = batch["end_positions"].clamp(0, length)
        return (
            F.cross_entropy(outputs["start_logits"], start, ignore_index=length)
            + F.cross_entropy(outputs["end_logits"], end, ignore_index=length)
        ) / 2
    if "labels" not in batch:
        raise ValueError(f"batches for {task} need a 'labels' tensor (or pass loss_fn=...)")
    labels = batch["labels"]
    logits = outputs.get("logits")
    if logits is None:
        raise ValueError(f"no default loss for task {task!r}; pass loss_fn=(model, outputs, batch) -> loss")
    if task == "text-classification":
        problem = getattr(model.config, "problem_type", None)
        if problem == "regression" or (problem is None and model.config.num_labels == 1):
            return F.mse_loss(logits.squeeze(-1), labels.float().reshape(logits.shape[0]))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)
    if task == "text-generation":  # predict token t + 1 from tokens up to t
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = name.endswith(("bias", "_amax")) or "LayerNorm" in name or "layer_norm" in name or "layernorm" in name
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def finetune(
    model: TaskModel,
    train_batches: Iterable[Batch],
    *,
    eval_fn: Callable[[TaskModel], Mapping[str, float]] | None = None,
    config: FinetuneConfig | None = None,
    loss_fn: Callable[[TaskModel, Mapping[str, torch.Tensor], Batch], torch.Tensor] = task_loss,
    select_best: str | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model` in place; returns one record per epoch: epoch, train_loss and eval_fn's metrics.

    train_batches: re-iterable batches (a list, or a DataLoader) with targets (module docstring).
    eval_fn: called after every epoch with the model in eval mode under torch.no_grad().
    select_best: an eval_fn metric (higher is better); the weights of the best epoch are kept at the end.
    A qdq model must be calibrated first: QAT starts from calibrated amax.
    """
    config = config or FinetuneConfig()
    if getattr(model, "quantization", "none") == "qdq":
        check_calibrated(model)
    if not hasattr(train_batches, "__len__"):
        raise TypeError("train_batches must be re-iterable with a length (a list of batches or a DataLoader)")
    if select_best is not None and eval_fn is None:
        raise ValueError("select_best needs an eval_fn that reports that metric")
    steps_per_epoch = len(train_batches)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ValueError("train_batches is empty")
    total_steps = steps_per_epoch * config.epochs

    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    bar = tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not progress)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            epoch_loss, seen = 0.0, 0
            for batch in _epoch_order(train_batches, config.shuffle, generator):
                outputs = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
                loss = loss_fn(model, outputs, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                epoch_loss += loss.item()
                seen += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{epoch_loss / seen:.4f}")
            record = {"epoch": float(epoch), "train_loss": epoch_loss / seen}
            if eval_fn is not None:
                model.eval()
                with torch.no_grad():
                    record.update({k: float(v) for k, v in eval_fn(model).items()})
            history.append(record)
            logger.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
            if select_best is not None:
                if select_best not in record:
                    raise KeyError(f"eval_fn did not report {select_best!r} (it reported {', '.join(record)})")
                if best is None or record[select_best] > best[0]:
                    best = (record[select_best], epoch, copy.deepcopy(model.state_dict()))
    finally:
        bar.close()
        model.eval()
    if best is not None:
        model.load_state_dict(best[2])
        logger.info("kept epoch %d (%s = %.4f)", best[1], select_best, best[0])
    return history


def _epoch_order(batches: Iterable[Batch], shuffle: bool, generator: torch.Generator) -> Iterable[Batch]:
    if shuffle and isinstance(batches, Sequence):
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


# -- saving ---------------------------------------------------------------------------------------


def save_checkpoint(model: TaskModel, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a Hugging Face checkpoint directory: config.json, model.safetensors, tokenizer files.

    The weights include every quantizer's `_amax`, so `models.load(out_dir, quantization="qdq")` gives
    back the same model; transformers loads it too (as a float model, ignoring the `_amax` keys), except
    after SmoothQuant: the weights are then W diag(s) and the `_smoothing_scale` keys hold s, which only
    `models.load` applies (in any mode; transformers would compute with the scaled weights).
    Written in a temporary sibling directory and renamed into place.
    """
    from safetensors.torch import save_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = copy.deepcopy(model.config)
    config.architectures = [hf_class_name(model.arch.model_type, model.task)]
    with atomic_directory(out_dir) as tmp:
        config.save_pretrained(tmp)
        # save_model drops the duplicate names of tied weights, which models.load ties back
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
