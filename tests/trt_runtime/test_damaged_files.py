"""Issue 11, files: a damaged or mismatched file is detected when it is loaded, with a message saying what to do.

Covered elsewhere and not repeated: a model.onnx with a byte appended (test_runtime_ort_runner), each
engine.json mismatch on its own and engine.json that is not JSON (test_tensorrt_engine_info), a
directory without tokenizer files and a tokenizer.json `tokenizers` cannot read
(test_runtime_tokenization, test_pipelines_errors), calibration.json field by field (test_qdq_models).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
import trt_runtime
from models.quantization import CalibrationError, calibrate, load_calibration, save_calibration
from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import tiny_export
from tests.fixtures.tiny_models import padded_batch, save_tiny
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.backends.tensorrt.engine_info import (
    EngineInfo,
    EngineMismatchError,
    check_engine_matches,
    read_engine_info,
    write_engine,
)
from trt_runtime.backends.tensorrt.profiles import resolve_profile
from trt_runtime.contract.export_dir import (
    ENGINE_JSON,
    EXPORT_JSON,
    MODEL_ONNX,
    ExportDirError,
    read_export_info,
)
from trt_runtime.loader import cpu_backends


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export("bert", "text-classification")[1]


@pytest.fixture
def copy(export_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny export (without its optimized-graph cache) to damage."""
    target = tmp_path / "export"
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def _edit_export_json(directory: Path, change: Any) -> None:
    data = json.loads((directory / EXPORT_JSON).read_text())
    change(data)
    (directory / EXPORT_JSON).write_text(json.dumps(data))


# --- model.onnx ----------------------------------------------------------------------------------------

DAMAGE = {
    "truncated to half": lambda b: b[: len(b) // 2],
    "one byte flipped": lambda b: b[:100] + bytes([b[100] ^ 0x01]) + b[101:],
    "empty": lambda b: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_onnx_is_refused_by_the_pipeline(copy, damage):
    onnx_path = copy / MODEL_ONNX
    onnx_path.write_bytes(DAMAGE[damage](onnx_path.read_bytes()))
    with pytest.raises(
        ExportDirError, match="model.onnx does not match the sha256 recorded in .*re-export the model"
    ):
        trt_runtime.pipeline("text-classification", copy)


def test_truncated_model_onnx_without_the_sha256_check_is_an_export_dir_error(copy):
    onnx_path = copy / MODEL_ONNX
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ExportDirError, match="model.onnx.*re-export"):
        OrtRunner(copy, verify_sha256=False)


def test_export_json_of_another_export_is_a_sha256_mismatch(copy):
    other = tiny_export("bert", "text-classification", seed=3)[1]
    shutil.copy(other / EXPORT_JSON, copy / EXPORT_JSON)
    with pytest.raises(
        ExportDirError, match="does not match the sha256 recorded in .*export.json.*re-export"
    ):
        trt_runtime.load(copy)


def test_export_json_without_the_sha256_cannot_vouch_for_model_onnx(copy):
    _edit_export_json(copy, lambda d: d.pop("onnx_sha256"))
    with pytest.raises(
        ExportDirError, match="records no onnx_sha256, so .*model.onnx cannot be checked.*re-export"
    ):
        trt_runtime.load(copy)
    runner = OrtRunner(copy, verify_sha256=False, cache=False)  # asked for explicitly: runs unchecked
    assert runner({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1, 1]]})["logits"].shape == (1, 3)


# --- export.json ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["inputs", "outputs", "task", "vocab_size", "max_sequence_length", "opset"])
def test_export_json_missing_a_required_field(copy, field):
    _edit_export_json(copy, lambda d: d.pop(field))
    with pytest.raises(
        ExportDirError, match=rf"export.json is incomplete or malformed \(.*'{field}'.*re-export"
    ):
        trt_runtime.load(copy)


WRONG_VALUES = {
    "vocab_size as a string": (
        lambda d: d.update(vocab_size="99"),
        "vocab_size must be an integer >= 1, got '99'",
    ),
    "max_sequence_length null": (
        lambda d: d.update(max_sequence_length=None),
        "max_sequence_length must be an integer >= 1, got None",
    ),
    "vocab_size 0": (lambda d: d.update(vocab_size=0), "vocab_size must be an integer >= 1, got 0"),
    "pad_token_id true": (lambda d: d.update(pad_token_id=True), "pad_token_id must be an integer >= 0"),
    "shape as a string": (lambda d: d["inputs"][0].update(shape="batch"), "incomplete or malformed"),
    "a negative dimension": (
        lambda d: d["outputs"][0].update(shape=["batch_size", -3]),
        "output 'logits' has a bad name or shape",
    ),
    "no inputs": (lambda d: d.update(inputs=[]), "inputs is empty"),
    "id2label a list": (lambda d: d.update(id2label=["a", "b", "c"]), "id2label must be an object"),
    "onnx_sha256 a number": (lambda d: d.update(onnx_sha256=12), "onnx_sha256 must be 64 hex digits"),
    "unknown task": (lambda d: d.update(task="summarization"), "unknown task 'summarization'"),
}


@pytest.mark.parametrize("case", list(WRONG_VALUES))
def test_export_json_with_a_wrong_value_is_refused_at_load(copy, case):
    """Each of these used to load and then fail (TypeError) or misbehave at the first call."""
    change, message = WRONG_VALUES[case]
    _edit_export_json(copy, change)
    with pytest.raises(ExportDirError, match=message) as error:
        trt_runtime.load(copy)
    assert "re-export" in str(error.value) or "expected one of" in str(error.value)


def test_export_json_from_a_newer_format(copy):
    _edit_export_json(copy, lambda d: d.update(format_version=2, a_field_of_version_2={"x": 1}))
    with pytest.raises(
        ExportDirError, match="format_version 2 is newer than this runtime understands .*upgrade"
    ):
        trt_runtime.pipeline("text-classification", copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"task": ', "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
    ],
)
def test_export_json_that_is_not_a_json_object(copy, content, message):
    (copy / EXPORT_JSON).write_bytes(content)
    with pytest.raises(ExportDirError, match=f"{message}.*re-export"):
        trt_runtime.load(copy)


# --- engine.json: built on another machine (pure checks; TensorRT is not needed) -------------------------


def _engine_info(export: Path, **overrides: Any) -> EngineInfo:
    info = read_export_info(export)
    fields: dict[str, Any] = dict(
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        onnx_sha256=info.onnx_sha256,
        engine_sha256=hashlib.sha256(b"engine").hexdigest(),
        profiles=[resolve_profile(info)],
    )
    fields.update(overrides)
    return EngineInfo(**fields)


def test_engine_from_another_tensorrt_and_gpu_is_refused_naming_both_and_the_rebuild(copy):
    write_engine(copy, b"engine", _engine_info(copy))
    recorded = read_engine_info(copy)
    with pytest.raises(EngineMismatchError) as error:
        check_engine_matches(
            recorded,
            copy,
            onnx_sha256=read_export_info(copy).onnx_sha256 or "",
            tensorrt_version="10.14.1.48",
            compute_capability="8.9",
            engine_sha256=hashlib.sha256(b"engine").hexdigest(),
        )
    message = str(error.value)
    assert "built with TensorRT 10.13.0.35 but TensorRT 10.14.1.48 is installed" in message
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3) but this GPU has compute capability 8.9" in message
    assert message.endswith(f"To fix, rebuild it: python -m trt_runtime build {copy}")
    # on this machine (no TensorRT) "auto" still serves the export with ONNX Runtime, and says why
    runner = trt_runtime.load(copy)
    assert runner.backend == cpu_backends("none")[0] and "TensorRT is not available" in runner.choice.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"onnx_sha256": None}, "onnx_sha256 must be strings"),
        ({"tensorrt_version": 10}, "tensorrt_version must be strings"),
        ({"profiles": []}, "it has no optimization profile"),
        ({"profiles": ["input_ids"]}, "incomplete or malformed"),
    ],
)
def test_engine_json_with_wrong_values_is_a_mismatch_not_a_crash(copy, change, message):
    write_engine(copy, b"engine", _engine_info(copy))
    data = json.loads((copy / ENGINE_JSON).read_text())
    data.update(change)
    (copy / ENGINE_JSON).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=f"{message}.*rebuild"):
        read_engine_info(copy)


# --- tokenizer files -----------------------------------------------------------------------------------


def test_tokenizer_config_that_is_not_json(copy):
    (copy / "tokenizer_config.json").write_text("{'model_max_length': 64}")
    with pytest.raises(
        ExportDirError, match="tokenizer_config.json is not valid JSON .*copy the checkpoint's tokenizer"
    ):
        trt_runtime.pipeline("text-classification", copy)


def test_run_command_without_a_tokenizer_exits_2_with_the_fix(copy):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (copy / name).unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "trt_runtime", "run", str(copy), "a good day"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("error: no tokenizer in")
        and "copy the checkpoint's tokenizer files" in result.stderr
    )
    assert "Traceback" not in result.stderr


# --- calibration.json from another model (qdq) -----------------------------------------------------------


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
