"""The export directory's tokenizer, with the `tokenizers` library, as transformers' fast tokenizers behave.

`TextTokenizer.from_directory(dir)` reads tokenizer.json (what transformers' fast tokenizers save), or
else builds the tokenizer from a WordPiece vocab.txt (BERT) or a byte-level BPE vocab.json + merges.txt
(RoBERTa), with the options of tokenizer_config.json. Special tokens come from tokenizer_config.json /
special_tokens_map.json. The padding and truncation that tokenizer.json may carry are ignored: like
transformers, every call sets its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from trt_runtime.contract.export_dir import ExportDirError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
WORDPIECE_VOCAB = "vocab.txt"
BPE_VOCAB, BPE_MERGES = "vocab.json", "merges.txt"
#: transformers writes this when a tokenizer has no length limit
_NO_LIMIT = 10**12
#: special-token roles, and the token each has in BERT-style and RoBERTa-style vocabularies
ROLES: dict[str, tuple[str, ...]] = {
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "pad_token": ("[PAD]", "<pad>"),
    "unk_token": ("[UNK]", "<unk>"),
    "mask_token": ("[MASK]", "<mask>"),
    "bos_token": ("<s>",),
    "eos_token": ("</s>",),
}

Text = str | tuple[str, str]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportDirError(
            f"{path} is not valid JSON ({e}); copy the checkpoint's tokenizer files again"
        ) from None
    return data if isinstance(data, dict) else {}


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or {"content": ...}."""
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return None


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and limits of a Hugging Face tokenizer directory."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        special_tokens: dict[str, str],
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
    ):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._lock = threading.Lock()  # truncation is tokenizer state: one configure+encode at a time

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: str | Path) -> TextTokenizer:
        directory = Path(directory)
        config = _read_json(directory / TOKENIZER_CONFIG)
        special_map = _read_json(directory / SPECIAL_TOKENS_MAP)
        config = {**config, **special_map}
        if (directory / TOKENIZER_JSON).exists():
            try:
                tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_JSON))
            except Exception as e:
                raise ExportDirError(
                    f"{directory / TOKENIZER_JSON} cannot be read by `tokenizers` ({e})"
                ) from None
            special = _special_tokens(tokenizer, config)
        else:
            if (directory / WORDPIECE_VOCAB).exists():
                tokenizer = _wordpiece_from_vocab(directory / WORDPIECE_VOCAB, config)
                lstrip_mask = False
            elif (directory / BPE_VOCAB).exists() and (directory / BPE_MERGES).exists():
                tokenizer = _byte_level_bpe_from_files(directory / BPE_VOCAB, directory / BPE_MERGES, config)
                lstrip_mask = (
                    True  # RoBERTa's <mask> takes the space before it, as RobertaTokenizerFast sets it
                )
            else:
                raise ExportDirError(
                    f"no tokenizer in {directory}: expected {TOKENIZER_JSON} (or {WORDPIECE_VOCAB}, or "
                    f"{BPE_VOCAB} + {BPE_MERGES}); copy the checkpoint's tokenizer files there or re-export"
                )
            special = _special_tokens(tokenizer, config)
            # special tokens must not be split ("[MASK]" -> "[", "mask", "]"); tokenizer.json lists its own
            tokenizer.add_special_tokens(
                [
                    _added(token, config.get(role), lstrip=lstrip_mask and role == "mask_token")
                    for role, token in special.items()
                ]
            )
        max_length = config.get("model_max_length")
        limit = (
            int(max_length) if isinstance(max_length, (int, float)) and 0 < max_length < _NO_LIMIT else None
        )
        return cls(tokenizer, special, limit, bool(config.get("clean_up_tokenization_spaces", False)))

    # --- special tokens -----------------------------------------------------------------------------

    def special_token_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def pad_token_id(self) -> int:
        return self.special_token_id("pad_token") or 0

    @property
    def mask_token(self) -> str | None:
        return self.special_tokens.get("mask_token")

    @property
    def mask_token_id(self) -> int | None:
        return self.special_token_id("mask_token")

    @property
    def cls_token_id(self) -> int | None:
        return self.special_token_id("cls_token")

    @property
    def unk_token_id(self) -> int | None:
        return self.special_token_id("unk_token")

    @property
    def word_aware(self) -> bool:
        """Whether tokens mark word continuations ("##" in WordPiece), telling subwords from words."""
        return bool(getattr(self.tokenizer.model, "continuing_subword_prefix", None))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def max_token_id(self) -> int:
        """The highest id the tokenizer can produce (added tokens included); ids need not be contiguous."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)

    def num_special_tokens(self, pair: bool) -> int:
        return self.tokenizer.num_special_tokens_to_add(pair)

    # --- encoding and decoding ----------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[Text],
        *,
        max_length: int,
        truncation: str = "longest_first",
        stride: int = 0,
    ) -> list[Encoding]:
        """Encode texts (or (text, text_pair) pairs) with special tokens, truncated to max_length tokens.

        Truncated encodings keep the rest in `.overflowing` (windows overlapping by `stride` tokens).
        Raises ValueError where a text cannot be truncated that way (e.g. only_second with a long first text).
        """
        with self._lock:
            self.tokenizer.enable_truncation(max_length, stride=stride, strategy=truncation)
            try:
                return self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
            except Exception as e:  # tokenizers raises plain Exception with the reason
                raise ValueError(str(e)) from None
            finally:
                self.tokenizer.no_truncation()

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(int(token_id)) or ""

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """transformers' `convert_tokens_to_string`: the decoder applied to tokens."""
        decoder = self.tokenizer.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # transformers skips this clean-up for BPE tokenizers, where it would remove real spaces
        if self.clean_up_tokenization_spaces and type(self.tokenizer.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text


def _special_tokens(tokenizer: Tokenizer, config: dict[str, Any]) -> dict[str, str]:
    """role -> token: the configuration's where it names one, else the usual one where the vocab has it."""
    special: dict[str, str] = {}
    for role, usual in ROLES.items():
        token = _content(config.get(role))
        if token is None:
            token = next((t for t in usual if tokenizer.token_to_id(t) is not None), None)
        if token is not None and tokenizer.token_to_id(token) is not None:
            special[role] = token
    return special


def _added(token: str, configured: Any, lstrip: bool = False) -> AddedToken:
    options = configured if isinstance(configured, dict) else {}
    return AddedToken(
        token,
        lstrip=bool(options.get("lstrip", lstrip)),
        rstrip=bool(options.get("rstrip", False)),
        single_word=bool(options.get("single_word", False)),
        normalized=bool(options.get("normalized", False)),
        special=True,
    )


def _wordpiece_from_vocab(vocab_path: Path, config: dict[str, Any]) -> Tokenizer:
    """BERT's tokenizer from vocab.txt, as transformers' BertTokenizerFast builds it."""
    vocab: dict[str, int] = {}
    for line in vocab_path.read_text(encoding="utf-8").splitlines():
        vocab.setdefault(line.rstrip("\n"), len(vocab))
    special = {
        role: _content(config.get(role)) or usual[0] for role, usual in ROLES.items() if role != "bos_token"
    }
    tokenizer = Tokenizer(
        models.WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    if cls not in vocab or sep not in vocab:
        raise ExportDirError(
            f"{vocab_path} has no {cls} / {sep} token; copy the checkpoint's tokenizer files again"
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tokenizer


def _byte_level_bpe_from_files(vocab_path: Path, merges_path: Path, config: dict[str, Any]) -> Tokenizer:
    """RoBERTa's tokenizer from vocab.json + merges.txt, as transformers' RobertaTokenizerFast builds it."""
    add_prefix_space = bool(config.get("add_prefix_space", False))
    tokenizer = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    cls = _content(config.get("cls_token")) or "<s>"
    sep = _content(config.get("sep_token")) or "</s>"
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    if cls_id is None or sep_id is None:
        raise ExportDirError(
            f"{vocab_path} has no {cls} / {sep} token; copy the checkpoint's tokenizer files again"
        )
    tokenizer.post_processor = processors.RobertaProcessing(
        (sep, sep_id),
        (cls, cls_id),
        trim_offsets=bool(config.get("trim_offsets", True)),
        add_prefix_space=add_prefix_space,
    )
    return tokenizer
