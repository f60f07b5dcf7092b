"""models.data: calibration text files are read as the model will see them, or refused naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.data import load_texts
from models.errors import DataError


def test_non_utf8_text_is_refused_with_its_file_line_and_column(tmp_path: Path):
    """Used to be UnicodeDecodeError's "'utf-8' codec can't decode byte 0xff in position 7", naming nothing."""
    for suffix in (".txt", ".jsonl"):
        path = tmp_path / f"latin1{suffix}"
        first = b"first line\n" if suffix == ".txt" else b'{"text": "first line"}\n'
        path.write_bytes(first + "caf\u00e9 cr\u00e8me\n".encode("latin-1"))
        with pytest.raises(DataError) as raised:
            load_texts(path)
        assert raised.value.code == "data-invalid"
        assert str(raised.value) == (
            f"{path}:2: byte 0xe9 at column 4 is not UTF-8 (invalid continuation byte); calibration data is UTF-8 "
            f"text: convert the file (e.g. iconv -f latin1 -t utf-8)"
        ), suffix
        assert "caf\u00e9 cr\u00e8me".encode("latin-1").index(b"\xe9") == 3  # column 4, counted from 1


def test_jsonl_of_empty_texts_is_refused_as_txt_is(tmp_path: Path):
    """A .txt of blank lines holds no text (refused); a .jsonl of {"text": ""} used to calibrate on [CLS] [SEP]."""
    blank_txt = tmp_path / "blank.txt"
    blank_txt.write_text("\n  \n\n")
    with pytest.raises(DataError, match=f"^{blank_txt} holds no text$"):
        load_texts(blank_txt)
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text('{"text": "a real sentence"}\n{"text": "   "}\n')
    with pytest.raises(DataError) as raised:
        load_texts(empty_jsonl)
    assert str(raised.value) == f"{empty_jsonl}:2: the text '   ' is empty or only whitespace; pass some text (or remove the line)"
    pair = tmp_path / "pair.jsonl"
    pair.write_text('{"text": "a question?", "text_pair": ""}\n')
    with pytest.raises(DataError, match=f"^{pair}:1: the text '' is empty"):
        load_texts(pair)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_texts_of_only_control_or_zero_width_characters_are_refused(tmp_path: Path, suffix: str):
    """BERT's tokenizer drops them all (transformers: the text encodes as [CLS] [SEP], checked below)."""
    from transformers import BertTokenizerFast

    from tests.fixtures.tiny_tokenizers import save_tiny_tokenizer

    invisible = "\u200b\u0001\ufeff"
    save_tiny_tokenizer(tmp_path, "bert")
    tokenizer = BertTokenizerFast.from_pretrained(str(tmp_path))
    assert tokenizer(invisible)["input_ids"] == tokenizer("")["input_ids"]
    path = tmp_path / f"texts{suffix}"
    lines = ["some text", invisible] if suffix == ".txt" else [json.dumps({"text": t}) for t in ("some text", invisible)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        load_texts(path)
    assert str(raised.value).startswith(
        f"{path}:2: the text {invisible!r} holds only control or zero-width characters (U+200B, U+0001, U+FEFF)"
    )


def test_ordinary_texts_and_pairs_still_load(tmp_path: Path):
    path = tmp_path / "texts.txt"
    path.write_text("caf\u00e9 cr\u00e8me\n\nquestion?\tanswer.\n")
    assert load_texts(path) == ["caf\u00e9 cr\u00e8me", ("question?", "answer.")]
