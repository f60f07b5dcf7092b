"""feature-extraction pipeline against transformers' FeatureExtractionPipeline (token embeddings) and
against mean pooling computed in NumPy from the Hugging Face model (sentence embeddings), on a tiny
model and on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import trt_runtime
from tests.fixtures.runtime_exports import assert_results_close, hf_pipeline, tiny_export

TEXTS = ["John lives in Paris, the capital of France!", "the movie was bad", "Mary was born in Berlin."]


def reference_sentence_embeddings(checkpoint, texts, pooling: str, normalize: bool) -> np.ndarray:
    """Padded batch through the Hugging Face model, pooled over the attention mask in NumPy."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy().astype(np.float64)
    mask = batch["attention_mask"].numpy()[..., None].astype(np.float64)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1) if pooling == "mean" else hidden[:, 0]
    if normalize:
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request):
    checkpoint, export_dir = tiny_export(request.param, "feature-extraction")
    return checkpoint, export_dir, trt_runtime.pipeline("feature-extraction", export_dir)


def test_token_embeddings_match_transformers(tiny):
    checkpoint, _, ours = tiny
    theirs = hf_pipeline("feature-extraction", checkpoint)
    assert_results_close(ours(TEXTS[0]), theirs(TEXTS[0]))
    assert_results_close(ours(TEXTS), theirs(TEXTS))
    tensors = ours(TEXTS[0], return_tensors=True)
    assert isinstance(tensors, np.ndarray) and tensors.shape == np.array(theirs(TEXTS[0])).shape


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", False), ("mean", True), ("cls", True)])
def test_sentence_embeddings(tiny, pooling, normalize):
    checkpoint, _, ours = tiny
    got = np.array(ours(TEXTS, pooling=pooling, normalize=normalize))
    np.testing.assert_allclose(
        got, reference_sentence_embeddings(checkpoint, TEXTS, pooling, normalize), atol=1e-5
    )
    single = ours(TEXTS[0], pooling=pooling, normalize=normalize)
    assert isinstance(single, list) and len(single) == got.shape[1]
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_option_errors(tiny):
    ours = tiny[2]
    with pytest.raises(ValueError, match="normalize=True needs a sentence embedding"):
        ours(TEXTS[0], normalize=True)
    with pytest.raises(ValueError, match="pooling='max'; choose None, 'mean' or 'cls'"):
        ours(TEXTS[0], pooling="max")
    with pytest.raises(
        TypeError, match="unknown option.*polling.*it takes: pooling, normalize, return_tensors"
    ):
        ours(TEXTS[0], polling="mean")


def test_minilm_sentence_embeddings_match(minilm_dir, sentences, tmp_path_factory):
    """The demo's path on the real model: float export, mean pooling, unit norm, batched and padded."""
    import exporter

    export_dir = exporter.export(
        minilm_dir,
        tmp_path_factory.mktemp("minilm") / "float",
        task="feature-extraction",
        quantization="none",
        log=None,
    )
    embed = trt_runtime.pipeline(
        "feature-extraction", export_dir, pooling="mean", normalize=True, batch_size=3
    )
    got = embed.embed(sentences)
    expected = reference_sentence_embeddings(minilm_dir, sentences, "mean", True)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    similarity = got @ got.T
    # the two restaurant / service complaints are nearer each other than to the vaccine study
    assert similarity[1, 6] > similarity[1, 5]
