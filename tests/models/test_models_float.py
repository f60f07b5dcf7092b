"""Our float models reproduce Hugging Face transformers on every architecture x task head, padded batches."""

from __future__ import annotations

import json

import pytest
import torch

import models
from tests.fixtures.tiny_models import CASES, hf_outputs, padded_batch, save_tiny

TOLERANCE = 1e-5


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_matches_transformers(tmp_path, model_type, task):
    directory, reference = save_tiny(tmp_path, model_type, task)
    ours = models.load(directory, task=task, quantization="none")
    feeds = padded_batch(model_type, choices=4 if task == "multiple-choice" else None)
    expected = hf_outputs(reference, task, feeds)
    with torch.no_grad():
        got = ours(**feeds)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        if model_type == "bert" and task == "text-generation":
            pass  # causal: padding rows still match, checked below
        diff = (got[name] - value).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: max |ours - transformers| = {diff:.3g}"


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_sequence_classification_problem_types(tmp_path, problem_type):
    num_labels = 1 if problem_type == "regression" else 3
    directory, reference = save_tiny(
        tmp_path, "bert", "text-classification", problem_type=problem_type, num_labels=num_labels
    )
    ours = models.load(directory)  # task from config.json's architectures
    assert ours.task == "text-classification"
    feeds = padded_batch("bert")
    got = ours(**feeds)["logits"]
    assert got.shape == (3, num_labels)
    assert torch.allclose(got, hf_outputs(reference, "text-classification", feeds)["logits"], atol=TOLERANCE)


def test_pytorch_model_bin_and_base_checkpoint_without_prefix(tmp_path):
    _, reference = save_tiny(tmp_path / "ref", "bert", "feature-extraction")
    directory = tmp_path / "bin"
    directory.mkdir()
    reference.config.save_pretrained(directory)
    torch.save(reference.state_dict(), directory / "pytorch_model.bin")  # keys without the `bert.` prefix
    ours = models.load(directory, task="feature-extraction")
    feeds = padded_batch("bert")
    expected = hf_outputs(reference, "feature-extraction", feeds)
    assert torch.allclose(ours(**feeds)["last_hidden_state"], expected["last_hidden_state"], atol=TOLERANCE)


def test_safetensors_preferred_over_pickle(tmp_path):
    directory, reference = save_tiny(tmp_path, "bert", "feature-extraction")
    (directory / "pytorch_model.bin").write_bytes(b"not a pickle")  # would fail if it were read
    models.load(directory, task="feature-extraction")


def test_missing_and_unexpected_keys_named_in_one_error(tmp_path):
    directory, _ = save_tiny(tmp_path, "bert", "text-classification")
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    state.pop("bert.encoder.layer.0.attention.self.query.weight")
    state["bert.encoder.layer.0.attention.self.extra"] = torch.zeros(1)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(models.CheckpointError) as info:
        models.load(directory, task="text-classification")
    message = str(info.value)
    assert "model.safetensors" in message
    assert "missing keys: bert.encoder.layer.0.attention.self.query.weight" in message
    assert "unexpected keys: bert.encoder.layer.0.attention.self.extra" in message


def test_new_head_needs_consent(tmp_path):
    directory, _ = save_tiny(tmp_path, "bert", "feature-extraction")
    with pytest.raises(models.CheckpointError, match="classifier.weight.*init_missing_head=True"):
        models.load(directory, task="text-classification")
    model = models.load(directory, task="text-classification", init_missing_head=True)
    assert model(**padded_batch("bert"))["logits"].shape == (3, 3)


def test_sequence_too_long_is_a_clear_error(tmp_path):
    directory, _ = save_tiny(tmp_path, "roberta", "feature-extraction")
    model = models.load(directory)
    ids = torch.full((1, 65), 5)
    with pytest.raises(ValueError, match="sequence length 65.*at most 64 tokens"):
        model(input_ids=ids)


def test_unsupported_model_type_and_task(tmp_path):
    directory, _ = save_tiny(tmp_path, "squeezebert", "feature-extraction")
    with pytest.raises(ValueError, match="not available for model_type 'squeezebert'"):
        models.load(directory, task="next-sentence-prediction")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "gpt2"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.CheckpointError, match="model_type 'gpt2' is not supported"):
        models.load(directory)


def test_roberta_positions_skip_padding(tmp_path):
    """Left padding shifts nothing: RoBERTa positions count only real tokens."""
    directory, reference = save_tiny(tmp_path, "roberta", "feature-extraction")
    ours = models.load(directory)
    ids = torch.tensor([[1, 1, 0, 7, 8, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    expected = hf_outputs(reference, "feature-extraction", {"input_ids": ids, "attention_mask": mask})
    got = ours(input_ids=ids, attention_mask=mask)
    assert torch.allclose(got["last_hidden_state"][:, 2:], expected["last_hidden_state"][:, 2:], atol=TOLERANCE)
