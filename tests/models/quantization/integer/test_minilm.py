"""Integer-only all-MiniLM-L6-v2 (a BERT) on real text: calibrated on shipped sentences, compared with float."""

from __future__ import annotations

import pytest
import torch

import models
from models.data import SOURCES, calibration_batches, labelled_sentences, load_texts
from models.ibert import DEFAULT_WIDE_ACTIVATIONS
from models.quantization import calibrate_integer

# Measured on these 64 sentences (docs/integer.md has 256 and the ablation): the default, every wide site
# (16-bit FFN inputs and hidden states, 14-bit softmax output), 0.9962 (min 0.9911); the previous default
# ("ffn-output-input" and "hidden-states") 0.983; I-BERT's 8 bits everywhere 0.967. The 8-bit loss is
# per-tensor activations on MiniLM's outlier channels (LayerNorm outputs up to ~30 with mean |x| ~0.4,
# GELU outputs up to ~25 with mean ~0.15), not the integer nonlinearities (force_dequant changes nothing).
MIN_MEAN_COSINE = 0.98  # the project's acceptance, for the default configuration
MIN_MEAN_COSINE_8BIT = 0.96


def mean_pooled(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (model(**batch)["last_hidden_state"] * mask).sum(1) / mask.sum(1)


@pytest.mark.slow
def test_integer_minilm_sentence_embeddings_stay_close_to_float(minilm_dir):
    float_model = models.load(minilm_dir, task="feature-extraction", quantization="none")
    calibration = calibration_batches(load_texts(), minilm_dir, batch_size=32, num_samples=128)
    # held-out sentences (the test split never overlaps the calibration subset), every source
    texts = [row.text for source in SOURCES for row in labelled_sentences("test", sources=[source])[:16]]
    batches = calibration_batches(texts, minilm_dir, batch_size=32)
    with torch.no_grad():
        reference = [mean_pooled(float_model, batch) for batch in batches]

    cosines = {}
    for wide in (None, ()):  # the default, then I-BERT's 8 bits everywhere
        model = models.load(minilm_dir, task="feature-extraction", quantization="integer", wide_activations=wide)
        calibrate_integer(model, calibration, progress=False)  # minmax, the default
        with torch.no_grad():
            cosine = torch.cat([
                torch.nn.functional.cosine_similarity(mean_pooled(model, batch), expected)
                for batch, expected in zip(batches, reference)
            ])
        cosines[model.config.wide_activations] = cosine
        print(f"integer-only all-MiniLM-L6-v2, wide sites {model.config.wide_activations or 'none'}: mean "
              f"cosine to float {cosine.mean():.4f} (min {cosine.min():.4f}) over {len(texts)} sentences")
    default, narrow = cosines[DEFAULT_WIDE_ACTIVATIONS], cosines[()]
    assert default.mean() >= MIN_MEAN_COSINE and default.min() >= 0.9
    assert narrow.mean() >= MIN_MEAN_COSINE_8BIT and narrow.min() >= 0.85
    assert default.mean() > narrow.mean() + 0.01  # the wide sites are what lifts it
