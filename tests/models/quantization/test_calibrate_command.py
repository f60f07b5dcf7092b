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
from models.quantization.smoothing import smooth
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

    # the toolkit's documented steps (docs/qdq.md): the float sites, SmoothQuant auto, then calibration
    reference = models.load(checkpoint, task=TASK, quantization="qdq")
    kept = keep_float(reference, ["residual-adds"])
    scales = smooth(reference, shipped_batches(checkpoint), "auto", progress=False)
    calibrate(reference, shipped_batches(checkpoint), "percentile", 99.999, progress=False)
    assert sorted(data["float_quantizers"]) == kept
    assert data.get("smoothing", {}) == {name: scale.tolist() for name, scale in scales.items()}
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


# --- the output: never an input, never half-written; an unwritable one is a documented error (exit 2) ------


def test_an_output_inside_the_checkpoint_is_refused_before_any_work(tmp_path, checkpoint):
    """`--output CK/model.safetensors` used to overwrite the weights it read (exit 0)."""
    weights = checkpoint / "model.safetensors"
    before = weights.read_bytes()
    for output in (weights, checkpoint / "config.json", checkpoint / "calibration.json", checkpoint):
        done = run("--model", str(checkpoint), "--output", str(output))
        assert done.returncode == 2, done.stderr
        relation = "is" if output == checkpoint else "lies inside"
        assert f"error: --output {output} {relation} the input --model {checkpoint}" in done.stderr
        assert "Traceback" not in done.stderr
    assert weights.read_bytes() == before
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith(".")) == []


def test_an_output_inside_the_calibration_data_is_refused(tmp_path, checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    (data / "texts.txt").write_text("one text\nanother text\n")
    done = run("--model", str(checkpoint), "--output", str(data / "calibration.json"), "--calibration-data", str(data))
    assert done.returncode == 2 and f"lies inside the input --calibration-data {data}" in done.stderr, done.stderr


def test_an_output_that_is_a_directory_is_refused_before_any_work(tmp_path, checkpoint):
    done = run("--model", str(checkpoint), "--output", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {tmp_path}: it is a directory, and a file goes there; name a file "
        f"(e.g. {tmp_path}/NAME), or remove the directory. Nothing was replaced"
    )
    assert "calibrated" not in done.stderr  # refused before the work, not after it


@pytest.mark.parametrize(
    ("filesystem", "why"),
    [
        ("read-only", "the filesystem is read-only"),
        ("full", "no space is left on the device"),
        ("immutable", "the operation is not permitted (an immutable or append-only file or directory?)"),
    ],
)
def test_an_unwritable_output_exits_2_naming_it(tmp_path, checkpoint, filesystem, why):
    from tests.fixtures.filesystems import full_filesystem, immutable_directory, read_only_mount

    make = {"read-only": read_only_mount, "full": full_filesystem, "immutable": immutable_directory}[filesystem]
    with make(tmp_path / "out") as directory:
        output = directory / "calibration.json"
        done = run("--model", str(checkpoint), "--output", str(output), "--num-calibration-samples", "8")
        left = sorted(p.name for p in directory.iterdir())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {output}: {why}; ")
    assert left == (["filler"] if filesystem == "full" else [])  # no temporary left behind


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_with_exit_2(tmp_path):
    """torch used to stop mid-calibration with a bare `IndexError: index out of range in self`."""
    directory, _ = save_tiny(tmp_path / "small-vocab", "bert", TASK, vocab_size=20)
    save_tiny_tokenizer(directory, "bert")  # ids up to 98
    done = run("--model", str(directory), "--output", str(tmp_path / "out.json"), "--num-calibration-samples", "8")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the calibration batches hold input_ids ") and last.endswith(
        ", outside the model's vocab_size of 20 (config.json): the tokenizer does not belong to this checkpoint; "
        "calibrate with the checkpoint's own tokenizer, or fix vocab_size in config.json"
    )
    assert not (tmp_path / "out.json").exists()
