"""Calibrated qdq models of every architecture stay close to transformers; calibration files and QDQBERT checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

import models
from models.data import calibration_batches, labelled_sentences, load_texts
from models.quantization import (
    CalibrationError,
    calibrate,
    collect_stats,
    compute_amax,
    finish_calibration,
    keep_float,
    load_calibration,
    named_quantizers,
    save_calibration,
    set_quantization,
    uncalibrated_quantizers,
)
from tests.fixtures.tiny_models import hf_outputs, padded_batch, save_tiny

CASES = [
    ("bert", "feature-extraction"),
    ("bert", "text-classification"),
    ("bert", "question-answering"),
    ("roberta", "token-classification"),
    ("roberta", "fill-mask"),
    ("ibert", "text-classification"),
    ("ibert", "multiple-choice"),
    ("squeezebert", "feature-extraction"),
    ("squeezebert", "question-answering"),
]


def feeds_for(model_type: str, task: str, seed: int) -> dict[str, torch.Tensor]:
    return padded_batch(model_type, batch=4, seq=16, choices=3 if task == "multiple-choice" else None, seed=seed)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_calibrated_qdq_model_stays_close_to_transformers(tmp_path, model_type, task):
    directory, reference = save_tiny(tmp_path, model_type, task)
    model = models.load(directory, task=task, quantization="qdq")
    quantizers = named_quantizers(model)
    # QuantLinear/QuantConv1d input + weight (6 per layer), 4 matmul inputs, 2 x 2 residual-add inputs
    assert len(quantizers) == 2 * (6 * 2 + 4 + 4)
    calibrate(model, [feeds_for(model_type, task, seed) for seed in range(6)], method="percentile", progress=False)
    assert uncalibrated_quantizers(model) == []
    feeds = feeds_for(model_type, task, seed=99)
    expected = hf_outputs(reference, task, feeds)
    with torch.no_grad():
        got = model(**feeds)
        set_quantization(model, False)
        got_float = model(**feeds)
    for name, value in expected.items():
        error = relative_error(got[name], value)
        print(f"{model_type} {task} {name}: relative error of qdq vs transformers {error:.4f}")
        assert error < 0.05, name
        assert not torch.equal(got[name], got_float[name])  # quantization is really on
        torch.testing.assert_close(got_float[name], value, atol=1e-5, rtol=1e-5)  # and off gives float back


def test_qdqbert_checkpoint_round_trip(tmp_path):
    """A QDQBERT-style checkpoint (model_type qdqbert, `_amax` keys) loads in qdq mode with its amax."""
    directory, _ = save_tiny(tmp_path / "float", "bert", "text-classification")
    model = models.load(directory, quantization="qdq")
    calibrate(model, [feeds_for("bert", "", s) for s in range(3)], method="max", progress=False)
    state = model.state_dict()
    assert state["bert.encoder.layer.0.attention.self.query._input_quantizer._amax"].shape == ()
    assert state["bert.encoder.layer.0.attention.self.query._weight_quantizer._amax"].shape == (32, 1)
    assert "bert.encoder.layer.1.attention.self.matmul_q_input_quantizer._amax" in state
    qdq_dir = tmp_path / "qdqbert"
    qdq_dir.mkdir()
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "qdqbert"
    config["architectures"] = ["QDQBertForSequenceClassification"]
    (qdq_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, qdq_dir / "model.safetensors")
    loaded = models.load(qdq_dir)  # qdqbert: qdq by default, task from architectures
    assert loaded.quantization == "qdq" and loaded.task == "text-classification"
    feeds = feeds_for("bert", "", seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(**feeds)["logits"], model(**feeds)["logits"])
    # an `_amax` for a quantizer the model does not have is an error, not silently dropped
    state["bert.encoder.layer.0.attention.self.query._bias_quantizer._amax"] = torch.tensor(1.0)
    save_file({k: v.contiguous() for k, v in state.items()}, qdq_dir / "model.safetensors")
    with pytest.raises(ValueError, match="_bias_quantizer._amax"):
        models.load(qdq_dir)


def test_calibration_file_round_trip_and_errors(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    model = models.load(directory, quantization="qdq")
    kept = keep_float(model, ["softmax-output"])
    calibrate(model, [feeds_for("bert", "", s) for s in range(3)], method="entropy", progress=False, data="unit test")
    path = save_calibration(model, tmp_path / "calibration.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["method"] == "entropy" and data["data"] == "unit test"
    assert data["num_samples"] == 12 and data["model"]["hidden_size"] == 32
    assert sorted(data["float_quantizers"]) == kept
    weight_amax = data["quantizers"]["bert.encoder.layer.0.intermediate.dense._weight_quantizer"]
    assert isinstance(weight_amax, list) and len(weight_amax) == 64

    fresh = models.load(directory, quantization="qdq", calibration=path)
    feeds = feeds_for("bert", "", seed=5)
    with torch.no_grad():
        assert torch.equal(fresh(**feeds)["last_hidden_state"], model(**feeds)["last_hidden_state"])
    assert not fresh.bert.encoder.layer[0].attention.self.matmul_a_input_quantizer.is_enabled

    def broken(change) -> str:
        bad = json.loads(path.read_text())
        change(bad)
        target = tmp_path / "bad.json"
        target.write_text(json.dumps(bad))
        return str(target)

    name = "bert.encoder.layer.0.attention.self.query._input_quantizer"
    cases = {
        "quantizers this model does not have: nope": lambda d: d["quantizers"].update(nope=1.0),
        f"no amax for this model's quantizers: {name}": lambda d: d["quantizers"].pop(name),
        "has 3 value": lambda d: d["quantizers"].update({name: [1.0, 2.0, 3.0]}),
        "needs 64": lambda d: d["quantizers"].update(
            {"bert.encoder.layer.0.intermediate.dense._weight_quantizer": [1.0] * 32}
        ),
        "made for another model: hidden_size 768": lambda d: d["model"].update(hidden_size=768),
        "format_version 7": lambda d: d.update(format_version=7),
    }
    for message, change in cases.items():
        with pytest.raises(CalibrationError, match=message):
            load_calibration(models.load(directory, quantization="qdq"), broken(change))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(model, tmp_path / "junk.json")
    with pytest.raises(CalibrationError, match="quantization='qdq'"):
        load_calibration(models.load(directory), path)


def test_keep_float_patterns(tmp_path):
    directory, _ = save_tiny(tmp_path, "bert", "feature-extraction")
    model = models.load(directory, quantization="qdq")
    layers = 2
    assert len(keep_float(model, "ffn-output-input")) == layers  # not the attention output projection
    assert keep_float(model, ["*.output.dense._input_quantizer"]) == sorted(
        [f"bert.encoder.layer.{i}.output.dense._input_quantizer" for i in range(layers)]
        + [f"bert.encoder.layer.{i}.attention.output.dense._input_quantizer" for i in range(layers)]
    )
    assert len(keep_float(model, ["residual-adds", "softmax-output"])) == layers * 4 + layers
    with pytest.raises(ValueError, match="matches no quantizer"):
        keep_float(model, "*.no_such_quantizer")
    squeeze_dir, _ = save_tiny(tmp_path / "sq", "squeezebert", "feature-extraction")
    squeeze = models.load(squeeze_dir, quantization="qdq")
    assert keep_float(squeeze, "ffn-output-input") == [
        f"transformer.encoder.layers.{i}.output.conv1d._input_quantizer" for i in range(layers)
    ]
    # SqueezeBERT's FFN output convolution, which smoothing does not reach: a named site BERT does not have
    # selects nothing (the qdq default names it for every architecture), where an unmatched pattern is an error
    assert keep_float(squeeze, "conv-ffn-output-input") == keep_float(squeeze, "ffn-output-input")
    assert keep_float(models.load(directory, quantization="qdq"), "conv-ffn-output-input") == []


def test_calibrate_errors(tmp_path):
    directory, _ = save_tiny(tmp_path, "bert", "feature-extraction")
    with pytest.raises(ValueError, match="quantization='qdq'"):
        calibrate(models.load(directory), [feeds_for("bert", "", 0)])
    model = models.load(directory, quantization="qdq")
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate(model, [feeds_for("bert", "", 0)], method="kl")
    with pytest.raises(ValueError, match="no calibration batches"):
        calibrate(model, [], progress=False)


def mean_pooled(model, batches) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them: the mean of the real tokens' states."""
    pooled = []
    with torch.no_grad():
        for batch in batches:
            out = model(**batch)
            hidden = out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(pooled)


@pytest.mark.slow
def test_minilm_on_real_text_keeps_sentence_embeddings(minilm_dir):
    """all-MiniLM-L6-v2 in qdq, calibrated on 128 shipped calibration sentences, on 256 held-out test sentences.

    With every QDQBERT site quantized the residual adds ruin the embeddings (MiniLM's FFN output has
    outlier features past 100); QDQBERT's usual float sites (residual adds, FFN output projection
    input) bring the best calibrators to a mean cosine of 0.99.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    calibration = calibration_batches(load_texts(), tokenizer, batch_size=32, num_samples=128)
    held_out = sorted((s.text for s in labelled_sentences("test")[:256]), key=len)  # less padding
    evaluation = calibration_batches(held_out, tokenizer, batch_size=64)
    reference = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    expected = mean_pooled(reference, evaluation)

    def mean_cosine(model) -> float:
        return torch.nn.functional.cosine_similarity(mean_pooled(model, evaluation), expected).mean().item()

    model = models.load(minilm_dir, task="feature-extraction", quantization="qdq")
    calibrate(model, calibration, method="max", progress=False)
    everything = mean_cosine(model)
    print(f"all-MiniLM-L6-v2 qdq, every site quantized (max): mean cosine vs float = {everything:.4f}")

    keep_float(model, ["residual-adds", "ffn-output-input"])
    cosines = {}
    collect_stats(model, calibration, "max", progress=False)
    compute_amax(model, "max", progress=False)
    cosines["max"] = mean_cosine(model)
    collect_stats(model, calibration, "histogram", progress=False)  # one histogram pass for three methods
    for method, percentile in [("percentile", 99.99), ("percentile", 99.999), ("mse", None), ("entropy", None)]:
        compute_amax(model, method, percentile or 99.99, progress=False)
        cosines[f"{method} {percentile}" if percentile else method] = mean_cosine(model)
    finish_calibration(model)
    for method, cosine in cosines.items():
        print(f"all-MiniLM-L6-v2 qdq, residual adds + FFN output input float ({method}): mean cosine = {cosine:.4f}")
    assert everything < max(cosines.values())
    assert max(cosines.values()) >= 0.99


# --- calibration.json from another model (qdq), and the calibrate command on a bad checkpoint ----------------

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, its calibration.json): a tiny BERT calibrated in qdq mode."""
    root = tmp_path_factory.mktemp("calibrated")
    checkpoint, _ = save_tiny(root / "ckpt", "bert", "text-classification")
    model = models.load(checkpoint, quantization="qdq")
    calibrate(
        model, [padded_batch("bert", batch=4, seq=16, seed=s) for s in range(2)], method="max", progress=False
    )
    return checkpoint, save_calibration(model, root / "calibration.json")


def test_calibration_of_another_architecture_is_refused_by_models_load(calibrated, tmp_path):
    _, calibration = calibrated
    other, _ = save_tiny(
        tmp_path / "wide", "bert", "text-classification", hidden_size=48, intermediate_size=96
    )
    with pytest.raises(
        CalibrationError,
        match=r"was made for another model: hidden_size 32 \(this model: 48\); intermediate_size 64 \(this model: "
        r"96\)\. calibrate this model: python -m models.quantization.calibrate",
    ):
        models.load(other, quantization="qdq", calibration=calibration)


def test_calibration_of_another_model_type_is_refused_by_load_calibration(calibrated, tmp_path):
    _, calibration = calibrated
    other, _ = save_tiny(tmp_path / "squeeze", "squeezebert", "text-classification")
    with pytest.raises(
        CalibrationError, match="made for another model: model_type 'bert' \\(this model: 'squeezebert'\\)"
    ):
        load_calibration(models.load(other, quantization="qdq"), calibration)


def test_calibration_for_a_float_model_says_to_load_it_as_qdq(calibrated):
    checkpoint, calibration = calibrated
    with pytest.raises(
        CalibrationError, match="the model has no quantizers, .*load it with quantization='qdq'"
    ):
        models.load(checkpoint, quantization="none", calibration=calibration)


def test_calibration_of_other_weights_of_the_same_shape_loads_with_a_warning(calibrated, tmp_path, caplog):
    checkpoint, calibration = calibrated
    fine_tuned, _ = save_tiny(tmp_path / "fine-tuned", "bert", "text-classification", seed=7)
    with caplog.at_level(logging.WARNING):
        model = models.load(fine_tuned, quantization="qdq", calibration=calibration)
    assert (
        "calibrated on other weights of the same architecture" in caplog.text and "recalibrate" in caplog.text
    )
    assert np.isfinite(model(**padded_batch("bert"))["logits"].detach().numpy()).all()


@pytest.mark.parametrize(
    "amax", [["1.0"], [None], [[1.0], [1.0, 2.0]], True, [{"a": 1}], float("nan")], ids=repr
)
def test_calibration_with_an_amax_that_is_not_a_number(calibrated, tmp_path, amax):
    checkpoint, calibration = calibrated
    data = json.loads(calibration.read_text())
    data["quantizers"]["bert.encoder.layer.0.attention.self.query._input_quantizer"] = amax
    broken = tmp_path / "calibration.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(
        CalibrationError, match=r"amax (of bert\.encoder\.layer\.0\.attention\.self\.query|must be)"
    ):
        models.load(checkpoint, quantization="qdq", calibration=broken)


def test_calibrate_command_with_a_bad_checkpoint_exits_2_and_keeps_the_previous_file(
    checkpoint_copy, tmp_path, capsys
):
    from models.quantization.calibrate import main

    output = tmp_path / "calibration.json"
    output.write_text("previous\n")
    (checkpoint_copy / "config.json").write_text("{oops")
    assert main(["--model", str(checkpoint_copy), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "config.json is not valid JSON" in error and "re-save" in error
    assert output.read_text() == "previous\n"


@pytest.fixture
def checkpoint_copy(calibrated, tmp_path) -> Path:
    checkpoint, _ = calibrated
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint, target)
    return target
