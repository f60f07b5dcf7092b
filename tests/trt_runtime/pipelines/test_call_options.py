"""transformers' call conventions, compared with transformers' own pipelines on the same tiny checkpoints:
`pipeline(task, model=DIR)`, per-call batch_size, truncation / max_length / padding (as keywords for
text-classification, in tokenize_kwargs for feature-extraction, in tokenizer_kwargs for fill-mask), and
generators and datasets (KeyDataset) streamed as iterators of results."""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy

import numpy as np
import pytest
from transformers.pipelines.pt_utils import KeyDataset

import trt_runtime
from tests.fixtures.runtime_exports import NER_LABELS, assert_results_close, hf_pipeline, tiny_export
from trt_runtime.pipelines.base import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, token_batches
from trt_runtime.validation import InputError

TEXTS = [
    "John lives in Paris, the capital of France!",
    "the movie was bad",
    "Mary was born in Berlin and moved to Rome in the spring of that year.",
    "good",
    "What a beautiful morning for a walk along the river!",
]


@pytest.fixture(scope="module")
def classification():
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    return trt_runtime.pipeline("text-classification", model=export_dir), hf_pipeline("text-classification", checkpoint)


def test_model_keyword_positional_form_and_task_from_the_export(classification):
    ours, theirs = classification
    export_dir = ours.runner.export_dir
    expected = theirs(TEXTS)
    for made in (
        trt_runtime.pipeline("text-classification", str(export_dir)),
        trt_runtime.pipeline(model=export_dir),  # the task from export.json, as transformers reads config.json
        trt_runtime.pipeline("sentiment-analysis", model=export_dir),
    ):
        assert_results_close(made(TEXTS), expected)
    with pytest.raises(TypeError, match="takes the export directory once"):
        trt_runtime.pipeline("text-classification")


def test_per_call_batch_size_changes_batching_not_results(classification):
    ours, theirs = classification
    expected = theirs(TEXTS, batch_size=2)
    for batch_size in (1, 2, 5):
        assert_results_close(ours(TEXTS, batch_size=batch_size), expected)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ours(TEXTS, batch_size=0)


def _run_shapes(pipe) -> list[tuple[int, int]]:
    """The [rows, sequence] of every model run the pipeline makes (the real runner, recorded as it runs)."""
    shapes: list[tuple[int, int]] = []
    runner = pipe.runner
    real = type(runner).__call__

    class Recording(type(runner)):  # type: ignore[misc, valid-type]
        def __call__(self, feeds):
            shapes.append(tuple(feeds["input_ids"].shape))
            return real(self, feeds)

    runner.__class__ = Recording
    return shapes


def test_short_texts_run_in_larger_batches_by_the_token_budget_and_a_given_batch_size_is_kept(classification):
    _, theirs = classification
    export_dir = classification[0].runner.export_dir
    texts = [TEXTS[i % len(TEXTS)] + " x" * (i % 7) for i in range(40)]
    expected = theirs(texts, batch_size=4)
    budget = trt_runtime.pipeline("text-classification", model=export_dir)  # no batch_size: by tokens
    shapes = _run_shapes(budget)
    assert_results_close(budget(texts), expected)
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert max(rows for rows, _ in shapes) > DEFAULT_BATCH_SIZE  # short texts: past 8 rows
    assert all(rows * length <= DEFAULT_MAX_BATCH_TOKENS for rows, length in shapes)
    shapes.clear()
    assert_results_close(budget(texts, batch_size=4), expected)  # per call: that many rows, as transformers
    assert {rows for rows, _ in shapes} == {4}
    shapes.clear()
    budget(texts, max_batch_tokens=100)
    assert all(rows * length <= 100 or rows <= DEFAULT_BATCH_SIZE for rows, length in shapes)
    fixed = trt_runtime.pipeline("text-classification", model=export_dir, batch_size=8)  # made with batch_size
    shapes = _run_shapes(fixed)
    assert_results_close(fixed(texts), expected)
    assert {rows for rows, _ in shapes} == {8}
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive int"):
        budget(texts, max_batch_tokens=0)


@pytest.mark.parametrize("seed", range(5))
def test_token_batches_cover_every_row_once_in_order_within_the_budget_and_greedily(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, 200).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    rows, budget, max_rows = int(rng.integers(1, 9)), int(rng.integers(64, 4096)), int(rng.integers(8, 300))
    runs = list(token_batches(order, lengths, rows, budget, max_rows))
    assert [i for run in runs for i in run] == order
    for run, following in zip(runs, [*runs[1:], None]):
        limit = max(rows, min(max_rows, budget // max(lengths[i] for i in run)))
        assert len(run) <= limit
        if following is not None:  # greedy: the next row would not have fitted
            longer = max(lengths[i] for i in [*run, following[0]])
            assert len(run) + 1 > max(rows, min(max_rows, budget // longer))
    plain = list(token_batches(order, lengths, rows, None, max_rows))  # no budget: runs of `rows`
    assert [i for run in plain for i in run] == order and all(len(run) == rows for run in plain[:-1])


@pytest.mark.parametrize(
    "options",
    [
        {"truncation": True, "max_length": 6},
        {"truncation": "only_first", "max_length": 8},
        {"max_length": 7, "truncation": "longest_first", "padding": "max_length"},
        {"padding": True},
        {"padding": "longest", "top_k": None},
    ],
)
def test_text_classification_tokenizer_keywords(classification, options):
    ours, theirs = classification
    assert_results_close(ours(TEXTS, **options), theirs(TEXTS, **options))
    assert_results_close(ours(TEXTS[2], **options), theirs(TEXTS[2], **options))


def test_truncation_false_refuses_a_too_long_input(classification):
    ours, _ = classification
    too_long = " ".join(["word"] * (ours.max_length + 5))
    with pytest.raises(InputError, match="pass truncation=True"):
        ours(too_long, truncation=False)
    with pytest.warns(UserWarning, match="truncated"):  # the default: truncated with a warning
        ours(too_long)
    ours(too_long, truncation=True)  # asked for: silently


def test_generator_and_key_dataset_stream_results(classification):
    ours, theirs = classification
    pulled = []

    def texts():
        for text in TEXTS:
            pulled.append(text)
            yield text

    streamed = ours(texts(), batch_size=2)
    assert isinstance(streamed, Iterator) and pulled == []  # nothing computed before it is asked for
    first = next(streamed)
    assert len(pulled) == 2  # one batch read
    assert_results_close([first, *streamed], list(theirs((text for text in TEXTS), batch_size=2)))
    bad = ours((text for text in [*TEXTS[:3], "  "]), batch_size=2)
    with pytest.raises(InputError, match="input 1 .*count from input 2 of the stream"):
        list(bad)
    rows = [{"text": text, "id": i} for i, text in enumerate(TEXTS)]
    assert_results_close(list(ours(KeyDataset(rows, "text"), top_k=2)), list(theirs(KeyDataset(rows, "text"), top_k=2)))


def test_feature_extraction_tokenize_kwargs():
    checkpoint, export_dir = tiny_export("bert", "feature-extraction")
    ours, theirs = trt_runtime.pipeline("feature-extraction", export_dir), hf_pipeline("feature-extraction", checkpoint)
    for options in (
        {"tokenize_kwargs": {"padding": "max_length", "max_length": 16}},  # the pad positions come back too
        {"truncation": True, "tokenize_kwargs": {"max_length": 5}},
        {"tokenize_kwargs": {"truncation": True, "max_length": 6, "padding": True}},
    ):
        # copies: transformers writes truncation= into the tokenize_kwargs dict it is given
        assert_results_close(ours(TEXTS[1], **deepcopy(options)), theirs(TEXTS[1], **deepcopy(options)))
        assert_results_close(ours(TEXTS, **deepcopy(options)), theirs(TEXTS, **deepcopy(options)))
    padded = ours(TEXTS[1], tokenize_kwargs={"padding": "max_length", "max_length": 16}, pooling="mean")
    assert_results_close(padded, ours(TEXTS[1], pooling="mean"), atol=1e-5)  # mean pooling skips the pads
    with pytest.raises(ValueError, match="truncation parameter defined twice"):
        theirs(TEXTS[1], truncation=True, tokenize_kwargs={"truncation": True})
    with pytest.raises(ValueError, match="truncation parameter defined twice"):
        ours(TEXTS[1], truncation=True, tokenize_kwargs={"truncation": True})


def test_fill_mask_tokenizer_kwargs():
    checkpoint, export_dir = tiny_export("bert", "fill-mask")
    ours, theirs = trt_runtime.pipeline("fill-mask", model=export_dir), hf_pipeline("fill-mask", checkpoint)
    masked = ["Paris is the [MASK] of France.", "the movie was [MASK] and long, far too long for me"]
    options = {"tokenizer_kwargs": {"truncation": True, "max_length": 9}, "top_k": 3, "batch_size": 2}
    assert_results_close(ours(masked, **options), theirs(masked, **options))


def test_tasks_refuse_the_call_options_transformers_refuses():
    checkpoint, export_dir = tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)
    ours, theirs = trt_runtime.pipeline("ner", model=export_dir), hf_pipeline("token-classification", checkpoint)
    assert_results_close(ours(TEXTS, batch_size=2), theirs(TEXTS, batch_size=2))
    with pytest.raises(TypeError):
        theirs(TEXTS, truncation=True)
    with pytest.raises(TypeError, match="unknown option\\(s\\) truncation for the token-classification pipeline"):
        ours(TEXTS, truncation=True)
