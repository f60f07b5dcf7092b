"""benchmarks/eval end to end on a tiny random BERT (the real tokenizer, the real corpus): every stage runs,
the numbers in the JSON are the metrics of the stored predictions, and a second run reuses every stage.

The full `make eval` (all-MiniLM-L6-v2, ~20 minutes) is a script, not a test.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from benchmarks.eval.__main__ import main
from benchmarks.eval.report import TABLE_BEGIN, TABLE_END
from benchmarks.eval.tasks import TASKS, examples

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TEST_LIMIT = 24


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, 32-wide BERT with random weights and all-MiniLM-L6-v2's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(minilm_dir) / name).exists():
            shutil.copy2(Path(minilm_dir) / name, out / name)
    return out


def run(base: Path, root: Path, *extra: str) -> dict:
    code = main([
        "--base", str(base), "--cache", str(root / "cache"), "--results", str(root / "results"),
        "--doc", str(root / "eval.md"), "--test-limit", str(TEST_LIMIT), "--quiet",
        "--set", "train_samples=64", "--set", "qat_samples=32", "--set", "integer_qat_samples=16",
        "--set", "dev_samples=32", "--set", "calibration_samples=16", "--set", "bootstrap_resamples=50",
        *extra,
    ])
    assert code == 0
    return json.loads((root / "results" / "eval-vader.json").read_text())


def stored(root: Path, task: str, variant: str, runtime: str) -> np.ndarray:
    with np.load(root / "cache" / task / "predictions" / f"{variant}.{runtime}.test.npz") as data:
        return np.asarray(data["scores"])


def test_every_stage_runs_scores_match_the_predictions_and_a_rerun_reuses_them(tiny_base, tmp_path, capsys):
    options = ("--tasks", "binary", "--calibrators", "max", "percentile-99.99", "--no-sensitivity")
    results = run(tiny_base, tmp_path, *options)
    binary = results["tasks"]["binary"]
    best = binary["dev_analysis"]["best_calibrator"]
    assert best in ("max", "percentile-99.99")
    assert [row["variant"] for row in binary["rows"]] == [
        "float", "ptq-max", "ptq-percentile-99.99", f"ptq-{best}-all-sites", f"qat-{best}", "integer-ptq",
        "integer-qat",
    ]
    assert [row["quantization"] for row in binary["rows"]] == ["none", "qdq", "qdq", "qdq", "qdq", "integer", "integer"]

    # the JSON's numbers are the metrics of the stored predictions, recomputed independently
    labels = examples(TASKS["binary"], "test", limit=TEST_LIMIT).targets.tolist()
    for row in binary["rows"]:
        for runtime in ("onnxruntime", "pytorch"):
            predicted = (stored(tmp_path, "binary", row["variant"], runtime) > 0.5).astype(int).tolist()
            accuracy = sum(a == b for a, b in zip(labels, predicted)) / len(labels)
            assert row[runtime]["accuracy"] == pytest.approx(accuracy, abs=1e-12)

    # the runtime's answers are the same model's: float ONNX Runtime == float PyTorch, sentence by sentence
    np.testing.assert_allclose(
        stored(tmp_path, "binary", "float", "onnxruntime"), stored(tmp_path, "binary", "float", "pytorch"), atol=1e-5
    )
    change = binary["rows"][0]["onnxruntime"]["change_vs_float"]["accuracy"]
    assert (change["delta"], change["ci_low"], change["ci_high"]) == (0.0, 0.0, 0.0)

    # outputs: the doc's table block and the plot
    doc = (tmp_path / "eval.md").read_text()
    assert doc.count(TABLE_BEGIN) == 1 and doc.count(TABLE_END) == 1
    assert "| I-BERT integer, QAT |" in doc
    assert (tmp_path / "results" / "eval-vader.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run reuses every stage and gives the same table
    capsys.readouterr()
    again = run(tiny_base, tmp_path, *options)
    out = capsys.readouterr().out
    for made in ("  fine-tuning", "  QAT (", "  integer-mode QAT", "  exporting"):
        assert made not in out
    assert len(again["reused"]) == len(binary["rows"])
    assert [r["onnxruntime"] for r in again["tasks"]["binary"]["rows"]] == [r["onnxruntime"] for r in binary["rows"]]


def test_regression_scores_and_per_layer_sensitivity(tiny_base, tmp_path):
    results = run(tiny_base, tmp_path, "--tasks", "regression", "--calibrators", "max", "--no-qat", "--no-integer")
    regression = results["tasks"]["regression"]
    scores = examples(TASKS["regression"], "test", limit=TEST_LIMIT).targets
    for row in regression["rows"]:
        for runtime in ("onnxruntime", "pytorch"):
            predicted = stored(tmp_path, "regression", row["variant"], runtime)
            assert row[runtime]["pearson"] == pytest.approx(stats.pearsonr(scores, predicted).statistic, abs=1e-9)
            assert row[runtime]["spearman"] == pytest.approx(stats.spearmanr(scores, predicted).statistic, abs=1e-9)
            rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(scores, predicted)) / len(scores))
            assert row[runtime]["rmse"] == pytest.approx(rmse, abs=1e-9)
    # regression outputs are the raw score (no softmax), the same in both runtimes
    np.testing.assert_allclose(
        stored(tmp_path, "regression", "float", "onnxruntime"), stored(tmp_path, "regression", "float", "pytorch"),
        atol=1e-5,
    )

    sensitivity = regression["dev_analysis"]["sensitivity"]
    assert [row["layer"] for row in sensitivity["layers"]] == ["layer 0", "layer 1"]
    for row in sensitivity["layers"]:
        # every site of a BERT layer: 20 quantizers; the exporter's default leaves 5 of them float
        assert row["every site"]["quantizers"] == 20
        assert row["default sites"]["quantizers"] == 15
        assert row["every site"]["rms_change"] > 0
    assert (tmp_path / "results" / "eval-vader-layers.png").read_bytes()[:4] == b"\x89PNG"
