"""The project's one error base (trt_runtime.contract.errors): every documented error class has a stable,
unique `code`, is listed in docs/errors.md with its class and exit code, and one representative message per
code is snapshotted here (a message change is a visible diff of this table)."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import ROOT
from trt_runtime.contract.errors import (
    BAD_INPUT,
    VALIDATION_FAILED,
    FileError,
    QbertError,
    as_qbert_error,
    report,
)

#: every module that defines a documented error class (a new one must be added here and to docs/errors.md)
ERROR_MODULES = (
    "trt_runtime.contract.errors",
    "trt_runtime.contract.files",
    "trt_runtime.contract.onnx_wire",
    "trt_runtime.contract.export_dir",
    "trt_runtime.contract.tasks",
    "trt_runtime.validation",
    "trt_runtime.backends.base",
    "trt_runtime.backends.onnxruntime.recipes",
    "trt_runtime.backends.openvino.runner",
    "trt_runtime.backends.tensorrt.libs",
    "trt_runtime.backends.tensorrt.profiles",
    "trt_runtime.backends.tensorrt.builder",
    "trt_runtime.backends.tensorrt.engine_info",
    "trt_runtime.backends.tensorrt.layer_report",
    "trt_runtime.backends.tensorrt.onnx_prep",
    "trt_runtime.backends.tensorrt.trtexec",
    "trt_runtime.backends.tensorrt.plugins",
    "trt_runtime.backends.tensorrt.plugins.aot",
    "trt_runtime.triton.repository",
    "trt_runtime.triton.server",
    "models.errors",
    "models.quantization.errors",
    "exporter.errors",
    "exporter.qdq",
    "benchmarks.eval.steps",
)


def documented_classes() -> dict[str, type[QbertError]]:
    for name in ERROR_MODULES:
        importlib.import_module(name)
    found: dict[str, type[QbertError]] = {}
    pending: list[type[QbertError]] = [QbertError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in ("trt_runtime", "models", "exporter", "benchmarks"):
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def docs_codes() -> dict[str, tuple[str, int]]:
    """docs/errors.md's code table: code -> (class name, exit code)."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| `([\w.]+)` \| (\d) \|", (ROOT / "docs" / "errors.md").read_text(), re.M)
    return {code: (cls, int(exit_code)) for code, cls, exit_code in rows}


def test_every_error_class_has_its_own_code_and_is_documented():
    classes = documented_classes()
    assert len(classes) > 30
    codes: dict[str, str] = {}
    for name, cls in classes.items():
        assert "code" in vars(cls), f"{name} inherits its code; give it its own"
        assert cls.code not in codes, f"{name} and {codes[cls.code]} share the code {cls.code}"
        codes[cls.code] = name
        assert cls.exit_code in (BAD_INPUT, VALIDATION_FAILED)
        assert issubclass(cls, (ValueError, RuntimeError, OSError)) or cls is QbertError or cls.code == "quantization"
    documented = docs_codes()
    assert set(documented) == set(codes), "docs/errors.md's code table and the classes differ"
    for code, (cls_name, exit_code) in documented.items():
        assert codes[code].endswith("." + cls_name), (code, cls_name, codes[code])
        assert classes[codes[code]].exit_code == exit_code, code


def test_only_validation_failures_exit_1():
    """1 is "validation failed" (docs/errors.md): only a result that failed a check exits with it."""
    failing = {cls.code for cls in documented_classes().values() if cls.exit_code == VALIDATION_FAILED}
    assert failing == {"export-validation-failed", "qdq-layout", "engine-build-failed", "aot-compile-failed"}


def test_a_plain_os_error_is_reported_naming_its_file_with_exit_2(tmp_path: Path, capsys):
    missing = tmp_path / "nothing.txt"
    with pytest.raises(OSError) as raised:
        missing.read_text()
    documented = as_qbert_error(raised.value)
    assert isinstance(documented, FileError) and documented.errno == raised.value.errno
    assert report(raised.value) == 2
    assert capsys.readouterr().err == f"error: {missing}: No such file or directory\n"
    with pytest.raises(KeyError):  # not ours and not an OSError: a bug, the traceback shows
        report(KeyError("x"))


# --- one message per code: the error is raised by the real code path ----------------------------------------


def _checkpoint(tmp: Path) -> None:
    import models

    models.load_config(tmp)


def _data(tmp: Path) -> None:
    from models.data import load_texts

    load_texts(tmp / "missing.txt")


def _recipe(tmp: Path) -> None:
    from models.quantization.recipe import QuantizationRecipe

    QuantizationRecipe(mode="qdq", percentile=101)


def _calibration_file(tmp: Path) -> None:
    from models.quantization.calibration_file import read_calibration

    (tmp / "calibration.json").write_text("[]")
    read_calibration(tmp / "calibration.json")


def _not_calibrated(tmp: Path) -> None:
    import torch

    from models.quantization.qdq.tensor_quantizer import TensorQuantizer

    TensorQuantizer()(torch.ones(2))


def _export_invalid(tmp: Path) -> None:
    import exporter

    exporter.export(tmp, tmp, task="feature-extraction")


def _export_dir(tmp: Path) -> None:
    from trt_runtime.contract.export_dir import read_export_info

    read_export_info(tmp)


def _onnx_unreadable(tmp: Path) -> None:
    from trt_runtime.contract.onnx_wire import summarize_file

    (tmp / "model.onnx").write_bytes(b"")
    summarize_file(tmp / "model.onnx")


def _unknown_task(tmp: Path) -> None:
    from trt_runtime.contract.tasks import canonical_task

    canonical_task("summarise")


def _profile(tmp: Path) -> None:
    from trt_runtime.backends.tensorrt.profiles import parse_shapes

    parse_shapes("input_ids")


def _precision(tmp: Path) -> None:
    from trt_runtime.backends.tensorrt.builder import resolve_precision

    resolve_precision(False, True, False, supports_strongly_typed=False)


def _layer_report(tmp: Path) -> None:
    from trt_runtime.backends.tensorrt.layer_report import summarize_layers

    summarize_layers({})


def _trtexec(tmp: Path) -> None:
    from trt_runtime.backends.tensorrt.trtexec import check_flags

    check_flags(["fp16"])


def _engine_mismatch(tmp: Path) -> None:
    from trt_runtime.backends.tensorrt.engine_info import read_engine_info

    read_engine_info(tmp)


def _repository(tmp: Path) -> None:
    from trt_runtime.triton.repository import RepositoryOptions

    RepositoryOptions(max_batch_size=0).check()


def _info(quantization: str = "none"):
    from trt_runtime.contract.export_dir import ExportInfo, TensorSpec

    axes = ("batch_size", "sequence_length")
    return ExportInfo(
        architecture="bert",
        model_type="bert",
        task="feature-extraction",
        quantization=quantization,
        opset=17,
        inputs=[TensorSpec(name, "int64", axes) for name in ("input_ids", "attention_mask")],
        outputs=[TensorSpec("last_hidden_state", "float32", (*axes, 8))],
        max_sequence_length=16,
        vocab_size=50,
    )


def _input(tmp: Path) -> None:
    from trt_runtime.validation import validate_feeds

    validate_feeds({"input_ids": np.zeros((1, 4), np.float32), "attention_mask": np.ones((1, 4))}, _info())


def _cpu_int8(tmp: Path) -> None:
    from trt_runtime.backends.onnxruntime.recipes import check_int8_applies

    check_int8_applies(tmp, _info("none"))


def _cpu_float(tmp: Path) -> None:
    from trt_runtime.backends.onnxruntime.recipes import check_float_applies

    check_float_applies(tmp, _info("qdq"))


def _cpu_integer(tmp: Path) -> None:
    from trt_runtime.backends.onnxruntime.recipes import check_integer_applies

    check_integer_applies(tmp, _info("qdq"))


def _unsafe_path(tmp: Path) -> None:
    from trt_runtime.contract.files import write_text_atomic

    (tmp / "real").mkdir()
    os.symlink(tmp / "real", tmp / "cache")
    write_text_atomic(tmp / "cache" / "record.json", "{}", root=tmp)


def _output_unwritable(tmp: Path) -> None:
    from trt_runtime.contract.files import write_text_atomic

    write_text_atomic(tmp, "{}")


def _output_overlaps(tmp: Path) -> None:
    from trt_runtime.contract.files import check_output_outside_inputs

    check_output_outside_inputs(tmp / "model.safetensors", {"--model": tmp})


def _file_error(tmp: Path) -> None:
    try:
        (tmp / "nothing.txt").read_text()
    except OSError as e:
        raise as_qbert_error(e) from e


SNAPSHOTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "checkpoint-invalid": (_checkpoint, "TMP/config.json not found: a checkpoint directory needs config.json"),
    "data-invalid": (_data, "TMP/missing.txt not found"),
    "bad-recipe": (_recipe, "percentile must be in (0, 100], got 101 (--percentile)"),
    "calibration-file": (
        _calibration_file,
        "TMP/calibration.json is not a calibration file (not a JSON object); calibrate this model: "
        "python -m models.quantization.calibrate --model DIR --output FILE",
    ),
    "not-calibrated": (
        _not_calibrated,
        "TensorQuantizer is in quant mode but not calibrated: run models.quantization.calibrate(model, batches) "
        "or load a calibration.json (models.load(..., calibration=PATH) or "
        "models.quantization.load_calibration(model, PATH))",
    ),
    "export-invalid": (_export_invalid, "--model: TMP/config.json not found: a checkpoint directory needs config.json"),
    "export-dir": (
        _export_dir,
        "TMP/export.json not found: TMP is not an export directory; run `python -m exporter`",
    ),
    "onnx-unreadable": (_onnx_unreadable, "TMP/model.onnx is empty"),
    "unknown-task": (
        _unknown_task,
        "unknown task 'summarise'; choose one of: feature-extraction, fill-mask, text-generation, "
        "text-classification, token-classification, question-answering, multiple-choice, "
        "next-sentence-prediction, or auto (from config.json); optimum's and transformers' synonyms work too: "
        "causal-lm, default, masked-lm, mask-generation, sentence-similarity, sequence-classification, "
        "zero-shot-classification, image-feature-extraction, pretraining, sentiment-analysis, ner",
    ),
    "profile-invalid": (_profile, "shapes: 'input_ids' is not NAME:DIMS; write e.g. input_ids:1x128,attention_mask:1x128"),
    "precision-invalid": (
        _precision,
        "this TensorRT cannot build strongly-typed networks (it needs 10.0+); use --no-strongly-typed",
    ),
    "layer-report-invalid": (_layer_report, "not the engine inspector's JSON (no 'Layers' list)"),
    "trtexec-invalid": (_trtexec, "'fp16' is not a trtexec flag (trtexec takes --name or --name=value)"),
    "engine-mismatch": (_engine_mismatch, "TMP/model.engine not found; build it: python -m trt_runtime build TMP"),
    "repository-invalid": (_repository, "max_batch_size must be >= 1, got 0"),
    "input-invalid": (
        _input,
        "input_ids has dtype float32; expected integers (int64; other integer widths are converted). "
        "Convert it with .astype(np.int64)",
    ),
    "cpu-int8-not-applicable": (_cpu_int8, "TMP is a 'none' export; the CPU INT8 graph is derived from qdq exports"),
    "cpu-float-not-applicable": (
        _cpu_float,
        "TMP is a 'qdq' export; the fused float graph is derived from float (quantization='none') exports",
    ),
    "cpu-integer-not-applicable": (
        _cpu_integer, "TMP is a 'qdq' export; the CPU integer graph is derived from integer exports",
    ),
    "unsafe-path": (
        _unsafe_path,
        "TMP/cache is a symbolic link; refusing to write through it (remove it, or point the writer at another "
        "directory)",
    ),
    "output-unwritable": (
        _output_unwritable,
        "cannot write TMP: it is a directory, and a file goes there; name a file (e.g. TMP/NAME), or remove the "
        "directory. Nothing was replaced",
    ),
    "output-overlaps-input": (
        _output_overlaps,
        "--output TMP/model.safetensors lies inside the input --model TMP: writing it would change what it is "
        "made from; choose an output outside TMP",
    ),
    "file-error": (_file_error, "TMP/nothing.txt: No such file or directory"),
}


@pytest.mark.parametrize("code", sorted(SNAPSHOTS))
def test_message_snapshot(code: str, tmp_path: Path):
    trigger, expected = SNAPSHOTS[code]
    with pytest.raises(QbertError) as raised:
        trigger(tmp_path)
    assert raised.value.code == code
    message = str(raised.value).replace(str(tmp_path), "TMP")
    assert message == expected
