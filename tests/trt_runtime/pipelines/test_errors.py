"""Bad input to the pipelines and to `pipeline()` itself: each gives its documented error, nothing crashes."""

from __future__ import annotations

import shutil

import pytest

import trt_runtime
from tests.fixtures.runtime_exports import NER_LABELS, tiny_export
from trt_runtime.contract.export_dir import ExportDirError
from trt_runtime.validation import InputError


@pytest.fixture(scope="module")
def pipes():
    return {
        "text-classification": trt_runtime.pipeline(
            "text-classification", tiny_export("bert", "text-classification")[1]
        ),
        "token-classification": trt_runtime.pipeline(
            "token-classification",
            tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)[1],
        ),
        "fill-mask": trt_runtime.pipeline("fill-mask", tiny_export("bert", "fill-mask", sharpen=4.0)[1]),
        "feature-extraction": trt_runtime.pipeline(
            "feature-extraction", tiny_export("bert", "feature-extraction")[1]
        ),
    }


TASKS = ["text-classification", "token-classification", "fill-mask", "feature-extraction"]


@pytest.mark.parametrize("task", TASKS)
def test_empty_text(pipes, task):
    with pytest.raises(InputError, match="the input is empty or only whitespace; pass some text"):
        pipes[task]("")


@pytest.mark.parametrize("task", TASKS)
def test_whitespace_text_in_a_list_names_its_position(pipes, task):
    with pytest.raises(InputError, match=r"input 1 is empty or only whitespace"):
        pipes[task](["a good [MASK] day", " \t\n"])


@pytest.mark.parametrize("task", TASKS)
def test_not_text(pipes, task):
    with pytest.raises(InputError, match="takes a str or a list of str, got int|must be a str, .*got int"):
        pipes[task](42)


@pytest.mark.parametrize("task", TASKS)
def test_empty_list(pipes, task):
    with pytest.raises(InputError, match="no inputs given"):
        pipes[task]([])


def test_pair_dict_with_unknown_key(pipes):
    with pytest.raises(InputError, match="unknown key\\(s\\) pair; use 'text' and 'text_pair'"):
        pipes["text-classification"]({"text": "a", "pair": "b"})


def test_unknown_call_option(pipes):
    with pytest.raises(
        TypeError,
        match="unknown option\\(s\\) top_n for the text-classification pipeline; it takes: top_k, function_to_apply",
    ):
        pipes["text-classification"]("a good day", top_n=2)


def test_bad_top_k(pipes):
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        pipes["text-classification"]("a good day", top_k=0)


def test_task_mismatch_is_reported_before_loading():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(
        ValueError,
        match="pipeline\\('fill-mask'\\) needs a fill-mask export, but .* is a text-classification export",
    ):
        trt_runtime.pipeline("fill-mask", export_dir)


def test_text_generation_suggests_the_runner():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(ValueError, match="text-generation is not served as a pipeline.*trt_runtime.load"):
        trt_runtime.pipeline("text-generation", export_dir)


def test_unknown_task_and_option():
    export_dir = tiny_export("bert", "text-classification")[1]
    with pytest.raises(
        ValueError, match="unknown task 'summarization'; pipelines exist for text-classification"
    ):
        trt_runtime.pipeline("summarization", export_dir)
    with pytest.raises(
        TypeError, match="unknown option\\(s\\) pooling for pipeline\\('text-classification'\\)"
    ):
        trt_runtime.pipeline("text-classification", export_dir, pooling="mean")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        trt_runtime.pipeline("text-classification", export_dir, batch_size=0)


def test_export_without_tokenizer(tmp_path):
    export_dir = tmp_path / "export"
    shutil.copytree(tiny_export("bert", "text-classification")[1], export_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (export_dir / name).unlink(missing_ok=True)
    with pytest.raises(ExportDirError, match="no tokenizer in .*copy the checkpoint's tokenizer files"):
        trt_runtime.pipeline("text-classification", export_dir)


@pytest.mark.parametrize("task", TASKS)
def test_text_of_only_control_or_zero_width_characters_is_refused_as_empty_text_is(pipes, task):
    """BERT's normalizer drops controls and WordPiece the format characters: transformers' pipeline encodes
    such a text as [CLS] [SEP] and answers the empty text's answer (checked on its tokenizer here)."""
    from transformers import AutoTokenizer

    invisible = "\u200b\u0001\ufeff\u200d"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_export("bert", "feature-extraction")[0]))
    assert tokenizer(invisible)["input_ids"] == tokenizer("")["input_ids"]
    with pytest.raises(InputError) as raised:
        pipes[task](["a real sentence", invisible])
    assert str(raised.value) == (
        "input 1 holds only control or zero-width characters (U+200B, U+0001, U+FEFF, U+200D), which the model "
        "does not see; pass some text"
    )


@pytest.mark.parametrize("task", TASKS)
def test_an_undecodable_character_is_named_not_reported_as_too_long(pipes, task):
    """Bytes decoded with errors='surrogateescape' hold lone surrogates: the tokenizer refused them with a
    ValueError that the pipeline reported as "cannot fit the input into 512 tokens"."""
    text = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")
    with pytest.raises(InputError) as raised:
        pipes[task](text)
    assert str(raised.value) == (
        "the input holds the unpaired surrogate U+DCE9 at position 3, which is not valid Unicode text "
        "(undecodable bytes?); decode its source with the right encoding, or with errors='replace'"
    )


def test_a_tuple_to_feature_extraction_is_refused_as_transformers_cannot_take_it(pipes):
    """transformers' feature-extraction pipeline has no pairs: a tuple reaches its tokenizer as a batch of
    texts and fails for texts of different lengths (run here); ours used to embed the two texts."""
    from tests.fixtures.runtime_exports import hf_pipeline

    pair = ("the movie was good", "it was not very good at all")
    with pytest.raises(ValueError, match="Unable to create tensor"):
        hf_pipeline("feature-extraction", tiny_export("bert", "feature-extraction")[0])(pair)
    with pytest.raises(InputError) as raised:
        pipes["feature-extraction"](pair)
    assert str(raised.value) == (
        "the input is a tuple of 2; feature-extraction embeds single texts and has no text pairs (as transformers' "
        "pipeline): pass a list of texts [a, b] for one embedding each"
    )
    assert len(pipes["feature-extraction"](list(pair))) == 2
