"""models.loading: `models.load` detects every bad checkpoint at load with CheckpointError and the fix (weights
of the wrong shape, kind or values, a config.json transformers refuses), and never runs code from an untrusted
pickle.

Covered elsewhere and not repeated: missing and unexpected keys in one message, safetensors read before
a pickle that is not one, a missing task head (test_models_float).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import exporter
import models
from tests.fixtures import ROOT
from tests.fixtures.tiny_models import save_tiny


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "text-classification")
    return directory


# --- untrusted pickles --------------------------------------------------------------------------------


class Payload:
    """Unpickling this calls `exec` on a command that creates a file: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _malicious_bin(directory: Path, marker: Path, zipfile: bool) -> Path:
    """A pytorch_model.bin whose state dict hides the payload next to real weights."""
    state = load_file(directory / "model.safetensors")
    path = directory / "pytorch_model.bin"
    torch.save({**state, "classifier.extra": Payload(marker)}, path, _use_new_zipfile_serialization=zipfile)
    return path


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip format", "legacy format"])
def test_malicious_pickle_is_refused_and_never_executed(checkpoint, tmp_path, zipfile):
    marker = tmp_path / "pwned.txt"
    path = _malicious_bin(checkpoint, marker, zipfile)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(
        models.CheckpointError,
        match=r"pytorch_model.bin: cannot be loaded safely with torch.load\(weights_only=True\) \(Unsupported global: "
        r"GLOBAL exec was not an allowed global by default\)\. Nothing in it was run.*"
        r"convert it to model.safetensors",
    ):
        models.load(checkpoint)
    assert not marker.exists(), "the payload ran"
    # the payload is real: an unsafe load (in a child process) runs it
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert marker.read_text() == "pwned"


def test_malicious_pickle_next_to_safetensors_is_never_opened(checkpoint, tmp_path):
    marker = tmp_path / "pwned.txt"
    _malicious_bin(checkpoint, marker, zipfile=True)
    model = models.load(checkpoint)  # safetensors preferred
    assert not marker.exists()
    expected = load_file(checkpoint / "model.safetensors")["classifier.weight"]
    assert torch.equal(model.classifier.weight, expected)


def test_malicious_pickle_stops_an_export_before_anything_is_written(checkpoint, tmp_path):
    marker = tmp_path / "pwned.txt"
    _malicious_bin(checkpoint, marker, zipfile=True)
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(models.CheckpointError, match="weights_only=True"):
        exporter.export(checkpoint, tmp_path / "out", log=None)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(2)], "holds a list, not a state dict of named tensors"),
        ({"bert.pooler.dense.weight": 3}, "holds a dict, not a state dict of named tensors"),
    ],
    ids=["a list", "a dict of numbers"],
)
def test_pickle_that_is_not_a_state_dict(checkpoint, content, message):
    (checkpoint / "model.safetensors").unlink()
    torch.save(content, checkpoint / "pytorch_model.bin")
    with pytest.raises(models.CheckpointError, match=f"{message}; save the model's state_dict"):
        models.load(checkpoint)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_plain_pickle_of_a_state_dict_is_refused_without_torch_load(checkpoint):
    """pickle.dump (not torch.save) of tensors needs globals weights_only does not allow: refused, not run."""
    state = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    with open(checkpoint / "pytorch_model.bin", "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(models.CheckpointError, match="cannot be loaded safely"):
        models.load(checkpoint)


# --- damaged weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"\x08" + b[1:40], lambda b: b"not safetensors at all"],
    ids=["truncated", "header cut", "garbage"],
)
def test_damaged_safetensors(checkpoint, damage):
    path = checkpoint / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(
        models.CheckpointError,
        match=r"model.safetensors cannot be read as safetensors .*damaged or incomplete",
    ):
        models.load(checkpoint)


def test_sharded_checkpoint_with_a_missing_shard(checkpoint):
    state = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, checkpoint / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(names)}
    }
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        models.CheckpointError,
        match="names the shard 'model-00002-of-00002.safetensors', which is not a file",
    ):
        models.load(checkpoint)


def test_sharded_index_that_points_outside_the_checkpoint(checkpoint, tmp_path):
    (tmp_path / "elsewhere.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    (checkpoint / "model.safetensors").unlink()
    index = {"weight_map": {"bert.pooler.dense.weight": "../elsewhere.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(models.CheckpointError, match=r"names the shard '\.\./elsewhere\.safetensors'"):
        models.load(checkpoint)


def test_weight_of_the_wrong_shape(checkpoint):
    state = load_file(checkpoint / "model.safetensors")
    state["bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    save_file(state, checkpoint / "model.safetensors")
    with pytest.raises(
        models.CheckpointError,
        match=r"bert.encoder.layer.1.intermediate.dense.weight has shape \(65, 32\), the model built from "
        r"config.json expects \(64, 32\); config.json and the weights disagree",
    ):
        models.load(checkpoint)


def test_config_that_disagrees_with_the_weights(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        models.CheckpointError,
        match=r"missing keys: bert.encoder.layer.2.*check that the checkpoint's config.json matches",
    ):
        models.load(checkpoint)


# --- config.json --------------------------------------------------------------------------------------

CONFIGS = {
    "not JSON": (b'{"model_type": "bert",', "config.json is not valid JSON .*re-save the checkpoint"),
    "not UTF-8": (b"\xff\xfe{}", "config.json is not valid JSON .*re-save the checkpoint"),
    "a list": (b'["bert"]', "config.json must hold a JSON object; re-save the checkpoint"),
    "no model_type": (b'{"hidden_size": 32}', "has no model_type; add one of bert"),
    "model_type a list": (b'{"model_type": ["bert"]}', r"model_type must be a string, got \['bert'\]"),
    "hidden_size a string": (
        None,  # the real config with one field changed
        r"config.json has a value BertConfig refuses .*hidden_size.*; fix config.json or re-save the checkpoint",
    ),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_json(checkpoint, case):
    content, message = CONFIGS[case]
    if content is None:
        config = json.loads((checkpoint / "config.json").read_text())
        content = json.dumps({**config, "hidden_size": "thirty-two"}).encode()
    (checkpoint / "config.json").write_bytes(content)
    with pytest.raises(models.CheckpointError, match=message):
        models.load(checkpoint)


def test_bad_config_json_stops_an_export_before_anything_is_written(checkpoint, tmp_path):
    (checkpoint / "config.json").write_text("{oops")
    with pytest.raises(exporter.ExportError, match="--model: .*config.json is not valid JSON .*re-save"):
        exporter.export(checkpoint, tmp_path / "out", log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --- weights' values and dtypes ---------------------------------------------------------------------------


def test_nan_weights_are_refused_naming_the_tensor(checkpoint, tmp_path):
    """Used to load, and the export then failed validation with "This is a bug in the export"."""
    state = load_file(checkpoint / "model.safetensors")
    weight = state["bert.encoder.layer.0.attention.self.query.weight"].clone()
    weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    state["bert.encoder.layer.0.attention.self.query.weight"] = weight
    save_file(state, checkpoint / "model.safetensors")
    message = (
        f"{checkpoint / 'model.safetensors'}: bert.encoder.layer.0.attention.self.query.weight holds 3 NaN or infinite value(s) of "
        f"{weight.numel()}; the model would compute NaN. (the checkpoint is damaged or its training diverged: "
        f"download, re-save or retrain it)"
    )
    with pytest.raises(models.CheckpointError) as raised:
        models.load(checkpoint)
    assert str(raised.value) == message and raised.value.code == "checkpoint-invalid"
    with pytest.raises(models.CheckpointError) as raised:
        exporter.export(checkpoint, tmp_path / "out", log=None)
    assert str(raised.value) == message
    assert not (tmp_path / "out").exists()


def test_half_precision_weights_are_converted_with_a_warning_as_transformers_converts_them(checkpoint, caplog):
    """transformers loads an fp16 checkpoint into a float32 model by casting (its own reference below); we do
    too (fp16 -> fp32 is exact) and say so."""
    from transformers import BertForSequenceClassification

    state = load_file(checkpoint / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, checkpoint / "model.safetensors")
    with caplog.at_level("WARNING", logger="models.loading"):
        model = models.load(checkpoint)
    warning = [r.getMessage() for r in caplog.records if "were converted" in r.getMessage()]
    assert len(warning) == 1 and f"{checkpoint / 'model.safetensors'}: " in warning[0] and "stored as float16 were converted to float32" in warning[0]
    reference = BertForSequenceClassification.from_pretrained(str(checkpoint), dtype=torch.float32)
    ours = dict(model.named_parameters())
    for name, parameter in reference.named_parameters():
        assert parameter.dtype == torch.float32 and torch.equal(ours[name], parameter), name


def test_integer_weights_where_the_model_has_floats_are_refused(checkpoint):
    state = load_file(checkpoint / "model.safetensors")
    key = "bert.encoder.layer.1.output.dense.weight"
    state[key] = torch.ones_like(state[key], dtype=torch.int8)
    save_file(state, checkpoint / "model.safetensors")
    with pytest.raises(models.CheckpointError) as raised:
        models.load(checkpoint)
    assert str(raised.value) == (
        f"{checkpoint / 'model.safetensors'}: {key} is stored as int8, the model computes it as float32; a weight of another kind cannot "
        f"be cast to it. (save the checkpoint with floating-point weights (model.save_pretrained of the float model))"
    )


def test_a_missing_head_is_refused_by_the_exporter_with_the_exporters_fix(tmp_path):
    """models.load suggests init_missing_head=True, which the exporter does not offer (and which would export a
    random head): the exporter's message names the task the checkpoint was trained for instead."""
    directory, _ = save_tiny(tmp_path / "encoder", "bert", "feature-extraction")
    with pytest.raises(models.CheckpointError) as raised:
        exporter.export(directory, tmp_path / "out", task="text-classification", log=None)
    message = str(raised.value)
    assert message.startswith(f"{directory / 'model.safetensors'} does not fit") and "missing keys: classifier.bias, classifier.weight" in message
    assert message.endswith(
        "(the checkpoint has no trained text-classification head: export the task it was trained for (--task auto "
        "reads it from config.json's architectures: feature-extraction), or fine-tune the head first and export "
        "that checkpoint)"
    )
    assert "init_missing_head" not in message and not (tmp_path / "out").exists()


def test_an_unknown_activation_is_refused_naming_the_field(checkpoint):
    """transformers builds the layers with ACT2FN[config.hidden_act]: a bare KeyError 'swishy' before."""
    from transformers.activations import ACT2FN

    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "hidden_act": "swishy"}))
    with pytest.raises(KeyError):
        ACT2FN["swishy"]
    with pytest.raises(models.CheckpointError) as raised:
        models.load(checkpoint)
    assert str(raised.value).startswith(
        f"{checkpoint / 'config.json'}: hidden_act 'swishy' is not an activation transformers has; choose one of gelu,"
    )
    assert str(raised.value).endswith("(BERT checkpoints use 'gelu')")
