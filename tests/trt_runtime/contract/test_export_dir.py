"""What a load checks of an export directory (trt_runtime.contract.export_dir.read_export_info) beyond the schema:
files that are symbolic links out of the directory, export.json against the copy in model.onnx's metadata, and
the graph's quantization against the export's mode (issue 21, "silent wrong answers"); and the protobuf reader
those checks use (trt_runtime.contract.onnx_wire), against onnx.load."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest

import trt_runtime
from tests.fixtures.runtime_exports import save_checkpoint, tiny_export
from tests.trt_runtime.conftest import edit_export_json
from trt_runtime.backends.onnxruntime.runner import OrtRunner
from trt_runtime.contract.export_dir import (
    CACHE_DIR,
    EXPORT_JSON,
    MODEL_ONNX,
    ONNX_METADATA_KEY,
    ExportDirError,
    read_export_info,
)
from trt_runtime.contract.onnx_wire import OnnxWireError, summarize, summarize_file


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """One tiny export of each quantization mode."""
    import exporter

    root = tmp_path_factory.mktemp("modes")
    found = {"none": tiny_export("bert", "text-classification")[1]}
    for mode, model_type in (("qdq", "bert"), ("integer", "ibert")):
        save_checkpoint(root / f"{mode}-checkpoint", model_type, "text-classification")
        found[mode] = Path(
            exporter.export(
                root / f"{mode}-checkpoint", root / mode, task="text-classification", quantization=mode,
                num_calibration_samples=16, validate=False, log=None,
            )
        )
    return found


def _copy(export_dir: Path, target: Path) -> Path:
    shutil.copytree(export_dir, target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def _set_sha256(export_dir: Path) -> None:
    """Make export.json vouch for the model.onnx that is there now (what someone replacing it would do)."""
    data = json.loads((export_dir / EXPORT_JSON).read_text())
    data["onnx_sha256"] = hashlib.sha256((export_dir / MODEL_ONNX).read_bytes()).hexdigest()
    (export_dir / EXPORT_JSON).write_text(json.dumps(data))


def _graph_with_metadata_of(graph_dir: Path, metadata_dir: Path, target: Path) -> None:
    """model.onnx of `graph_dir` carrying the metadata copy of `metadata_dir`'s export.json, saved to `target`."""
    model = onnx.load(str(graph_dir / MODEL_ONNX))
    copy = json.loads((metadata_dir / EXPORT_JSON).read_text())
    copy.pop("onnx_sha256")
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(copy)})
    onnx.save(model, str(target))


# --- the protobuf reader --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "qdq", "integer"])
def test_wire_summary_is_what_onnx_load_reads(exports, mode):
    path = exports[mode] / MODEL_ONNX
    model = onnx.load(str(path))
    summary = summarize_file(path)
    assert summary.metadata == {p.key: p.value for p in model.metadata_props}
    assert summary.op_types == Counter((n.domain, n.op_type) for n in model.graph.node)
    assert summary.custom_ops() == read_export_info(exports[mode]).custom_ops


def test_wire_summary_of_a_damaged_file_is_an_error(exports):
    data = (exports["qdq"] / MODEL_ONNX).read_bytes()
    with pytest.raises(OnnxWireError, match="past the end"):
        summarize(data[: len(data) // 2])


# --- links out of the export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tokenizer.json", MODEL_ONNX, EXPORT_JSON])
def test_a_file_linked_from_outside_the_export_is_refused_naming_it(exports, tmp_path, name):
    export_dir = _copy(exports["none"], tmp_path / "export")
    outside = tmp_path / "outside" / name
    outside.parent.mkdir()
    shutil.move(export_dir / name, outside)  # the same content: only where it lives is wrong
    (export_dir / name).symlink_to(outside)
    with pytest.raises(ExportDirError, match=rf"{export_dir / name} is a symbolic link to {outside}, outside"):
        trt_runtime.load(export_dir)
    with pytest.raises(ExportDirError, match="outside the export directory"):
        trt_runtime.pipeline("text-classification", export_dir)


def test_links_inside_the_export_and_a_linked_export_directory_are_fine(exports, tmp_path):
    export_dir = _copy(exports["none"], tmp_path / "export")
    (export_dir / "tokenizers").mkdir()
    shutil.move(export_dir / "tokenizer.json", export_dir / "tokenizers" / "tokenizer.json")
    (export_dir / "tokenizer.json").symlink_to(Path("tokenizers") / "tokenizer.json")
    (tmp_path / "linked").symlink_to(export_dir, target_is_directory=True)
    pipe = trt_runtime.pipeline("text-classification", tmp_path / "linked")
    assert pipe("a good day")[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}


# --- export.json against its copy in model.onnx --------------------------------------------------------------


def test_a_hand_edited_label_map_is_refused_naming_the_field(exports, tmp_path):
    export_dir = _copy(exports["none"], tmp_path / "export")
    data = json.loads((export_dir / EXPORT_JSON).read_text())
    data["id2label"] = {"0": "POSITIVE", "1": "NEUTRAL", "2": "NEGATIVE"}  # swapped: would give wrong labels
    (export_dir / EXPORT_JSON).write_text(json.dumps(data))
    with pytest.raises(ExportDirError, match=r"disagree on id2label \(id2label: export.json has .*POSITIVE"):
        trt_runtime.pipeline("text-classification", export_dir)
    assert read_export_info(export_dir, verify_sha256=False).id2label == data["id2label"], "unchecked on request"


def test_a_model_without_the_metadata_copy_is_refused(exports, tmp_path):
    export_dir = _copy(exports["none"], tmp_path / "export")
    model = onnx.load(str(export_dir / MODEL_ONNX))
    del model.metadata_props[:]
    onnx.save(model, str(export_dir / MODEL_ONNX))
    _set_sha256(export_dir)
    with pytest.raises(ExportDirError, match="carries no copy of export.json .*not written by `python -m exporter`"):
        trt_runtime.load(export_dir)


def test_another_exports_model_with_its_own_metadata_is_refused_naming_the_fields(exports, tmp_path):
    """A qdq export whose model.onnx was replaced by a float graph (sha256 updated): the metadata says so."""
    export_dir = _copy(exports["qdq"], tmp_path / "export")
    shutil.copy(exports["none"] / MODEL_ONNX, export_dir / MODEL_ONNX)
    _set_sha256(export_dir)
    with pytest.raises(ExportDirError, match="disagree on .*quantization"):
        trt_runtime.load(export_dir)


# --- the graph's quantization against the export's mode ------------------------------------------------------

MODE_MISMATCHES = {
    "qdq export, float graph": (
        "qdq", "none", "says quantization='qdq', but .* has no QuantizeLinear/DequantizeLinear nodes"
    ),
    "float export, Q/DQ graph": ("none", "qdq", "says quantization='none', but .* has quantization nodes"),
    "integer export, float graph": ("integer", "none", r"has the custom ops none, but export.json lists \[.*IntGELU"),
}


@pytest.mark.parametrize("case", list(MODE_MISMATCHES))
def test_a_graph_of_another_mode_is_refused_naming_both(exports, tmp_path, case):
    """Even with metadata that agrees (a carefully forged or hand-assembled directory), the graph itself must be
    of the export's mode."""
    mode, graph_mode, message = MODE_MISMATCHES[case]
    export_dir = _copy(exports[mode], tmp_path / "export")
    _graph_with_metadata_of(exports[graph_mode], export_dir, export_dir / MODEL_ONNX)
    _set_sha256(export_dir)
    with pytest.raises(ExportDirError, match=message):
        trt_runtime.load(export_dir)


@pytest.mark.parametrize("mode", ["none", "qdq", "integer"])
def test_every_real_export_passes_the_checks(exports, mode):
    info = read_export_info(exports[mode])
    assert info.quantization == mode


# --- damaged files: model.onnx -------------------------------------------------------------------------------

DAMAGE = {
    "truncated to half": lambda b: b[: len(b) // 2],
    "one byte flipped": lambda b: b[:100] + bytes([b[100] ^ 0x01]) + b[101:],
    "empty": lambda b: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_onnx_is_refused_by_the_pipeline(export_copy, damage):
    onnx_path = export_copy / MODEL_ONNX
    onnx_path.write_bytes(DAMAGE[damage](onnx_path.read_bytes()))
    with pytest.raises(
        ExportDirError, match="model.onnx does not match the sha256 recorded in .*re-export the model"
    ):
        trt_runtime.pipeline("text-classification", export_copy)


def test_truncated_model_onnx_without_the_sha256_check_is_an_export_dir_error(export_copy):
    onnx_path = export_copy / MODEL_ONNX
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ExportDirError, match="model.onnx.*re-export"):
        OrtRunner(export_copy, verify_sha256=False)


def test_export_json_of_another_export_is_a_sha256_mismatch(export_copy):
    other = tiny_export("bert", "text-classification", seed=3)[1]
    shutil.copy(other / EXPORT_JSON, export_copy / EXPORT_JSON)
    with pytest.raises(
        ExportDirError, match="does not match the sha256 recorded in .*export.json.*re-export"
    ):
        trt_runtime.load(export_copy)


def test_export_json_without_the_sha256_cannot_vouch_for_model_onnx(export_copy):
    edit_export_json(export_copy, lambda d: d.pop("onnx_sha256"))
    with pytest.raises(
        ExportDirError, match="records no onnx_sha256, so .*model.onnx cannot be checked.*re-export"
    ):
        trt_runtime.load(export_copy)
    runner = OrtRunner(export_copy, verify_sha256=False, cache=False)  # asked for explicitly: runs unchecked
    assert runner({"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1, 1]]})["logits"].shape == (1, 3)


# --- damaged files: export.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["inputs", "outputs", "task", "vocab_size", "max_sequence_length", "opset"])
def test_export_json_missing_a_required_field(export_copy, field):
    edit_export_json(export_copy, lambda d: d.pop(field))
    with pytest.raises(
        ExportDirError, match=rf"export.json is incomplete or malformed \(.*'{field}'.*re-export"
    ):
        trt_runtime.load(export_copy)


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
def test_export_json_with_a_wrong_value_is_refused_at_load(export_copy, case):
    """Each of these used to load and then fail (TypeError) or misbehave at the first call."""
    change, message = WRONG_VALUES[case]
    edit_export_json(export_copy, change)
    with pytest.raises(ExportDirError, match=message) as error:
        trt_runtime.load(export_copy)
    assert "re-export" in str(error.value) or "expected one of" in str(error.value)


def test_export_json_from_a_newer_format(export_copy):
    edit_export_json(export_copy, lambda d: d.update(format_version=2, a_field_of_version_2={"x": 1}))
    with pytest.raises(
        ExportDirError, match="format_version 2 is newer than this runtime understands .*upgrade"
    ):
        trt_runtime.pipeline("text-classification", export_copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"task": ', "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
    ],
)
def test_export_json_that_is_not_a_json_object(export_copy, content, message):
    (export_copy / EXPORT_JSON).write_bytes(content)
    with pytest.raises(ExportDirError, match=f"{message}.*re-export"):
        trt_runtime.load(export_copy)
