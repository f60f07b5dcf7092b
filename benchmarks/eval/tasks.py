"""The two evaluation tasks on the shipped VADER corpus, their examples per split, and batching.

Both read `models.data.labelled_sentences` (human-rated sentences, mean rating in [-4, 4], split by a
salted hash of the normalized text: calibration 4 %, train 76 %, dev 10 %, test 10 %):

- `binary`: positive (score > 0) vs negative (score < 0). Sentences rated exactly 0 (neutral: 1.7 % of
  the corpus, 40 of the 2,372 test sentences) are dropped from every split: a neutral sentence has no
  right answer in a two-way task, and counting it either way would measure the tie-break, not the model.
- `regression`: the score itself (every sentence, neutral ones included).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.eval.metrics import BINARY_METRICS, REGRESSION_METRICS
from models.data import SPLITS, LabelledSentence, labelled_batches, labelled_sentences, tokenize


@dataclass(frozen=True)
class Task:
    name: str  # "binary" | "regression"
    labels: tuple[str, ...]  # the head's id2label
    metrics: tuple[str, ...]  # the first is the headline metric

    @property
    def regression(self) -> bool:
        return self.name == "regression"

    @property
    def headline(self) -> str:
        return self.metrics[0]

    def keep(self, sentence: LabelledSentence) -> bool:
        return self.regression or sentence.score != 0.0

    def target(self, sentence: LabelledSentence) -> int | float:
        return float(sentence.score) if self.regression else int(sentence.score > 0)


TASKS: dict[str, Task] = {
    "binary": Task("binary", ("negative", "positive"), BINARY_METRICS),
    "regression": Task("regression", ("score",), REGRESSION_METRICS),
}


@dataclass(frozen=True)
class Examples:
    """Texts of one split with their targets (class ids, or scores), in a fixed order."""

    split: str
    texts: tuple[str, ...]
    targets: np.ndarray  # int64 labels (binary) or float64 scores (regression)
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def digest(self) -> str:
        """sha256 of the texts and targets (what cached predictions are keyed by)."""
        h = hashlib.sha256()
        for text, target in zip(self.texts, self.targets.tolist()):
            h.update(f"{target!r}\t{text}\n".encode())
        return h.hexdigest()


def task_of(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def examples(task: Task, split: str, limit: int | None = None, seed: int = 0) -> Examples:
    """The split's examples for `task`; with `limit`, the first `limit` of a seeded shuffle (else file order)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    rows = [s for s in labelled_sentences(split) if task.keep(s)]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        random.Random(seed).shuffle(rows)
        rows = rows[:limit]
    dtype = np.float64 if task.regression else np.int64
    return Examples(
        split,
        tuple(s.text for s in rows),
        np.array([task.target(s) for s in rows], dtype=dtype),
        tuple(s.source for s in rows),
    )


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [len(ids) for ids in encoded]


def length_order(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    """Indices of `texts` by token length (stable), so batches pad little."""
    lengths = token_lengths(tokenizer, texts, max_length)
    return sorted(range(len(texts)), key=lambda i: lengths[i])


def training_batches(
    task: Task, data: Examples, tokenizer: Any, batch_size: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Length-bucketed batches with `labels` (finetune shuffles their order every epoch)."""
    order = length_order(tokenizer, data.texts, max_length)
    texts = [data.texts[i] for i in order]
    targets: list[int] | list[float] = (
        [float(data.targets[i]) for i in order] if task.regression else [int(data.targets[i]) for i in order]
    )
    return labelled_batches(texts, targets, tokenizer, batch_size=batch_size, max_length=max_length)


def inference_batches(
    texts: Sequence[str], tokenizer: Any, batch_size: int, max_length: int
) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """(positions, model inputs) batches of similar length; positions say where each row's text was."""
    order = length_order(tokenizer, texts, max_length)
    return [
        (chunk, tokenize(tokenizer, [texts[i] for i in chunk], max_length))
        for chunk in (order[start : start + batch_size] for start in range(0, len(order), batch_size))
    ]
