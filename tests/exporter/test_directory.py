"""The export directory: export.json, sha256, ONNX metadata, checkpoint files, atomic replace, clear errors, CLI."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

import exporter
import models
from exporter import graph as graph_ops
from exporter.directory import recover_interrupted
from exporter.signature import signature_of
from exporter.validation import TOLERANCES, ExportValidationError, compare, ort_runner
from tests.fixtures import ROOT
from tests.fixtures.interruptions import (
    CALIBRATION_PATTERN,
    ENV,
    PREVIOUS_CALIBRATION,
    TEMPORARY,
    Killed,
    age_leftovers,
    leftovers,
    run_all,
    snapshot,
)
from tests.fixtures.runtime_exports import save_checkpoint
from tests.fixtures.tensorrt_test_models import ibert_graph_model, write_export_dir
from tests.fixtures.tiny_models import hf_outputs, padded_batch, save_tiny
from trt_runtime.contract.export_dir import ExportDirError, read_export_info
from trt_runtime.contract.files import _exchange

WORDS = ["the", "a", "movie", "film", "was", "is", "good", "bad", "great", "terrible", "not", "very", "fun", "plot", "actor", "story", "and", "but", "i", "it"]


def save_tiny_tokenizer(directory) -> transformers.PreTrainedTokenizerFast:
    """A WordPiece tokenizer whose ids fit the tiny models' vocabulary of 99 (files as BERT checkpoints ship them)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", *WORDS, *letters]
    vocab += [f"##{c}" for c in letters][: 99 - len(vocab)]
    assert len(vocab) <= 99
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="module")
def bert_clf(tmp_path_factory):
    directory, reference = save_tiny(tmp_path_factory.mktemp("ckpt") / "bert", "bert", "text-classification")
    return directory, reference


def test_export_json_and_metadata(tmp_path, bert_clf):
    directory, _ = bert_clf
    out = exporter.export(directory, tmp_path / "out", task="text-classification", log=None)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.onnx"]
    data = json.loads((out / "export.json").read_text())
    assert data["architecture"] == "bert" and data["model_type"] == "bert"
    assert data["task"] == "text-classification" and data["quantization"] == "none"
    assert data["force_dequant"] is None and data["calibration"] is None and data["custom_ops"] == []
    assert data["opset"] == 17
    assert data["id2label"] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    assert data["problem_type"] is None
    assert (data["max_sequence_length"], data["vocab_size"], data["type_vocab_size"], data["pad_token_id"]) == (64, 99, 2, 0)
    assert data["onnx_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(data["tool_versions"])
    created = datetime.datetime.fromisoformat(data["created"])
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 600
    # the runtime's reader accepts it, sha included
    info = read_export_info(out)
    assert info.output_names == ["logits"]
    # ONNX metadata_props repeats export.json, less the sha of the file that holds it
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    embedded = json.loads(props["export"])
    assert embedded == {k: v for k, v in data.items() if k != "onnx_sha256"}
    assert (out / "config.json").read_bytes() == (directory / "config.json").read_bytes()


def test_roberta_limits(tmp_path):
    directory, _ = save_tiny(tmp_path / "ckpt", "roberta", "token-classification")
    out = exporter.export(directory, tmp_path / "out", log=None)  # task from config.json
    info = read_export_info(out)
    config = json.loads((directory / "config.json").read_text())
    assert info.task == "token-classification"
    assert info.max_sequence_length == config["max_position_embeddings"] - config["pad_token_id"] - 1 == 64
    assert info.pad_token_id == 1 and info.type_vocab_size == 1
    assert info.input_names == ["input_ids", "attention_mask"]


def test_tokenizer_files_copied_and_real_text_validated(tmp_path, capsys):
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", "feature-extraction")
    tokenizer = save_tiny_tokenizer(directory)
    out = exporter.export(directory, tmp_path / "out", task="feature-extraction")
    shipped = {p.name for p in directory.iterdir()} - {"model.safetensors"}
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "config.json"} <= shipped
    for name in shipped:
        assert (out / name).read_bytes() == (directory / name).read_bytes(), name
    # the directory alone serves requests: its tokenizer + model.onnx reproduce the checkpoint
    batch = tokenizer(["the movie was good", "not fun"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["last_hidden_state"], {k: v.astype(np.int64) for k, v in batch.items()})[0]
    ours = models.load(directory, task="feature-extraction")
    with torch.no_grad():
        expected = ours(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})["last_hidden_state"]
    assert np.abs(got - expected.numpy()).max() <= 1e-4
    log = capsys.readouterr().err
    assert "validating in ONNX Runtime" in log and "max |onnx - torch|" in log


def test_replace_is_atomic(tmp_path, bert_clf, monkeypatch):
    directory, _ = bert_clf
    out = tmp_path / "out"
    exporter.export(directory, out, task="text-classification", log=None)
    (out / "stale.txt").write_text("from the previous export")
    first_sha = read_export_info(out).onnx_sha256

    # an export interrupted half-way (Ctrl-C while tracing) leaves the previous output as it was
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("exporter.pipeline.torchscript_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exporter.export(directory, out, task="text-classification", log=None)
    monkeypatch.undo()
    assert (out / "stale.txt").exists() and read_export_info(out).onnx_sha256 == first_sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left behind

    # a complete export replaces the whole directory
    exporter.export(directory, out, task="text-classification", opset=18, log=None)
    assert not (out / "stale.txt").exists()
    assert read_export_info(out).opset == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # an ordinary directory, not mkdtemp's private one


def test_refuses_to_replace_what_is_not_an_export(tmp_path, bert_clf):
    directory, _ = bert_clf
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(exporter.ExportError, match="not an export directory"):
        exporter.export(directory, precious, task="text-classification", log=None)
    assert (precious / "notes.txt").read_text() == "keep me"
    for out, relation in ((directory, "is"), (directory / "onnx", "lies inside"), (directory.parent, "contains")):
        with pytest.raises(exporter.ExportError) as raised:
            exporter.export(directory, out, task="text-classification", log=None)
        assert str(raised.value).startswith(f"--output {out} {relation} the input --model {directory}: writing it ")
    assert not (directory / "onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "summarization"}, "unknown task 'summarization'; choose one of: feature-extraction"),
        ({"task": "next-sentence-prediction", "model": "squeezebert"}, "not available for model_type 'squeezebert'"),
        ({"quantization": "int4"}, "unknown quantization 'int4'; choose one of: none, qdq, integer"),
        ({"quantization": "integer", "model": "squeezebert"}, "'integer' is not available for squeezebert; choose one of: none, qdq"),
        ({"force_dequant": "gelu"}, "applies to --quantization integer only"),
        ({"opset": 11}, "opset 11 is not supported; choose 17 to 20"),
        ({"quantization": "qdq", "calibration_data": "no/such/file.txt"}, "no/such/file.txt does not exist"),
        ({"quantization": "qdq", "calibration_method": "percentile-abc"}, "expected percentile-<number>"),
        ({"quantization": "qdq", "percentile": 120.0}, r"percentile must be in \(0, 100\]"),
        ({"model": "missing"}, "is not a directory; pass a Hugging Face checkpoint directory"),
    ],
)
@pytest.mark.filterwarnings("ignore:exporter.export's keyword:DeprecationWarning")  # 0.1's keywords, on purpose
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    kind = kwargs.pop("model", "bert")
    directory = tmp_path / "missing" if kind == "missing" else save_tiny(tmp_path / kind, kind, "feature-extraction")[0]
    with pytest.raises(exporter.ExportError, match=message):
        exporter.export(directory, tmp_path / "out", **{"task": "feature-extraction", "log": None, **kwargs})
    assert not (tmp_path / "out").exists()


def test_external_data_when_over_the_protobuf_limit(tmp_path, bert_clf, monkeypatch):
    """Over 2 GiB the weights go to model.onnx.data; shown here by lowering the limit, not by a 2 GiB model."""
    directory, reference = bert_clf
    monkeypatch.setattr(graph_ops, "PROTOBUF_LIMIT", 1024)
    out = exporter.export(directory, tmp_path / "out", task="text-classification", log=None)
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    read_export_info(out)  # sha of model.onnx checks out
    feeds = {k: v.numpy() for k, v in padded_batch("bert", batch=2, seq=9).items()}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = hf_outputs(reference, "text-classification", {k: torch.from_numpy(v) for k, v in feeds.items()})
    assert np.abs(session.run(None, feeds)[0] - expected["logits"].numpy()).max() <= 1e-4


def test_validation_catches_a_wrong_graph(tmp_path, bert_clf):
    """A damaged weight in the ONNX file is caught by the same check every export runs."""
    directory, _ = bert_clf
    out = exporter.export(directory, tmp_path / "out", task="text-classification", log=None)
    model = onnx.load(str(out / "model.onnx"))
    weight = next(i for i in model.graph.initializer if i.name == "classifier.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, 0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    torch_model = models.load(directory, task="text-classification")
    signature = signature_of(torch_model)
    feeds = {k: v.numpy() for k, v in padded_batch("bert", batch=2, seq=9).items()}
    shape = exporter.sample_inputs.Shape(2, 9)
    compare(ort_runner(out / "model.onnx"), torch_model, signature, [(shape, feeds)], TOLERANCES["none"], log=lambda _: None)
    with pytest.raises(ExportValidationError, match="logits"):
        compare(ort_runner(tmp_path / "damaged.onnx"), torch_model, signature, [(shape, feeds)],
                TOLERANCES["none"], log=lambda _: None)


def test_tolerance_rules():
    expected = np.linspace(-3, 3, 1000, dtype=np.float32)  # max |x| = 3
    strict = TOLERANCES["none"]
    assert strict.violation(expected + 2e-4, expected) is None  # 2e-4 <= 1e-4 x 3
    assert "beyond" in strict.violation(expected + 4e-4, expected)
    assert "shape" in strict.violation(expected[:10], expected)
    assert "non-finite" in strict.violation(np.full_like(expected, np.nan), expected)
    # quantized: relative L2 error against 0.75 x the module's own quantization error
    quantized = TOLERANCES["qdq"]
    rng = np.random.default_rng(0)
    float_output = expected + rng.normal(0, 0.1, expected.shape).astype(np.float32)  # quantization error ~5.8%
    flips = expected + rng.normal(0, 0.03, expected.shape).astype(np.float32)  # ~1.7%: allowed
    assert quantized.violation(flips, expected, float_output) is None
    assert "relative L2 error" in quantized.violation(float_output, expected, float_output)  # = the float model
    assert quantized.violation(expected + 5e-5, expected, expected) is None  # no quantization error: 1e-3 floor
    with pytest.raises(ValueError, match="float model"):
        quantized.violation(expected, expected)


def test_command_line(tmp_path, bert_clf):
    directory, _ = bert_clf
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    ok = subprocess.run(
        [sys.executable, "-m", "exporter", "--model", str(directory), "--task", "text-classification",
         "--output", str(tmp_path / "out"), "--opset", "18"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "out")
    assert "[1/5" in ok.stderr and "validating" in ok.stderr
    assert read_export_info(tmp_path / "out").opset == 18
    bad = subprocess.run(
        [sys.executable, "-m", "exporter", "--model", str(directory), "--task", "text-classification",
         "--quantization", "qdq", "--calibration-data", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o2")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --calibration-data") and "nope.txt does not exist" in bad.stderr


def _export_command(directory, out, *extra):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--model", str(directory), "--task", "text-classification",
         "--output", str(out), "--no-validate", *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_an_output_inside_the_calibration_data_is_refused(tmp_path, bert_clf):
    directory, _ = bert_clf
    data = tmp_path / "data"
    data.mkdir()
    (data / "texts.txt").write_text("the movie was good\n")
    with pytest.raises(exporter.ExportError, match=f"^--output {data / 'out'} lies inside the input --calibration-data"):
        exporter.export(directory, data / "out", task="text-classification", quantization="qdq",
                        calibration_data=str(data), log=None)


def test_a_mount_point_output_is_refused_before_any_work_with_exit_2(tmp_path, bert_clf):
    """Used to fail at the swap with a raw `OSError: [Errno 16] Device or resource busy` on a temporary (exit 1)."""
    from tests.fixtures.filesystems import mount_point

    directory, _ = bert_clf
    with mount_point(tmp_path / "mnt") as out:
        done = _export_command(directory, out)
        left = sorted(p.name for p in out.iterdir())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot replace {out}: it is a mount point, and an output directory is replaced whole by a "
        f"rename; write into a directory inside it instead (e.g. {out / 'NAME'})"
    )
    assert left == [] and "[1/" not in done.stderr  # refused before loading anything


@pytest.mark.parametrize(("filesystem", "why"), [("read-only", "the filesystem is read-only"),
                                                 ("full", "no space is left on the device")])
def test_an_unwritable_output_exits_2_naming_it(tmp_path, bert_clf, filesystem, why):
    from tests.fixtures.filesystems import full_filesystem, read_only_mount

    directory, _ = bert_clf
    with (read_only_mount if filesystem == "read-only" else full_filesystem)(tmp_path / "disk") as disk:
        out = disk / "export"
        done = _export_command(directory, out)
        left = sorted(p.name for p in disk.iterdir())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {out}: {why}; ")
    assert left == ([] if filesystem == "read-only" else ["filler"])  # no staging directory left behind


# --- interrupted exports: real exports and a real calibration SIGKILLed when they print a line ---------------
# (all started together, so that they share the machine's two cores; the calibration is killed with
# the exports because it shares their fixture)

#: kill point -> the stderr line to kill on: step lines of exporter.pipeline ("[4/5] checking the graph and
#: writing the directory" comes before the files are written, "wrote OUT" right before the swap)
EXPORT_POINTS = {
    "after loading": r"^\[1/5",
    "while writing the directory": r"^\[4/5",
    "while validating": r"^\[5/5",
    "at the swap": r"^wrote ",
}
#: the calibrate command logs "calibrated N quantizers" and then writes its file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint") / "ckpt"
    save_checkpoint(directory, "bert", "text-classification")
    return directory


@pytest.fixture(scope="module")
def previous_export(checkpoint, tmp_path_factory) -> Path:
    return exporter.export(checkpoint, tmp_path_factory.mktemp("previous") / "out", opset=17, log=None)


@pytest.fixture(scope="module")
def killed(checkpoint, previous_export, tmp_path_factory) -> dict[str, tuple[Killed, Path]]:
    """Every kill point's export (each over its own copy of the previous output) and the calibration, all
    started at once: the kills follow the lines they print, not the clock."""
    runs: dict[str, tuple[Killed, Path]] = {}
    for point, pattern in EXPORT_POINTS.items():
        root = tmp_path_factory.mktemp("killed")
        out = root / "parent" / "out"
        shutil.copytree(previous_export, out)
        args = [sys.executable, "-m", "exporter", "--model", str(checkpoint), "--task", "text-classification",
                "--output", str(out), "--opset", "18"]  # fmt: skip
        run = Killed(args, pattern)
        (root / "tmpdir").mkdir()
        run.env["TMPDIR"] = str(root / "tmpdir")  # where the exporter's own scratch directory goes
        runs[point] = (run, out)
    output = tmp_path_factory.mktemp("calibration") / "calibration.json"
    output.write_text(PREVIOUS_CALIBRATION)
    args = [sys.executable, "-m", "models.quantization.calibrate", "--model", str(checkpoint), "--output",
            str(output), "--num-samples", "32", "--batch-size", "16", "--method", "max"]  # fmt: skip
    runs["calibration"] = (Killed(args, CALIBRATION_PATTERN), output)
    run_all([run for run, _ in runs.values()])
    return runs


@pytest.mark.parametrize("point", list(EXPORT_POINTS))
def test_killed_export_leaves_the_previous_output_intact(killed, previous_export, point):
    run, out = killed[point]
    assert run.killed_on is not None and run.returncode == -signal.SIGKILL, run.lines[-5:]
    before, after = snapshot(previous_export), snapshot(out)
    if point == "at the swap" and after != before:
        # the kill came after the swap: then the new export is there, complete and checked
        assert read_export_info(out).opset == 18 and set(after) == set(before)
    else:
        assert after == before, f"the previous output changed ({point})"
    # nothing visible but the output; hidden leftovers only of the killed process, under the documented names
    parent = out.parent
    assert [p.name for p in parent.iterdir() if not p.name.startswith(".")] == ["out"]
    hidden = leftovers(parent, "out")
    assert all(re.fullmatch(TEMPORARY.format(name="out"), name) for name in hidden), hidden
    if point in ("while writing the directory", "while validating"):
        assert hidden, "killed while its staging directory existed"


def test_the_next_export_cleans_up_after_killed_ones(killed, checkpoint):
    for point in EXPORT_POINTS:
        _, out = killed[point]
        content = snapshot(out)
        age_leftovers(out.parent)
        recover_interrupted(out)  # the first thing an export to `out` does
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and snapshot(out) == content, point
    _, out = killed["while validating"]
    exporter.export(checkpoint, out, opset=18, log=None)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and read_export_info(out).opset == 18


def test_killed_export_leaves_no_scratch_directory_in_the_system_temp_dir(killed):
    run, out = killed["while writing the directory"]
    assert run.returncode == -signal.SIGKILL
    assert not list((out.parent.parent / "tmpdir").glob("onnx-raw-*"))


def test_killed_calibration_leaves_the_previous_file_intact(killed):
    run, output = killed["calibration"]
    assert run.killed_on is not None and run.returncode == -signal.SIGKILL, run.lines[-5:]
    text = output.read_text()
    if text != PREVIOUS_CALIBRATION:  # killed after the rename: then the new file is whole
        assert json.loads(text)["quantizers"]
    assert [p.name for p in output.parent.iterdir() if not p.name.startswith(".")] == ["calibration.json"]
    hidden = leftovers(output.parent, output.name)
    assert all(re.fullmatch(TEMPORARY.format(name=r"calibration\.json"), name) for name in hidden), hidden


# --- fault injection at every rename of the export directory's swap -----------------------------------------

STAGED_CHILD = r"""
import os, signal, sys, types
from pathlib import Path
root, out, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
import exporter.directory as d
import trt_runtime.contract.files as files

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after the exchange":
    exchange = files._exchange
    files._exchange = lambda a, b: exchange(a, b) and die()
else:
    files._exchange = lambda a, b: False  # the fallback: two renames
    rename, calls = os.rename, []
    def renamed(a, b):
        rename(a, b)
        calls.append(b)
        if point == f"after fallback rename {len(calls)}":
            die()
    os.rename = renamed
with d.staged_directory(out) as staging:
    (staging / "export.json").write_text('{"new": true}')
    (staging / "model.onnx").write_bytes(b"new model" * 1000)
    if point == "while writing":
        die()
print("not killed")
"""
NEW = {"export.json": '{"new": true}', "model.onnx": "new model" * 1000}


def _old_output(out: Path) -> dict[str, str]:
    """A real (small, torch-free) export at `out`, the only kind of directory an export replaces or restores."""
    write_export_dir(out, ibert_graph_model())
    return snapshot(out)


def _content(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def _can_exchange(tmp_path: Path) -> bool:
    a, b = tmp_path / "exchange-a", tmp_path / "exchange-b"
    a.mkdir()
    b.mkdir()
    try:
        return _exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


@pytest.mark.parametrize(
    "point", ["while writing", "after the exchange", "after fallback rename 1", "after fallback rename 2"]
)
def test_export_directory_swap_killed_at_each_rename(tmp_path, point):
    if point == "after the exchange" and not _can_exchange(tmp_path):
        pytest.skip("this filesystem cannot exchange directories (renameat2 RENAME_EXCHANGE)")
    out = tmp_path / "parent" / "out"
    old = _old_output(out)
    result = subprocess.run(
        [sys.executable, "-c", STAGED_CHILD, str(ROOT), str(out), point],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    parent = out.parent
    hidden = leftovers(parent, "out")
    assert hidden and all(re.fullmatch(TEMPORARY.format(name="out"), name) for name in hidden), hidden
    if point == "while writing":
        assert snapshot(out) == old
    elif point == "after fallback rename 1":
        # the only moment the output's name is missing: a reader is told so, never given half a directory
        assert not out.exists()
        with pytest.raises(ExportDirError, match="is not a directory"):
            read_export_info(out)
    else:
        assert _content(out) == NEW  # the swap happened: the new output is whole
    age_leftovers(parent)
    recover_interrupted(out)  # what the next export does first
    assert sorted(p.name for p in parent.iterdir()) == ["out"]
    if point in ("after the exchange", "after fallback rename 2"):
        assert _content(out) == NEW
    else:
        assert snapshot(out) == old
