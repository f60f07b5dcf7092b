"""exporter.export with a QuantizationRecipe: the keyword arguments of 0.1 and the command line give the same
export as the recipe (export.json's record, calibration.json, the ONNX graph's bytes), export.json's record
reads back as the recipe, and task synonyms resolve to the canonical task."""

from __future__ import annotations

import json
import warnings

import onnx
import pytest

import exporter
from exporter.__main__ import main
from models.quantization import QuantizationRecipe
from tests.fixtures.tiny_models import MAX_POSITIONS, save_tiny
from tests.fixtures.tiny_tokenizers import save_tiny_tokenizer
from trt_runtime.contract.export_dir import read_export_info

TASK = "text-classification"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory, _ = save_tiny(tmp_path_factory.mktemp("ckpt") / "bert", "bert", TASK)
    return directory


def graph_bytes(out) -> bytes:
    """The graph and its functions; the model's metadata holds export.json, whose `created` differs."""
    model = onnx.load(str(out / "model.onnx"))
    return model.graph.SerializeToString() + b"".join(f.SerializeToString() for f in model.functions)


def same_export(a, b) -> None:
    info_a, info_b = read_export_info(a), read_export_info(b)
    assert info_a.calibration == info_b.calibration
    assert json.loads((a / "calibration.json").read_text()) == json.loads((b / "calibration.json").read_text())
    assert graph_bytes(a) == graph_bytes(b)


CASES = {
    "qdq": (
        QuantizationRecipe(mode="qdq", calibration_method="max", keep_float=("softmax-output",), num_samples=8,
                           batch_size=4),
        {"quantization": "qdq", "calibration_method": "max", "keep_float": ["softmax-output"],
         "num_calibration_samples": 8, "calibration_batch_size": 4, "percentile": 99.9},  # 0.1 ignored it for max
        ["--quantization", "qdq", "--calibration-method", "max", "--keep-float", "softmax-output",
         "--num-calibration-samples", "8", "--calibration-batch-size", "4"],
    ),
    "integer": (
        QuantizationRecipe(mode="integer", force_dequant="gelu", wide_activations=("ffn-output-input",),
                           num_samples=8, batch_size=8, max_length=16),
        {"quantization": "integer", "force_dequant": "gelu", "wide_activations": ("ffn-output-input",),
         "num_calibration_samples": 8, "calibration_batch_size": 8, "calibration_max_length": 16,
         "keep_float": ("residual-adds",)},  # 0.1 ignored qdq's keep_float in integer mode
        ["--quantization", "integer", "--force-dequant", "gelu", "--wide-activations", "ffn-output-input",
         "--num-calibration-samples", "8", "--calibration-batch-size", "8", "--calibration-max-length", "16"],
    ),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_keywords_command_line_and_recipe_give_one_export(tmp_path, checkpoint, mode):
    recipe, keywords, flags = CASES[mode]
    by_recipe = exporter.export(checkpoint, tmp_path / "recipe", task=TASK, recipe=recipe, validate=False, log=None)
    with pytest.warns(DeprecationWarning, match="are deprecated: pass recipe="):
        by_keywords = exporter.export(checkpoint, tmp_path / "keywords", task=TASK, validate=False, log=None, **keywords)
    argv = ["--model", str(checkpoint), "--output", str(tmp_path / "cli"), "--task", TASK, "--no-validate", "--quiet"]
    assert main(argv + flags) == 0
    same_export(by_recipe, by_keywords)
    same_export(by_recipe, tmp_path / "cli")

    # export.json's record is the recipe as applied: it reads back as the recipe that makes this export again
    record = read_export_info(by_recipe).calibration
    assert record["mode"] == mode and record["data"] == "generated token ids (the checkpoint has no tokenizer)"
    assert QuantizationRecipe.from_dict(record) == recipe.fitted(MAX_POSITIONS)
    assert json.loads((by_recipe / "calibration.json").read_text())["recipe"] == record


def test_the_documented_call_warns_nothing_and_records_the_default_recipe(tmp_path):
    """DESIGN.md's `exporter.export(ckpt, out, task=..., quantization="qdq", calibration_data=...,
    calibration_method=...)`: no warning; every other setting is the recipe's default."""
    directory, _ = save_tiny(tmp_path / "ckpt", "bert", TASK)
    save_tiny_tokenizer(directory, "bert")
    data = tmp_path / "texts.txt"
    data.write_text("the movie was good\nthe film was bad\tnot good\nwhat a great day\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        out = exporter.export(directory, tmp_path / "out", task=TASK, quantization="qdq", calibration_data=data,
                              calibration_method="percentile", validate=False, log=None)
    record = read_export_info(out).calibration
    expected = QuantizationRecipe(mode="qdq", calibration_data=data, num_samples=3, max_length=MAX_POSITIONS)
    assert QuantizationRecipe.from_dict(record) == expected
    assert record["data"] == str(data) and record["keep_float"] == ["residual-adds", "conv-ffn-output-input"]
    assert record["smoothing"] == "auto"
    # a mode name stands for its default recipe; the float default has no record at all
    assert read_export_info(exporter.export(directory, tmp_path / "float", TASK, "none", validate=False,
                                            log=None)).calibration is None


def test_recipe_and_keywords_do_not_mix(tmp_path, checkpoint):
    recipe = QuantizationRecipe.default("qdq")
    with pytest.raises(exporter.ExportError, match="either as recipe= or as keyword arguments, not both"):
        exporter.export(checkpoint, tmp_path / "out", recipe=recipe, calibration_method="max", log=None)
    with pytest.raises(exporter.ExportError, match="recipe='qdq' and quantization='integer' disagree"):
        exporter.export(checkpoint, tmp_path / "out", recipe="qdq", quantization="integer", log=None)
    with pytest.raises(exporter.ExportError, match="unknown quantization 'int8'"):
        exporter.export(checkpoint, tmp_path / "out", recipe="int8", log=None)
    with pytest.raises(TypeError, match="unexpected keyword argument.*calibrator"):
        exporter.export(checkpoint, tmp_path / "out", calibrator="max", log=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["sequence-classification", "sentiment-analysis", "zero-shot-classification", "auto"])
def test_task_synonyms_export_the_canonical_task(tmp_path, checkpoint, task):
    out = exporter.export(checkpoint, tmp_path / "api", task=task, validate=False, log=None)
    assert read_export_info(out).task == TASK  # "auto": config.json's BertForSequenceClassification
    argv = ["--model", str(checkpoint), "--output", str(tmp_path / "cli"), "--task", task, "--no-validate", "--quiet"]
    assert main(argv) == 0
    assert read_export_info(tmp_path / "cli").task == TASK
    assert graph_bytes(out) == graph_bytes(tmp_path / "cli")


def test_command_line_argument_errors_exit_2_before_any_work(tmp_path, checkpoint, capsys):
    base = ["--model", str(checkpoint), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        main([*base, "--task", "summarization"])  # optimum's, but text2text-generation: not an encoder task
    assert exited.value.code == 2
    assert "argument --task: unknown task 'summarization'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*base, "--opset", "11"])
    assert exited.value.code == 2 and "opset 11 is not supported; choose 17 to 20" in capsys.readouterr().err
    assert main([*base, "--quantization", "qdq", "--percentile", "101"]) == 2
    assert capsys.readouterr().err.startswith("error: percentile must be in (0, 100], got 101.0")
    assert main([*base, "--quantization", "integer", "--quantize-all"]) == 2
    assert "--quantize-all applies to --quantization qdq only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
