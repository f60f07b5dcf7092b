"""Bad input to the pipelines and to `pipeline()` itself: each gives its documented error, nothing crashes."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import trt_runtime
from tests.fixtures.runtime_exports import NER_LABELS, tiny_export
from tests.fixtures.tiny_models import VOCAB
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR
from trt_runtime.contract.export_dir import ExportDirError
from trt_runtime.pipelines.base import Pipeline
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


# --- over-long input is truncated with a warning; empty parts are refused ------------------------------------

PIPELINES = {
    "token-classification": lambda: tiny_export(
        "bert", "token-classification", sharpen=4.0, id2label=NER_LABELS
    ),
    "fill-mask": lambda: tiny_export("bert", "fill-mask", sharpen=4.0),
    "feature-extraction": lambda: tiny_export("bert", "feature-extraction"),
    "next-sentence-prediction": lambda: tiny_export("bert", "next-sentence-prediction", sharpen=8.0),
    "multiple-choice": lambda: tiny_export("bert", "multiple-choice", sharpen=8.0),
    "question-answering": lambda: tiny_export("bert", "question-answering", sharpen=4.0),
}
LONG = " ".join(["john lives in paris and mary reads a book"] * 12)  # ~110 tokens, the limit is 64


@pytest.fixture(scope="module")
def all_pipes() -> dict[str, Pipeline]:
    return {task: trt_runtime.pipeline(task, make()[1]) for task, make in PIPELINES.items()}


OVER_LONG = {
    "token-classification": LONG,
    "fill-mask": "the [MASK] day . " + LONG,
    "feature-extraction": LONG,
    "next-sentence-prediction": {"text": LONG, "text_pair": LONG},
    "multiple-choice": {"prompt": LONG, "choices": [LONG, "a good day"]},
}


@pytest.mark.parametrize("task", list(OVER_LONG))
def test_over_long_input_is_truncated_with_a_warning(all_pipes, task):
    with pytest.warns(UserWarning, match=r"longer than 64 tokens and were truncated; the model did not see"):
        result = all_pipes[task](OVER_LONG[task])
    if task == "feature-extraction":
        assert np.asarray(result).shape == (1, 64, 32)
    if task == "token-classification":
        assert result and max(entity["index"] for entity in result) < 64


def test_over_long_context_is_split_into_windows_without_a_warning(all_pipes):
    context = LONG + " john lives in berlin ."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning: the windows cover the whole context
        answer = all_pipes["question-answering"](question="where does john live ?", context=context)
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_over_long_text_for_a_fill_mask_whose_mask_is_cut_off(all_pipes):
    with (
        pytest.raises(InputError, match=r"no mask token \(\[MASK\]\) within the first 64 tokens"),
        pytest.warns(UserWarning, match="truncated"),
    ):
        all_pipes["fill-mask"](LONG + " the [MASK] day")


EMPTY_PARTS = {
    "question-answering question": (
        "question-answering",
        {"question": "  ", "context": "john lives in paris"},
        r"\['question'\] is empty",
    ),
    "question-answering context": (
        "question-answering",
        {"question": "who ?", "context": ""},
        r"\['context'\] is empty",
    ),
    "multiple-choice prompt": (
        "multiple-choice",
        {"prompt": "\n", "choices": ["a", "b"]},
        r"\['prompt'\] is empty",
    ),
    "multiple-choice choice": (
        "multiple-choice",
        {"prompt": "the day", "choices": ["good", " "]},
        r"\['choices'\]\[1\] is empty",
    ),
    "multiple-choice one choice": (
        "multiple-choice",
        {"prompt": "the day", "choices": ["good"]},
        "at least two texts",
    ),
    "next-sentence text_pair": (
        "next-sentence-prediction",
        {"text": "a day", "text_pair": "\t"},
        r"\['text_pair'\] is empty",
    ),
    "feature-extraction empty list": ("feature-extraction", [], "no inputs given"),
    "question-answering empty list": ("question-answering", [], "no inputs given"),
}


@pytest.mark.parametrize("case", list(EMPTY_PARTS))
def test_empty_or_whitespace_parts_of_an_input(all_pipes, case):
    task, value, message = EMPTY_PARTS[case]
    with pytest.raises(InputError, match=message):
        all_pipes[task](value)


QA_OPTIONS = {
    "max_seq_len below the question": ({"max_seq_len": 3}, InputError, "leaves no room for the context"),
    "max_seq_len a string": ({"max_seq_len": "64"}, ValueError, "max_seq_len must be an int >= 1"),
    "negative doc_stride": ({"doc_stride": -1}, ValueError, "doc_stride must be an int >= 0"),
    "bool max_answer_len": ({"max_answer_len": True}, ValueError, "max_answer_len must be an int >= 1"),
}


@pytest.mark.parametrize("case", list(QA_OPTIONS))
def test_question_answering_options_that_cannot_work(all_pipes, case):
    options, error, message = QA_OPTIONS[case]
    with pytest.raises(error, match=message):
        all_pipes["question-answering"](
            question="where does john live ?", context="john lives in paris . " * 5, **options
        )


def test_tokenizer_with_more_tokens_than_the_model_is_refused_when_the_pipeline_is_made(clf_dir, tmp_path):
    """An added token past the model's vocabulary would reach the embedding Gather with id 99."""
    from tokenizers import Tokenizer

    export_dir = tmp_path / "export"
    shutil.copytree(clf_dir, export_dir, ignore=shutil.ignore_patterns(CACHE_DIR))
    tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    new_tokens = [f"zebra{i}" for i in range(VOCAB + 1 - tokenizer.get_vocab_size())]
    assert (
        tokenizer.add_tokens(new_tokens) == len(new_tokens) and tokenizer.token_to_id(new_tokens[-1]) == VOCAB
    )
    tokenizer.save(str(export_dir / "tokenizer.json"))
    with pytest.raises(
        ExportDirError, match="token ids up to 99, but the model's vocabulary .* has 99 entries"
    ):
        trt_runtime.pipeline("text-classification", export_dir)
