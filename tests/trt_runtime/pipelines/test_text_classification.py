"""text-classification pipeline (ONNX Runtime backend) against transformers' TextClassificationPipeline
on the same tiny checkpoints: single-label, multi-label and regression heads, top_k, pairs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trt_runtime
from tests.fixtures.runtime_exports import assert_results_close, hf_pipeline, tiny_export
from trt_runtime.pipelines.base import Pipeline
from trt_runtime.validation import InputError

TEXTS = [
    "John lives in Paris, the capital of France!",
    "the movie was bad",
    "what a great day",
    "Mary was born in Berlin.",
]
HEADS = {
    "single-label": {},
    "multi-label": {"problem_type": "multi_label_classification"},
    "regression": {"problem_type": "regression", "num_labels": 1},
}


@pytest.fixture(scope="module", params=list(HEADS))
def head(request):
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0, **HEADS[request.param])
    return trt_runtime.pipeline("text-classification", export_dir), hf_pipeline(
        "text-classification", checkpoint
    )


def test_single_text_best_label(head):
    ours, theirs = head
    assert_results_close(ours(TEXTS[0]), theirs(TEXTS[0]))


def test_list_of_texts(head):
    ours, theirs = head
    assert_results_close(ours(TEXTS), theirs(TEXTS))


@pytest.mark.parametrize("top_k", [1, 2, None])
def test_top_k(head, top_k):
    ours, theirs = head
    assert_results_close(ours(TEXTS[1], top_k=top_k), theirs(TEXTS[1], top_k=top_k))
    assert_results_close(ours(TEXTS, top_k=top_k), theirs(TEXTS, top_k=top_k))


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_function_to_apply(head, function):
    ours, theirs = head
    assert_results_close(
        ours(TEXTS[2], top_k=None, function_to_apply=function),
        theirs(TEXTS[2], top_k=None, function_to_apply=function),
    )


def test_text_pairs(head):
    ours, theirs = head
    pair = {"text": "who lives in paris?", "text_pair": "John lives in Paris."}
    assert_results_close(ours(pair), theirs(pair))
    assert_results_close(ours([pair, {"text": TEXTS[1]}]), theirs([pair, {"text": TEXTS[1]}]))


@pytest.mark.parametrize("model_type", ["roberta", "squeezebert"])
def test_other_architectures(model_type):
    checkpoint, export_dir = tiny_export(model_type, "text-classification", sharpen=20.0)
    ours, theirs = (
        trt_runtime.pipeline("text-classification", export_dir),
        hf_pipeline("text-classification", checkpoint),
    )
    assert_results_close(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None))


def test_batching_does_not_change_results():
    _, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    one = trt_runtime.pipeline("text-classification", export_dir, batch_size=1)
    many = trt_runtime.pipeline("text-classification", export_dir, batch_size=3)
    assert_results_close(many(TEXTS * 2, top_k=None), one(TEXTS * 2, top_k=None), atol=1e-5)


def test_sentiment_analysis_alias_and_default_task():
    _, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    by_alias = trt_runtime.pipeline("sentiment-analysis", export_dir)
    by_default = trt_runtime.pipeline(None, export_dir)
    assert by_alias.task == by_default.task == "text-classification"
    assert by_alias(TEXTS[0]) == by_default(TEXTS[0])


def test_over_long_input_is_truncated_with_a_warning():
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    ours, theirs = (
        trt_runtime.pipeline("text-classification", export_dir),
        hf_pipeline("text-classification", checkpoint),
    )
    long_text = " ".join(TEXTS * 8)
    with pytest.warns(UserWarning, match="longer than 64 tokens and were truncated"):
        result = ours(long_text)
    assert_results_close(result, theirs(long_text, truncation=True))


# --- property-based: any input gives scores or an InputError -------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_pipe(clf_dir) -> Pipeline:
    return trt_runtime.pipeline("text-classification", clf_dir, top_k=None)


FUZZ_TEXTS = st.text(
    alphabet=st.one_of(
        st.characters(),  # any code point: controls, NUL, surrogates excluded by hypothesis, RTL, emoji...
        st.sampled_from(list(" \t\n\u00a0\u200b\ufeff#[]")),
    ),
    max_size=300,
)
SPECIAL_TOKENS = st.sampled_from(["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "##s"])
FUZZ_TEXTS = st.lists(st.one_of(FUZZ_TEXTS, SPECIAL_TOKENS), max_size=4).map(" ".join) | FUZZ_TEXTS
PIPELINE_INPUTS = st.one_of(
    FUZZ_TEXTS,
    st.lists(FUZZ_TEXTS, max_size=4),
    st.tuples(FUZZ_TEXTS, FUZZ_TEXTS),
    st.fixed_dictionaries({"text": FUZZ_TEXTS}, optional={"text_pair": st.one_of(FUZZ_TEXTS, st.none())}),
    st.dictionaries(st.sampled_from(["text", "text_pair", "pair"]), FUZZ_TEXTS, max_size=3),
    st.none(),
    st.integers(),
    st.binary(max_size=5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=PIPELINE_INPUTS)
def test_text_classification_pipeline_gives_scores_or_input_error_for_any_input(fuzz_pipe, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation of long texts
        try:
            result = fuzz_pipe(inputs)
        except InputError:
            return
    rows = result if isinstance(inputs, list) else [result]
    assert len(rows) == (len(inputs) if isinstance(inputs, list) else 1)
    for row in rows:
        scores = [entry["score"] for entry in row]
        assert sorted(entry["label"] for entry in row) == ["NEGATIVE", "NEUTRAL", "POSITIVE"]
        assert all(np.isfinite(scores)) and abs(sum(scores) - 1) < 1e-4
