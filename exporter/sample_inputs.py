"""Model inputs for tracing and validation: real tokenized text where the checkpoint has a tokenizer, else generated ids.

Both kinds are right-padded with rows of different lengths, so the attention mask and (RoBERTa)
padding-aware position ids are exercised, and batches are shaped as the signature says (multiple
choice: [batch, num_choices, sequence]).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.signature import Signature

Text = str | tuple[str, str]

# Shapes: tracing uses one, validation four others, so nothing the tracer baked in can pass unnoticed.
TRACE_BATCH, TRACE_CHOICES, TRACE_SEQUENCE = 2, 2, 16
VALIDATION_BATCHES = (1, 3)
VALIDATION_CHOICES = 3
VALIDATION_SEQUENCES = (7, 29)


@dataclass(frozen=True)
class Shape:
    batch: int
    sequence: int
    choices: int | None = None

    def __str__(self) -> str:
        choices = f" x {self.choices} choices" if self.choices else ""
        return f"batch {self.batch}{choices} x sequence {self.sequence}"

    @property
    def rows(self) -> int:
        return self.batch * (self.choices or 1)


def trace_shape(signature: Signature, max_sequence_length: int) -> Shape:
    return Shape(TRACE_BATCH, min(TRACE_SEQUENCE, max_sequence_length), TRACE_CHOICES if signature.has_choices else None)


def validation_shapes(signature: Signature, max_sequence_length: int) -> list[Shape]:
    """Two batch sizes x two sequence lengths (both different from the trace shape where the limit allows)."""
    sequences = sorted({min(s, max_sequence_length) for s in VALIDATION_SEQUENCES})
    choices = VALIDATION_CHOICES if signature.has_choices else None
    return [Shape(b, s, choices) for b, s in itertools.product(VALIDATION_BATCHES, sequences)]


def generated_feeds(
    signature: Signature, shape: Shape, vocab_size: int, pad_token_id: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random token ids (never the padding id), right-padded to lengths between 2 and the full sequence."""
    rng = np.random.default_rng(seed)
    rows, seq = shape.rows, shape.sequence
    candidates = np.array([t for t in range(vocab_size) if t != pad_token_id])
    ids = rng.choice(candidates, size=(rows, seq))
    lengths = np.full(rows, seq)
    if seq > 2:
        lengths[1:] = rng.integers(2, seq + 1, size=rows - 1)  # row 0 stays full length
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, pad_token_id).astype(np.int64)
    # second segment from the middle of each row, as a sentence pair would have it
    types = ((np.arange(seq)[None, :] >= (lengths[:, None] + 1) // 2) & (mask == 1)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return _shaped(feeds, signature, shape)


def tokenized_feeds(tokenizer: Any, texts: Sequence[Text], signature: Signature, shape: Shape) -> dict[str, np.ndarray]:
    """Texts (cycled as needed) tokenized by the checkpoint's tokenizer, padded or truncated to the shape."""
    if not texts:
        raise ValueError("no texts to tokenize")
    chosen = [texts[i % len(texts)] for i in range(shape.rows)]
    rows = [  # one row at a time: a batch may mix single texts and pairs
        tokenizer(*(text if isinstance(text, tuple) else (text,)), padding="max_length", truncation=True,
                  max_length=shape.sequence, return_tensors="np")
        for text in chosen
    ]
    encoded = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
    feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in encoded if name in signature.input_names}
    if "token_type_ids" in signature.input_names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return _shaped(feeds, signature, shape)


def _shaped(feeds: dict[str, np.ndarray], signature: Signature, shape: Shape) -> dict[str, np.ndarray]:
    out = {}
    for name in signature.input_names:
        value = feeds[name]
        if shape.choices:
            value = value.reshape(shape.batch, shape.choices, shape.sequence)
        out[name] = np.ascontiguousarray(value, dtype=np.int64)
    return out


def load_tokenizer(model_dir: Path) -> Any | None:
    """The checkpoint's own (fast) tokenizer, or None when it ships no tokenizer files."""
    from exporter.directory import TOKENIZER_FILES

    if not any((model_dir / name).exists() for name in TOKENIZER_FILES if name != "special_tokens_map.json"):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
