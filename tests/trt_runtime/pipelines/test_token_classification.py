"""token-classification pipeline against transformers' TokenClassificationPipeline: every aggregation
strategy, offsets and words, with a WordPiece (word-aware) and a byte-level BPE (heuristic) tokenizer."""

from __future__ import annotations

import warnings

import pytest

import trt_runtime
from tests.fixtures.runtime_exports import NER_LABELS, assert_results_close, hf_pipeline, tiny_export

TEXTS = [
    "John lives in Paris, the capital of France!",
    "Mary was born in Berlin and works at the bank in London.",
    "Unbelievable stuff: they walked in the rain to the old red house.",
]
STRATEGIES = ["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def pipelines(request):
    checkpoint, export_dir = tiny_export(
        request.param, "token-classification", sharpen=4.0, id2label=NER_LABELS
    )
    return (
        request.param,
        trt_runtime.pipeline("token-classification", export_dir),
        hf_pipeline("token-classification", checkpoint),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_aggregation_strategies_match(pipelines, strategy):
    model_type, ours, theirs = pipelines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours(TEXTS, aggregation_strategy=strategy)
        warnings.simplefilter("ignore")  # transformers warns the same way
        expected = theirs(TEXTS, aggregation_strategy=strategy)
    assert_results_close(got, expected)
    assert any(len(entities) > 0 for entities in got), "the head predicts some entities"
    heuristic = model_type == "roberta" and strategy in ("first", "average", "max")
    assert heuristic == any("fallback heuristic" in str(w.message) for w in caught)


def test_single_text_and_offsets_point_into_it(pipelines):
    _, ours, theirs = pipelines
    entities = ours(TEXTS[1])
    assert_results_close(entities, theirs(TEXTS[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BPE tokenizer's heuristic warning, tested above
        entities = ours(TEXTS[1], aggregation_strategy="first")
    for entity in entities:
        assert TEXTS[1][entity["start"] : entity["end"]].strip()


def test_ignore_labels(pipelines):
    _, ours, theirs = pipelines
    assert_results_close(ours(TEXTS, ignore_labels=[]), theirs(TEXTS, ignore_labels=[]))
    # grouped entities are filtered by their group ("PER"), single tokens by their tag ("B-PER")
    grouped = ours(TEXTS, ignore_labels=["O", "PER"], aggregation_strategy="simple")
    assert all(e["entity_group"] == "LOC" for entities in grouped for e in entities)
    assert_results_close(grouped, theirs(TEXTS, ignore_labels=["O", "PER"], aggregation_strategy="simple"))
    tokens = ours(TEXTS, ignore_labels=["O", "B-PER", "I-PER"])
    assert all(e["entity"] in ("B-LOC", "I-LOC") for entities in tokens for e in entities)
    assert_results_close(tokens, theirs(TEXTS, ignore_labels=["O", "B-PER", "I-PER"]))


def test_construction_options_are_defaults(pipelines):
    model_type, _, theirs = pipelines
    _, export_dir = tiny_export(model_type, "token-classification", sharpen=4.0, id2label=NER_LABELS)
    ours = trt_runtime.pipeline("token-classification", export_dir, aggregation_strategy="simple")
    assert_results_close(ours(TEXTS[0]), theirs(TEXTS[0], aggregation_strategy="simple"))


def test_unknown_strategy():
    _, export_dir = tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)
    with pytest.raises(
        ValueError, match="aggregation_strategy='longest'; choose one of none, simple, first, average, max"
    ):
        trt_runtime.pipeline("token-classification", export_dir)(TEXTS[0], aggregation_strategy="longest")
