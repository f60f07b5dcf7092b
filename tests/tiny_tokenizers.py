"""Tiny tokenizers for the tiny random models of tests/tiny_models.py, built with the `tokenizers` library.

`save_tiny_tokenizer(directory, model_type)` writes tokenizer.json + tokenizer_config.json +
special_tokens_map.json, so that both `transformers.AutoTokenizer` and `trt_runtime` load the same
tokenizer from the directory, and returns the vocabulary size the model needs (`vocab_size=` for
`save_tiny`).

- BERT / SqueezeBERT: a lower-casing WordPiece vocabulary of 99 entries (the tiny models' vocabulary):
  [PAD] [UNK] [CLS] [SEP] [MASK], punctuation, whole words and "##" continuations, so ordinary sentences
  made of WORDS split into subwords and unknown words become [UNK].
- RoBERTa / I-BERT: a byte-level BPE trained on CORPUS (its vocabulary starts with the 256 byte symbols,
  so the model needs a bigger vocabulary: BPE_VOCAB_SIZE).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.tiny_models import VOCAB

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    ".",
    ",",
    "?",
    "!",
    "'",
    "-",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "it",
    "that",
    "for",
    "on",
    "with",
    "at",
    "he",
    "she",
    "they",
    "we",
    "i",
    "not",
    "but",
    "what",
    "who",
    "where",
    "when",
    "how",
    "paris",
    "london",
    "berlin",
    "france",
    "city",
    "capital",
    "river",
    "movie",
    "film",
    "good",
    "bad",
    "great",
    "day",
    "night",
    "new",
    "york",
    "john",
    "mary",
    "live",
    "work",
    "born",
    "play",
    "read",
    "book",
    "bank",
    "walk",
    "rain",
    "sun",
    "house",
    "old",
    "small",
    "big",
    "red",
    "blue",
]
CONTINUATIONS = [
    "##s",
    "##ed",
    "##ing",
    "##ly",
    "##er",
    "##est",
    "##y",
    "##a",
    "##e",
    "##n",
    "##o",
    "##r",
    "##t",
    "##l",
    "##d",
    "##i",
    "##m",
    "##k",
    "##h",
    "##u",
    "##p",
    "##c",
]
WORDPIECE_VOCAB = WORDPIECE_SPECIALS + WORDS + CONTINUATIONS
assert len(WORDPIECE_VOCAB) <= VOCAB, len(WORDPIECE_VOCAB)

BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 as RoBERTa has them; <mask> comes last
BPE_VOCAB_SIZE = 400
CORPUS = [
    "The capital of France is Paris, a city on the river.",
    "John lives in London and works at the bank.",
    "Mary was born in Berlin; she reads a good book every night.",
    "What a great movie! The film was not bad at all.",
    "They walked in the rain to the old red house near the river.",
    "Where does he play? He plays in New York when the sun is out.",
] * 4

MODEL_MAX_LENGTH = 64  # tiny_models.MAX_POSITIONS


def wordpiece_tokenizer() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(WORDPIECE_VOCAB)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        lowercase=True, strip_accents=None, handle_chinese_chars=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(WORDPIECE_SPECIALS)
    return tokenizer


def byte_level_bpe_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE - 1,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])  # as RoBERTa's
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tokenizer


def save_tiny_tokenizer(directory: Path, model_type: str) -> int:
    """Write the tiny tokenizer for `model_type` into `directory`; returns the vocabulary size it needs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model_type in ("bert", "squeezebert"):
        tokenizer = wordpiece_tokenizer()
        special = {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    elif model_type in ("roberta", "ibert"):
        tokenizer = byte_level_bpe_tokenizer()
        special = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": "<mask>",
        }
        config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True}
    else:
        raise ValueError(f"no tiny tokenizer for model_type {model_type!r}")
    tokenizer.save(str(directory / "tokenizer.json"))
    config.update(special, model_max_length=MODEL_MAX_LENGTH, clean_up_tokenization_spaces=False)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return tokenizer.get_vocab_size()
