"""The evaluation recipe (every setting that changes a result), the model variants, and cache keys.

Everything `make eval` makes is cached under the output root (default exports/eval/), keyed by the
recipe fields that went into it: changing the fine-tuning settings retrains the float model (and
everything after it); changing only the QAT settings re-runs QAT and its export, and so on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from models.quantization.recipe import DEFAULT_WIDE_ACTIVATIONS, QuantizationRecipe

#: qdq post-training calibrators of the table: (name, calibration_method, percentile)
CALIBRATORS: tuple[tuple[str, str, float | None], ...] = (
    ("max", "max", None),
    ("percentile-99.9", "percentile", 99.9),
    ("percentile-99.99", "percentile", 99.99),
    ("percentile-99.999", "percentile", 99.999),
    ("mse", "mse", None),
    ("entropy", "entropy", None),
)
#: the integer calibration method of I-BERT mode: the recipe's default (running min/max)
INTEGER_METHOD = QuantizationRecipe.default("integer").calibration_method


@dataclass(frozen=True)
class Recipe:
    # float fine-tuning (all-MiniLM-L6-v2 + a new text-classification head)
    # sized for `make eval` < 30 min on two cores (docs/eval.md, "Time"): fine-tuning is the costliest stage
    train_samples: int = 2048  # a seeded sample of the train split (64 steps of 32)
    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_length: int = 64  # training only; evaluation takes every sentence whole (the pipeline's limit)
    freeze_word_embeddings: bool = True  # 11.7 M of the 22.7 M parameters; halves the optimizer's work
    seed: int = 0
    # calibration: the shipped calibration split (calibration_data/calibration.txt), as the exporter does
    calibration_samples: int = 512
    calibration_batch_size: int = 16
    calibration_max_length: int = 128
    # quantization-aware training of the qdq model (from the best calibrator's amax)
    qat_samples: int = 1024
    qat_epochs: int = 1
    qat_learning_rate: float = 1e-5
    # quantization-aware fine-tuning of the I-BERT integer model (eager integer mode is ~10x slower)
    integer_qat_samples: int = 512
    integer_qat_epochs: int = 1
    integer_qat_learning_rate: float = 1e-5
    integer_qat_batch_size: int = 16
    # evaluation
    dev_samples: int = (
        256  # calibrator choice and per-layer sensitivity (PyTorch, a seeded dev sample; 19 passes)
    )
    eval_batch_size: int = 32
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self, *fields: str, extra: Any = None) -> str:
        """A short digest of some fields (and anything else that went into a stage)."""
        data = {name: getattr(self, name) for name in fields}
        if extra is not None:
            data["extra"] = extra
        return digest(data)


FLOAT_FIELDS = (
    "train_samples",
    "epochs",
    "learning_rate",
    "batch_size",
    "max_length",
    "freeze_word_embeddings",
    "seed",
)
CALIBRATION_FIELDS = ("calibration_samples", "calibration_batch_size", "calibration_max_length")
QAT_FIELDS = (
    "qat_samples",
    "qat_epochs",
    "qat_learning_rate",
    "batch_size",
    "max_length",
    "freeze_word_embeddings",
    "seed",
)
INTEGER_QAT_FIELDS = (
    "integer_qat_samples",
    "integer_qat_epochs",
    "integer_qat_learning_rate",
    "integer_qat_batch_size",
    "max_length",
    "freeze_word_embeddings",
    "seed",
)


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Variant:
    """One row of the table: a model (checkpoint) exported one way."""

    name: str  # e.g. "ptq-max", "qat-mse", "integer-qat"
    title: str  # what the table says
    quantization: str  # exporter: none | qdq | integer
    checkpoint: str  # "float" | "qat" | "integer-qat": which fine-tuned checkpoint
    method: str | None = None  # QuantizationRecipe.calibration_method
    percentile: float | None = None
    keep_float: tuple[str, ...] | None = None  # qdq: None = the recipe's default sites
    group: str = ""  # float | ptq | qat | integer
    smoothing: str | None = None  # qdq: None = the recipe's default (SmoothQuant auto)

    def quantization_recipe(self, recipe: Recipe) -> QuantizationRecipe:
        """How this row is quantized: the project's recipe with this row's calibrator and the eval's sizes."""
        if self.quantization == "none":
            return QuantizationRecipe.default("none")
        changes: dict[str, Any] = {"calibration_method": self.method, "percentile": self.percentile}
        if self.quantization == "qdq":
            changes.update(smoothing=self.smoothing, keep_float=self.keep_float)
        else:  # the float checkpoint's default sites, named: a changed default changes the stages' keys (re-export)
            changes.update(wide_activations=DEFAULT_WIDE_ACTIVATIONS)
        return calibration_recipe(recipe, self.quantization).replace(**changes)


def calibration_recipe(recipe: Recipe, mode: str) -> QuantizationRecipe:
    """The project's default recipe of a quantized `mode` with the eval's calibration sizes."""
    return QuantizationRecipe(
        mode=mode,
        num_samples=recipe.calibration_samples,
        batch_size=recipe.calibration_batch_size,
        max_length=recipe.calibration_max_length,
    )


def float_variant() -> Variant:
    return Variant("float", "float (FP32)", "none", "float", group="float")


def ptq_variants(names: Sequence[str] | None = None) -> list[Variant]:
    """One PTQ row per calibrator (all of CALIBRATORS, or those named), with the exporter's float sites."""
    return [
        Variant(
            f"ptq-{name}", f"PTQ {name.replace('-', ' ')}", "qdq", "float", method, percentile, group="ptq"
        )
        for name, method, percentile in CALIBRATORS
        if names is None or name in names
    ]


def calibrator(name: str) -> tuple[str, float | None]:
    for calibrator_name, method, percentile in CALIBRATORS:
        if calibrator_name == name:
            return method, percentile
    raise ValueError(f"unknown calibrator {name!r}; calibrators: {', '.join(c[0] for c in CALIBRATORS)}")


def all_sites_variant(best: str) -> Variant:
    method, percentile = calibrator(best)
    return Variant(
        f"ptq-{best}-all-sites",
        f"PTQ {best.replace('-', ' ')}, every site INT8",
        "qdq",
        "float",
        method,
        percentile,
        keep_float=(),
        group="ptq",
    )


def unsmoothed_variant(best: str) -> Variant:
    """The default before smoothing: no SmoothQuant, the FFN output projection's input float too."""
    method, percentile = calibrator(best)
    return Variant(
        f"ptq-{best}-unsmoothed",
        f"PTQ {best.replace('-', ' ')}, no smoothing (FFN output input float)",
        "qdq",
        "float",
        method,
        percentile,
        group="ptq",
        smoothing="none",
    )


def qat_variant(best: str) -> Variant:
    method, percentile = calibrator(best)
    return Variant(
        f"qat-{best}", f"QAT (from {best.replace('-', ' ')})", "qdq", "qat", method, percentile, group="qat"
    )


def integer_variants() -> list[Variant]:
    return [
        Variant("integer-ptq", "I-BERT integer, PTQ", "integer", "float", INTEGER_METHOD, group="integer"),
        Variant(
            "integer-qat", "I-BERT integer, QAT", "integer", "integer-qat", INTEGER_METHOD, group="integer"
        ),
    ]
