"""fill-mask pipeline against transformers' FillMaskPipeline: top_k, several masks, targets, lists."""

from __future__ import annotations

import pytest

import trt_runtime
from tests.fixtures.runtime_exports import assert_results_close, hf_pipeline, tiny_export
from trt_runtime.validation import InputError


@pytest.fixture(scope="module", params=["bert", "roberta"])
def pipelines(request):
    checkpoint, export_dir = tiny_export(request.param, "fill-mask", sharpen=4.0)
    ours, theirs = trt_runtime.pipeline("fill-mask", export_dir), hf_pipeline("fill-mask", checkpoint)
    return ours, theirs, theirs.tokenizer.mask_token


@pytest.mark.parametrize("top_k", [None, 1, 3, 12])
def test_single_mask_top_k(pipelines, top_k):
    ours, theirs, mask = pipelines
    text = f"John lives in {mask}, the capital of France."
    options = {} if top_k is None else {"top_k": top_k}
    got, expected = ours(text, **options), theirs(text, **options)
    assert len(got) == (top_k or 5)
    assert_results_close(got, expected)


def test_several_masks_and_lists(pipelines):
    ours, theirs, mask = pipelines
    texts = [f"{mask} was born in {mask}.", f"the movie was {mask}!"]
    assert_results_close(ours(texts[0], top_k=3), theirs(texts[0], top_k=3))
    assert_results_close(ours(texts, top_k=2), theirs(texts, top_k=2))
    assert_results_close(ours([texts[1]]), theirs([texts[1]]))  # a list of one gives that one's result


def test_targets(pipelines):
    ours, theirs, mask = pipelines
    text = f"the movie was {mask}."
    targets = ["good", "bad", "city"] if mask == "[MASK]" else ["Ġgood", "Ġbad", "Ġcity"]
    assert_results_close(ours(text, targets=targets), theirs(text, targets=targets))
    assert_results_close(ours(text, targets=targets, top_k=2), theirs(text, targets=targets, top_k=2))


def test_input_without_mask_is_an_input_error(pipelines):
    ours, _, mask = pipelines
    with pytest.raises(
        InputError, match=f"input 1 has no mask token \\({mask.replace('[', '.').replace(']', '.')}\\)"
    ):
        ours([f"a {mask} day", "no mask here"])
