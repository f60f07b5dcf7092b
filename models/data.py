"""Text for calibration and evaluation: the shipped corpus, its fixed splits, and tokenized batches.

The shipped corpus (calibration_data/, see its README.md) is the human-rated sentence sets of VADER
(Hutto & Gilbert, ICWSM 2014; MIT licence): tweets, movie-review snippets, New York Times editorial
snippets and Amazon review snippets, each with a mean sentiment rating in [-4, 4].

Every sentence belongs to exactly one split, fixed by a hash of its normalized text (so duplicates
share a split and no sentence leaks from one split into another):
    calibration  ~4 %   reserved for calibrating quantizers (calibration_data/calibration.txt)
    train        76 %   fine-tuning
    dev          10 %   model selection
    test         10 %   the reported accuracy
Calibration never sees train/dev/test text, and evaluation never sees calibration text.

    texts = load_texts()                                    # the calibration subset (or a file/dir of yours)
    batches = calibration_batches(texts, "ckpt_dir", batch_size=32, max_length=128, num_samples=512)
    rows = labelled_sentences("test", sources=["movie_reviews"])   # LabelledSentence(source, id, score, text, split)

Calibration data formats (DESIGN.md): a .txt file (one sample per line; a tab separates the two
texts of a pair), a .jsonl file (`text` and optional `text_pair` fields), or a directory of those.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from models.errors import DataError
from trt_runtime.contract.text import text_problem

Text = str | tuple[str, str]
#: the batch keys a model's forward takes (batches may carry others, e.g. labels, offsets)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# package data (calibration_data/__init__.py): the same lookup from a checkout and from an installed wheel;
# wheels install unpacked, so the resource root is a real directory
CALIBRATION_DATA_DIR = Path(str(files("calibration_data")))
CALIBRATION_FILE = CALIBRATION_DATA_DIR / "calibration.txt"
#: how calibration files and export.json name the shipped default data
SHIPPED_DATA_NAME = "calibration_data/calibration.txt"
LABELLED_DIR = CALIBRATION_DATA_DIR / "vader"
#: the labelled sentence sets, one TSV each (id, score, text)
SOURCES = ("tweets", "movie_reviews", "nyt_editorials", "amazon_reviews")
SCORE_RANGE = (-4.0, 4.0)

#: [low, high) share of the hash range that each split takes
SPLITS: dict[str, tuple[float, float]] = {
    "calibration": (0.00, 0.04),
    "train": (0.04, 0.80),
    "dev": (0.80, 0.90),
    "test": (0.90, 1.00),
}
SPLIT_SALT = "qbert-deploy split v1"
DATA_SUFFIXES = (".txt", ".jsonl")


# -- the fixed splits ------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """What the split hash sees: case-folded, whitespace collapsed (near-identical copies share a split)."""
    return " ".join(text.split()).casefold()


def split_position(text: str) -> float:
    """Where the text falls in [0, 1): the first 8 bytes of sha256(salt, normalized text)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}\n{normalize(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(text: str) -> str:
    """The split ("calibration", "train", "dev" or "test") a sentence belongs to."""
    position = split_position(text)
    for name, (low, high) in SPLITS.items():
        if low <= position < high:
            return name
    raise AssertionError("SPLITS must cover [0, 1)")


@dataclass(frozen=True)
class LabelledSentence:
    source: str  # one of SOURCES
    id: str  # the id in the original VADER file
    score: float  # mean human sentiment rating, -4 (extremely negative) .. 4 (extremely positive)
    text: str
    split: str  # one of SPLITS


def read_labelled_tsv(path: Path, source: str) -> list[LabelledSentence]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line_number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) != 3:
                raise DataError(f"{path}:{line_number}: expected 3 tab-separated fields (id, score, text), got {len(row)}")
            sentence_id, score, text = row
            rows.append(LabelledSentence(source, sentence_id, float(score), text, split_of(text)))
    return rows


@lru_cache(maxsize=1)
def _all_labelled() -> tuple[LabelledSentence, ...]:
    rows: list[LabelledSentence] = []
    for source in SOURCES:
        path = LABELLED_DIR / f"{source}.tsv"
        if not path.exists():
            raise DataError(f"{path} not found: the shipped corpus is package data of qbert-deploy; reinstall it")
        rows.extend(read_labelled_tsv(path, source))
    return tuple(rows)


def labelled_sentences(split: str | None = None, sources: Iterable[str] | None = None) -> list[LabelledSentence]:
    """The rated sentences of one split (None: all), from some sources (None: all), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    wanted = set(SOURCES if sources is None else sources)
    unknown = wanted - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(sorted(unknown))}; sources: {', '.join(SOURCES)}")
    return [s for s in _all_labelled() if s.source in wanted and (split is None or s.split == split)]


def calibration_subset() -> list[str]:
    """The calibration split as shipped in calibration.txt: unique texts, in hash order (any prefix is a mixed sample)."""
    unique = {s.text: split_position(s.text) for s in labelled_sentences("calibration")}
    return sorted(unique, key=lambda text: unique[text])


# -- reading calibration data ---------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded as UTF-8 line by line so that a bad byte is reported with
    its file, line and column (a plain `open(encoding="utf-8")` names neither)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{line_number}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8 ({e.reason}); "
                    f"calibration data is UTF-8 text: convert the file (e.g. iconv -f latin1 -t utf-8)"
                ) from None


def _checked(path: Path, line_number: int, text: str) -> str:
    """`text`, unless the model would see nothing of it (the pipelines' rule, trt_runtime.contract.text): a
    calibration batch of such texts calibrates on [CLS] [SEP] only."""
    problem = text_problem(text)
    if problem is not None:
        raise DataError(f"{path}:{line_number}: the text {text!r} {problem} (or remove the line)")
    return text


def _read_txt(path: Path) -> list[Text]:
    texts: list[Text] = []
    for line_number, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue  # blank lines separate texts
        parts = line.split("\t")
        if len(parts) == 1:
            texts.append(_checked(path, line_number, parts[0]))
        elif len(parts) == 2:
            texts.append((_checked(path, line_number, parts[0]), _checked(path, line_number, parts[1])))
        else:
            raise DataError(
                f"{path}:{line_number}: {len(parts) - 1} tabs; a line is one text, or two texts of a pair "
                f"separated by one tab (use .jsonl with text/text_pair for texts that contain tabs)"
            )
    return texts


def _read_jsonl(path: Path) -> list[Text]:
    texts: list[Text] = []
    for line_number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_number}: not valid JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{line_number}: each line must be an object with a string "text" field')
        pair = record.get("text_pair")
        text = _checked(path, line_number, record["text"])
        if pair is None:
            texts.append(text)
        elif isinstance(pair, str):
            texts.append((text, _checked(path, line_number, pair)))
        else:
            raise DataError(f'{path}:{line_number}: "text_pair" must be a string')
    return texts


def load_texts(path: str | os.PathLike | None = None) -> list[Text]:
    """Calibration texts from a .txt / .jsonl file or a directory of them; None: the shipped calibration subset."""
    path = Path(path) if path is not None else CALIBRATION_FILE
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no .txt or .jsonl files; put calibration text there or pass a file")
        texts = [text for file in files for text in load_texts(file)]
    elif not path.exists():
        hint = " (the shipped corpus is package data of qbert-deploy; reinstall it)" if path == CALIBRATION_FILE else ""
        raise DataError(f"{path} not found{hint}")
    elif path.suffix == ".txt":
        texts = _read_txt(path)
    elif path.suffix == ".jsonl":
        texts = _read_jsonl(path)
    else:
        raise DataError(f"{path}: calibration data must be a .txt or .jsonl file or a directory of them")
    if not texts:
        raise DataError(f"{path} holds no text")
    return texts


# -- tokenized batches ----------------------------------------------------------------------------


def load_tokenizer(tokenizer_or_checkpoint_dir: Any) -> Any:
    """A tokenizer, or the checkpoint's own tokenizer loaded from its directory (offline)."""
    if isinstance(tokenizer_or_checkpoint_dir, str | os.PathLike):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer_or_checkpoint_dir))
    return tokenizer_or_checkpoint_dir


def tokenize(tokenizer: Any, texts: Sequence[Text], max_length: int = 128) -> dict[str, torch.Tensor]:
    """One padded batch of int64 input_ids / attention_mask / token_type_ids (zeros where the tokenizer has none)."""
    pairs = [t for t in texts if isinstance(t, tuple)]
    if pairs and len(pairs) != len(texts):
        raise ValueError("a batch must hold only single texts or only pairs")
    if pairs:
        encoded = tokenizer(
            [a for a, _ in pairs], [b for _, b in pairs],
            padding=True, truncation=True, max_length=max_length, return_tensors="pt",
        )
    else:
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {
        "input_ids": encoded["input_ids"].long(),
        "attention_mask": encoded["attention_mask"].long(),
    }
    token_types = encoded.get("token_type_ids")
    batch["token_type_ids"] = token_types.long() if token_types is not None else torch.zeros_like(batch["input_ids"])
    return batch


def calibration_batches(
    texts: Sequence[Text],
    tokenizer_or_checkpoint_dir: Any,
    batch_size: int = 32,
    max_length: int = 128,
    num_samples: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The first `num_samples` texts (all when None) tokenized into padded batches of dicts of int64 tensors."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_samples is not None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        texts = texts[:num_samples]
    tokenizer = load_tokenizer(tokenizer_or_checkpoint_dir)
    batches = []
    chunk: list[Text] = []
    for text in texts:
        # a batch is all singles or all pairs: a change of kind starts a new batch
        if chunk and (len(chunk) == batch_size or isinstance(text, tuple) != isinstance(chunk[0], tuple)):
            batches.append(tokenize(tokenizer, chunk, max_length))
            chunk = []
        chunk.append(text)
    if chunk:
        batches.append(tokenize(tokenizer, chunk, max_length))
    return batches


def labelled_batches(
    texts: Sequence[Text],
    labels: Sequence[int] | Sequence[float],
    tokenizer_or_checkpoint_dir: Any,
    batch_size: int = 32,
    max_length: int = 128,
) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches with a `labels` tensor (int64 class ids, or float32 targets for regression)."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    tokenizer = load_tokenizer(tokenizer_or_checkpoint_dir)
    dtype = torch.float32 if any(isinstance(label, float) for label in labels) else torch.long
    batches = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[start : start + batch_size], max_length)
        batch["labels"] = torch.tensor(list(labels[start : start + batch_size]), dtype=dtype)
        batches.append(batch)
    return batches
