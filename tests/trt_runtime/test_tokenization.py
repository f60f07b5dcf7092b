"""TextTokenizer against transformers' AutoTokenizer: same ids, token types, offsets, truncation and decoding,
from tokenizer.json and from the vocab.txt / vocab.json + merges.txt fallbacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import trt_runtime
from tests.fixtures import ROOT
from tests.fixtures.tiny_tokenizers import byte_level_bpe_tokenizer, save_tiny_tokenizer
from trt_runtime.contract.export_dir import (
    ExportDirError,
)
from trt_runtime.tokenization import TextTokenizer

TINY_TEXTS = [
    "John lives in Paris, the capital of France!",
    "Where was Mary born? She was born in Berlin.",
    "Unbelievable stuff happened at the old bank.",
    "the   red\thouse  near the river",
]
PAIRS = [("Who lives in Paris?", "John lives in Paris, the capital of France.")]


def assert_same_encoding(ours: TextTokenizer, theirs, texts, max_length: int, truncation="longest_first"):
    for text in texts:
        first, second = (text, None) if isinstance(text, str) else text
        expected = theirs(
            first,
            second,
            truncation=truncation,
            max_length=max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=True,
        )
        got = ours.encode([text], max_length=max_length, truncation=truncation)[0]
        assert got.ids == expected["input_ids"], text
        assert got.attention_mask == expected["attention_mask"]
        assert got.type_ids == expected["token_type_ids"]
        assert got.special_tokens_mask == expected["special_tokens_mask"]
        assert [tuple(o) for o in got.offsets] == [tuple(o) for o in expected["offset_mapping"]]


def test_minilm_tokenizer_json_matches_transformers(minilm_dir, sentences):
    ours, theirs = TextTokenizer.from_directory(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)
    assert ours.model_max_length == theirs.model_max_length == 512
    assert (ours.pad_token_id, ours.mask_token_id, ours.cls_token_id) == (
        theirs.pad_token_id,
        theirs.mask_token_id,
        theirs.cls_token_id,
    )
    texts = [*sentences, "Héllo  wörld — naïve café 東京 [MASK] don't", *zip(sentences, reversed(sentences))]
    assert_same_encoding(ours, theirs, texts, max_length=512)
    # tokenizer.json carries truncation at 128 and fixed padding; like transformers, they are not applied
    long_text = " ".join(sentences * 3)
    assert (
        512
        > len(ours.encode([long_text], max_length=512)[0].ids)
        == len(theirs(long_text)["input_ids"])
        > 128
    )


def test_truncation_keeps_the_rest_as_overflow(minilm_dir, sentences):
    ours, theirs = TextTokenizer.from_directory(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)
    long_text = " ".join(sentences)
    assert_same_encoding(ours, theirs, [long_text, (sentences[0], long_text)], max_length=16)
    assert_same_encoding(ours, theirs, [(sentences[0], long_text)], max_length=24, truncation="only_second")
    encoding = ours.encode([long_text], max_length=16)[0]
    assert len(encoding.ids) == 16 and encoding.overflowing


def test_decoding_matches_transformers(minilm_dir, sentences):
    ours, theirs = TextTokenizer.from_directory(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)
    for text in sentences[:4]:
        ids = theirs(text)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
        tokens = theirs.convert_ids_to_tokens(ids)
        assert [ours.id_to_token(i) for i in ids] == tokens
        assert ours.tokens_to_string(tokens) == theirs.convert_tokens_to_string(tokens)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_tiny_tokenizers_match_transformers(tmp_path, model_type):
    save_tiny_tokenizer(tmp_path, model_type)
    ours, theirs = TextTokenizer.from_directory(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    mask = theirs.mask_token
    assert ours.mask_token == mask and ours.mask_token_id == theirs.mask_token_id
    assert ours.word_aware == (model_type == "bert")
    assert_same_encoding(ours, theirs, [*TINY_TEXTS, f"John lives in {mask} .", *PAIRS], max_length=64)


def test_vocab_txt_fallback_matches_the_full_tokenizer(minilm_dir, tmp_path, sentences):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(minilm_dir) / name, tmp_path / name)
    ours, theirs = TextTokenizer.from_directory(tmp_path), AutoTokenizer.from_pretrained(minilm_dir)
    texts = [*sentences, "Héllo wörld [MASK] naïve café", *zip(sentences, sentences[1:])]
    assert_same_encoding(ours, theirs, texts, max_length=512)
    ids = theirs("the [MASK] was fine")["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_bpe_files_fallback_matches_the_full_tokenizer(tmp_path):
    full = tmp_path / "full"
    save_tiny_tokenizer(full, "roberta")
    files = tmp_path / "files"
    files.mkdir()
    tokenizer = byte_level_bpe_tokenizer()
    tokenizer.model.save(str(files))  # vocab.json + merges.txt, without the added <mask> ...
    vocab = json.loads((files / "vocab.json").read_text())
    (files / "vocab.json").write_text(
        json.dumps({**vocab, "<mask>": tokenizer.token_to_id("<mask>")})
    )  # ... as RoBERTa's has it
    config = json.loads((full / "tokenizer_config.json").read_text())
    (files / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = TextTokenizer.from_directory(files), AutoTokenizer.from_pretrained(full)
    assert sorted(p.name for p in files.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert_same_encoding(ours, theirs, [*TINY_TEXTS, "John lives in <mask>.", *PAIRS], max_length=64)


def test_directory_without_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(
        ExportDirError,
        match=r"no tokenizer in .*expected tokenizer.json \(or vocab.txt, or vocab.json \+ merges.txt\)",
    ):
        TextTokenizer.from_directory(tmp_path)


def test_broken_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ExportDirError, match="tokenizer.json cannot be read"):
        TextTokenizer.from_directory(tmp_path)


# --- damaged tokenizer files ---------------------------------------------------------------------------------

def test_tokenizer_config_that_is_not_json(export_copy):
    (export_copy / "tokenizer_config.json").write_text("{'model_max_length': 64}")
    with pytest.raises(
        ExportDirError, match="tokenizer_config.json is not valid JSON .*copy the checkpoint's tokenizer"
    ):
        trt_runtime.pipeline("text-classification", export_copy)


def test_run_command_without_a_tokenizer_exits_2_with_the_fix(export_copy):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (export_copy / name).unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "trt_runtime", "run", str(export_copy), "a good day"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("error: no tokenizer in")
        and "copy the checkpoint's tokenizer files" in result.stderr
    )
    assert "Traceback" not in result.stderr
