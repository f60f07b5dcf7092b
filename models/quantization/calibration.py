"""Calibrate a model as its `QuantizationRecipe` says, and write its calibration.json: one front for both modes.

    recipe = QuantizationRecipe.default("qdq")
    model = models.load(ckpt, quantization=recipe.mode)
    recipe = recipe.fitted(max_positions(model.config, model.arch))    # never past the position embeddings
    done = calibrate_model(model, recipe_batches(recipe, ckpt), recipe)
    save_model_calibration(model, "calibration.json", done)
    done.record()        # export.json's "calibration": the recipe as applied, and the data it ran on

The exporter, the calibrate command and benchmarks/eval calibrate through here, so they calibrate alike. The
modes' own steps are `models.quantization.qdq.calibrate` (keep_float, then pytorch-quantization's
calibrators) and `models.quantization.integer.calibration` (I-BERT's ranges and shifts). Importing this module
registers both modes' calibration files with the envelope (`calibration_file.register_mode`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import CheckpointError
from models.quantization.errors import RecipeError
from models.quantization.integer.calibration import calibrate_integer, save_integer_calibration
from models.quantization.qdq.calibrate import calibrate
from models.quantization.qdq.calibration import save_calibration
from models.quantization.qdq.quantized_model import keep_float
from models.quantization.recipe import DEFAULT_PERCENTILE, SHIPPED_DATA_LABEL, QuantizationRecipe

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Calibrated:
    """What `calibrate_model` did: the recipe as applied (the model's own integer settings, the samples it
    really had, the sequence length it really used), the data's name, and the qdq quantizers kept float."""

    recipe: QuantizationRecipe
    data: str
    kept_float: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The applied recipe with the data's name: export.json's "calibration", calibration.json's "recipe"."""
        return {**self.recipe.to_dict(), "data": self.data}


def recipe_batches(recipe: QuantizationRecipe, tokenizer_or_checkpoint_dir: Any) -> list[dict[str, torch.Tensor]]:
    """The recipe's calibration text (its data, else the shipped corpus), tokenized: num_samples samples in
    batches of batch_size, cut to max_length tokens (fit the recipe to the model first: `recipe.fitted`)."""
    from models.data import calibration_batches, load_texts

    if recipe.batch_size is None or recipe.max_length is None:
        raise ValueError("a float recipe (mode 'none') has no calibration data")
    return calibration_batches(
        load_texts(recipe.calibration_data), tokenizer_or_checkpoint_dir, batch_size=recipe.batch_size,
        max_length=recipe.max_length, num_samples=recipe.num_samples,
    )


def _check_token_ids(model: nn.Module, batches: list[Batch]) -> None:
    """Refuse ids the embeddings cannot look up (torch would stop with a bare "IndexError: index out of range
    in self" in the middle of calibration): a tokenizer with more tokens than the model's vocabulary."""
    config = getattr(model, "config", None)
    for name, limit_name in (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size")):
        limit = getattr(config, limit_name, None)
        largest = max((int(batch[name].max()) for batch in batches if name in batch and batch[name].numel()), default=None)
        if limit is not None and largest is not None and largest >= limit:
            raise CheckpointError(
                f"the calibration batches hold {name} {largest}, outside the model's {limit_name} of {limit} "
                f"(config.json): the tokenizer does not belong to this checkpoint; calibrate with the checkpoint's "
                f"own tokenizer, or fix {limit_name} in config.json"
            )


def calibrate_model(
    model: nn.Module,
    batches: Iterable[Batch],
    recipe: QuantizationRecipe,
    *,
    data: str | None = None,
    progress: bool = True,
) -> Calibrated:
    """Calibrate `model` (loaded in `recipe.mode`) in place on `batches` ([batch, sequence] dicts of model
    inputs; a multiple-choice head takes each sample as one choice). `data` names the batches' source in the
    records (default: the recipe's data, or the shipped corpus)."""
    mode = getattr(model, "quantization", None)
    if recipe.mode == "none" or mode != recipe.mode:
        raise ValueError(
            f"the recipe calibrates {recipe.mode!r} models, this model is {mode!r}: load it with "
            f"quantization={recipe.mode!r}" if recipe.mode != "none" else "a float recipe (mode 'none') calibrates nothing"
        )
    data = data or recipe.calibration_data or SHIPPED_DATA_LABEL
    batches = list(batches)
    _check_token_ids(model, batches)
    kept: list[str] = []
    if recipe.mode == "qdq":
        if getattr(model, "task", None) == "multiple-choice":  # the head takes [batch, choices, sequence]
            batches = [{k: v[:, None, :] for k, v in batch.items()} for batch in batches]
        if recipe.keep_float:
            try:
                kept = keep_float(model, recipe.keep_float)
            except ValueError as e:  # a pattern that matches no quantizer of this model
                raise RecipeError(f"--keep-float: {e}") from None
        if recipe.smoothing != "none":  # before calibration: the quantizers calibrate on the smoothed inputs
            from models.quantization.smoothing import smooth

            smooth(model, batches, str(recipe.smoothing), progress=progress)  # "auto" or a strength ("0.5")
        percentile = recipe.percentile if recipe.percentile is not None else DEFAULT_PERCENTILE  # unused then
        calibrate(model, batches, str(recipe.calibration_method), percentile, data=data, progress=progress)
        applied = recipe
    else:
        calibrate_integer(model, batches, method=str(recipe.calibration_method), data=data, progress=progress)
        config = getattr(model, "config", None)
        applied = recipe.replace(
            force_dequant=str(getattr(config, "force_dequant", "none")),
            wide_activations=tuple(getattr(config, "wide_activations", ())),
        )
    applied = applied.replace(num_samples=sum(int(batch["input_ids"].shape[0]) for batch in batches))
    return Calibrated(applied, data, tuple(kept))


def save_model_calibration(model: nn.Module, path: str | os.PathLike, calibrated: Calibrated) -> Path:
    """Write the calibrated model's calibration.json, of its mode, with the recipe it was calibrated with."""
    if calibrated.recipe.mode == "qdq":
        return save_calibration(model, path, recipe=calibrated.record())
    return save_integer_calibration(model, path, recipe=calibrated.record())
