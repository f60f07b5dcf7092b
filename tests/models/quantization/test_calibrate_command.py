"""`python -m models.quantization.calibrate` in both modes on a tiny checkpoint: its file holds what the
toolkits' documented steps compute with the same settings (keep_float + calibrate for qdq, calibrate_integer
for integer), records the recipe, and `models.load(..., calibration=FILE)` reproduces the calibrated model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import models
from models.data import calibration_batches, load_texts
from models.quantization import QuantizationRecipe, calibrate, calibrate_integer, keep_float
from models.quantization.integer.calibration import integer_state
from tests.fixtures import ROOT
from tests.fixtures.tiny_models import MAX_POSITIONS, padded_batch, save_tiny
from tests.fixtures.tiny_tokenizers import save_tiny_tokenizer

TASK = "feature-extraction"
SAMPLES, BATCH = 24, 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory, _ = save_tiny(tmp_path_factory.mktemp("ckpt") / "bert", "bert", TASK)
    save_tiny_tokenizer(directory, "bert")
    return directory


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "models.quantization.calibrate", *args], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=300,
    )


def shipped_batches(checkpoint):
    """The shipped corpus as the documented toolkit steps batch it, at the model's limit (64 positions)."""
    return calibration_batches(load_texts(), checkpoint, batch_size=BATCH, max_length=MAX_POSITIONS, num_samples=SAMPLES)


def test_qdq_file_is_the_toolkits_calibration(tmp_path, checkpoint):
    path = tmp_path / "qdq.json"
    # 0.1's flag names (--num-samples, --batch-size), mode qdq by default
    done = run("--model", str(checkpoint), "--output", str(path), "--num-samples", str(SAMPLES), "--batch-size", str(BATCH))
    assert done.returncode == 0, done.stderr
    data = json.loads(path.read_text())
    assert data["mode"] == "qdq" and (data["method"], data["percentile"]) == ("percentile", 99.999)
    assert QuantizationRecipe.from_dict(data["recipe"]) == QuantizationRecipe(
        mode="qdq", num_samples=SAMPLES, batch_size=BATCH, max_length=MAX_POSITIONS
    )

    reference = models.load(checkpoint, task=TASK, quantization="qdq")
    kept = keep_float(reference, ["residual-adds", "ffn-output-input"])
    calibrate(reference, shipped_batches(checkpoint), "percentile", 99.999, progress=False)
    assert sorted(data["float_quantizers"]) == kept
    for name, quantizer in reference.named_modules():
        if name in data["quantizers"]:
            expected = quantizer.amax.flatten().tolist()
            assert data["quantizers"][name] == (expected[0] if quantizer.axis is None else expected), name

    loaded = models.load(checkpoint, task=TASK, quantization="qdq", calibration=path)
    feeds = padded_batch("bert", seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(**feeds)["last_hidden_state"], reference(**feeds)["last_hidden_state"])


def test_integer_file_is_the_toolkits_calibration(tmp_path, checkpoint):
    path = tmp_path / "integer.json"
    done = run("--model", str(checkpoint), "--output", str(path), "--quantization", "integer",
               "--num-calibration-samples", str(SAMPLES), "--calibration-batch-size", str(BATCH),
               "--wide-activations", "hidden-states")
    assert done.returncode == 0, done.stderr
    data = json.loads(path.read_text())
    assert (data["mode"], data["method"], data["wide_activations"]) == ("integer", "ibert-minmax", ["hidden-states"])
    assert QuantizationRecipe.from_dict(data["recipe"]) == QuantizationRecipe(
        mode="integer", force_dequant="none", wide_activations=("hidden-states",), num_samples=SAMPLES,
        batch_size=BATCH, max_length=MAX_POSITIONS,
    )

    reference = models.load(checkpoint, task=TASK, quantization="integer", wide_activations=["hidden-states"])
    calibrate_integer(reference, shipped_batches(checkpoint), "minmax", progress=False)
    state = integer_state(reference)
    assert {name: {"x_min": a["x_min"], "x_max": a["x_max"]} for name, a in data["activations"].items()} == {
        name: value for name, value in state.items() if "x_min" in value
    }
    assert data["layernorm_shifts"] == {name: int(v["shift"]) for name, v in state.items() if "shift" in v}

    loaded = models.load(checkpoint, task=TASK, quantization="integer", calibration=path)  # its settings too
    feeds = padded_batch("bert", seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(**feeds)["last_hidden_state"], reference(**feeds)["last_hidden_state"])


def test_bad_arguments_exit_2_with_the_reason(tmp_path, checkpoint):
    base = ["--model", str(checkpoint), "--output", str(tmp_path / "out.json")]
    cases = {
        ("--quantization", "integer", "--keep-float", "residual-adds"): "--keep-float / --quantize-all applies to --quantization qdq only",
        ("--method", "ema"): "calibration method 'ema' is not one of qdq's",
        ("--calibration-data", str(tmp_path / "none.txt")): "none.txt does not exist",
        ("--quantization", "none"): "invalid choice: 'none'",
    }
    for args, message in cases.items():
        done = run(*base, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert not (tmp_path / "out.json").exists()


def test_importing_the_command_module_leaves_the_calibrate_function_working(checkpoint):
    """`models.quantization.calibrate` names both the qdq function and this command's module; a console script
    imports the module, which Python then binds as the package attribute: calling it must still calibrate, in a
    fresh interpreter where nothing else has touched the package."""
    code = f"""
import models.quantization.calibrate  # as a console script's entry point does
import models
from models.data import calibration_batches, load_texts
from models.quantization import calibrate, named_quantizers
model = models.load({str(checkpoint)!r}, task="feature-extraction", quantization="qdq")
calibrate(model, calibration_batches(load_texts(), {str(checkpoint)!r}, batch_size=8, num_samples=8), method="max")
print(sum(q.amax is not None for q in named_quantizers(model).values()))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 0  # every enabled quantizer got an amax
