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
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(minilm_dir) / name).exists():
            shutil.copy2(Path(minilm_dir) / name, out / name)
    return out


def run(base: Path, root: Path, *extra: str) -> dict:
    code = main(
        [
            "--base",
            str(base),
            "--cache",
            str(root / "cache"),
            "--results",
            str(root / "results"),
            "--doc",
            str(root / "eval.md"),
            "--test-limit",
            str(TEST_LIMIT),
            "--quiet",
            "--set",
            "train_samples=64",
            "--set",
            "qat_samples=32",
            "--set",
            "integer_qat_samples=16",
            "--set",
            "dev_samples=32",
            "--set",
            "calibration_samples=16",
            "--set",
            "bootstrap_resamples=50",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((root / "results" / "eval-vader.json").read_text())


def stored(root: Path, task: str, variant: str, runtime: str) -> np.ndarray:
    with np.load(root / "cache" / task / "predictions" / f"{variant}.{runtime}.test.npz") as data:
        return np.asarray(data["scores"])


def test_every_stage_runs_scores_match_the_predictions_and_a_rerun_reuses_them(tiny_base, tmp_path, capsys):
    options = (
        "--tasks",
        "binary",
        "--calibrators",
        "max",
        "percentile-99.99",
        "--no-sensitivity",
        "--pytorch",
        "--exported-graph",
        "chosen",
    )
    results = run(tiny_base, tmp_path, *options)
    binary = results["tasks"]["binary"]
    best = binary["dev_analysis"]["best_calibrator"]
    assert best in ("max", "percentile-99.99")
    assert [row["variant"] for row in binary["rows"]] == [
        "float",
        "ptq-max",
        "ptq-percentile-99.99",
        f"ptq-{best}-unsmoothed",
        f"ptq-{best}-all-sites",
        f"qat-{best}",
        "integer-ptq",
        "integer-qat",
    ]
    assert [row["quantization"] for row in binary["rows"]] == [
        "none",
        "qdq",
        "qdq",
        "qdq",
        "qdq",
        "qdq",
        "integer",
        "integer",
    ]
    # the unsmoothed row is the placement before smoothing: the FFN output projection's input float too
    unsmoothed = {row["variant"]: row for row in binary["rows"]}[f"ptq-{best}-unsmoothed"]
    assert unsmoothed["recipe"]["smoothing"] == "none"
    assert unsmoothed["keep_float"] == ["residual-adds", "ffn-output-input"]

    # the JSON's numbers are the metrics of the stored predictions, recomputed independently
    labels = examples(TASKS["binary"], "test", limit=TEST_LIMIT).targets.tolist()
    for row in binary["rows"]:
        for runtime in ("onnxruntime", "pytorch"):
            predicted = (stored(tmp_path, "binary", row["variant"], runtime) > 0.5).astype(int).tolist()
            accuracy = sum(a == b for a, b in zip(labels, predicted)) / len(labels)
            assert row[runtime]["accuracy"] == pytest.approx(accuracy, abs=1e-12)

    # which graph ran: on the CPU the pipeline runs a qdq export as the derived INT8 graph, an integer or
    # float export as exported or as its own derived graph (the CPU integer / fused float graph); the exported
    # Q/DQ graph is run too for the dev-chosen calibrator and QAT
    rows = {row["variant"]: row for row in binary["rows"]}
    for name, row in rows.items():
        runtime = row["onnxruntime"]["runtime"]
        assert ("CPU INT8" in runtime["graph_reason"]) == (row["quantization"] == "qdq"), (name, runtime)
        assert (runtime["graph_kind"] == "cpu-int8") == (row["quantization"] == "qdq"), (name, runtime)
    exported = {name for name, row in rows.items() if "onnxruntime_exported" in row}
    assert exported == {f"ptq-{best}", f"qat-{best}"}
    for name in exported:
        column = rows[name]["onnxruntime_exported"]
        assert column["runtime"]["graph"] == "model.onnx" and column["runtime"]["graph_option"] == "exported"
        predicted = (stored(tmp_path, "binary", name, "onnxruntime-exported") > 0.5).astype(int).tolist()
        assert column["accuracy"] == pytest.approx(
            sum(a == b for a, b in zip(labels, predicted)) / len(labels)
        )
        # its reference is float on ONNX Runtime: the change is the difference of the two accuracies
        expected = column["accuracy"] - rows["float"]["onnxruntime"]["accuracy"]
        assert column["change_vs_float"]["accuracy"]["delta"] == pytest.approx(expected, abs=1e-12)

    # the goal check: the best default-site PTQ row on test, its change in points, and QAT's interval
    goals = binary["goals"]
    ptq_accuracy = {
        name: rows[name]["onnxruntime"]["accuracy"] for name in ("ptq-max", "ptq-percentile-99.99")
    }
    top = max(ptq_accuracy, key=ptq_accuracy.__getitem__)
    float_accuracy = rows["float"]["onnxruntime"]["accuracy"]
    best_ptq = goals["best_ptq_within_0.5_cpu_graph"]  # with --exported-graph chosen, on the CPU graph only
    assert "best_ptq_within_0.5" not in goals
    assert best_ptq["delta"] == pytest.approx(100 * (ptq_accuracy[top] - float_accuracy))
    assert best_ptq["met"] == (100 * (ptq_accuracy[top] - float_accuracy) >= -0.5)
    qat = rows[f"qat-{best}"]["onnxruntime"]["change_vs_float"]["accuracy"]
    assert goals["qat_no_worse_than_float"]["met"] == (qat["ci_high"] >= 0)

    # the runtime's answers are the same model's: float ONNX Runtime == float PyTorch, sentence by sentence
    np.testing.assert_allclose(
        stored(tmp_path, "binary", "float", "onnxruntime"),
        stored(tmp_path, "binary", "float", "pytorch"),
        atol=1e-5,
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
    # every stage is reported as reused, with the wall time it took when it was made (the cold-run cost)
    assert all(stage["reused"] for stage in again["tasks"]["binary"]["timings"].values())
    assert not any(stage["reused"] for stage in binary["timings"].values())
    assert again["tasks"]["binary"]["timings"] == {
        name: {**stage, "reused": True} for name, stage in binary["timings"].items()
    }
    assert again["stage_seconds_total"] == results["stage_seconds_total"]
    assert [r["onnxruntime"] for r in again["tasks"]["binary"]["rows"]] == [
        r["onnxruntime"] for r in binary["rows"]
    ]


def test_regression_scores_and_per_layer_sensitivity(tiny_base, tmp_path):
    results = run(
        tiny_base,
        tmp_path,
        "--tasks",
        "regression",
        "--calibrators",
        "max",
        "--no-qat",
        "--no-integer",
        "--pytorch",
        "--exported-graph",
        "none",
    )
    regression = results["tasks"]["regression"]
    assert not any("onnxruntime_exported" in row for row in regression["rows"])  # --exported-graph none
    scores = examples(TASKS["regression"], "test", limit=TEST_LIMIT).targets
    for row in regression["rows"]:
        for runtime in ("onnxruntime", "pytorch"):
            predicted = stored(tmp_path, "regression", row["variant"], runtime)
            assert row[runtime]["pearson"] == pytest.approx(
                stats.pearsonr(scores, predicted).statistic, abs=1e-9
            )
            assert row[runtime]["spearman"] == pytest.approx(
                stats.spearmanr(scores, predicted).statistic, abs=1e-9
            )
            rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(scores, predicted)) / len(scores))
            assert row[runtime]["rmse"] == pytest.approx(rmse, abs=1e-9)
    # regression outputs are the raw score (no softmax), the same in both runtimes
    np.testing.assert_allclose(
        stored(tmp_path, "regression", "float", "onnxruntime"),
        stored(tmp_path, "regression", "float", "pytorch"),
        atol=1e-5,
    )

    sensitivity = regression["dev_analysis"]["sensitivity"]
    assert [row["layer"] for row in sensitivity["layers"]] == ["layer 0", "layer 1"]
    for row in sensitivity["layers"]:
        # every site of a BERT layer: 20 quantizers; the exporter's default leaves its 4 residual-add inputs float
        assert row["every site"]["quantizers"] == 20
        assert row["default sites"]["quantizers"] == 16
        assert row["every site"]["rms_change"] > 0
    assert (tmp_path / "results" / "eval-vader-layers.png").read_bytes()[:4] == b"\x89PNG"


def test_outputs_inside_the_checkpoint_are_refused_before_any_work(tmp_path, capsys):
    """The stage cache and the results are written; inside the checkpoint they would change what they are made
    from (issue 21's output guards): exit 2, naming both, nothing written."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    for flag in ("--cache", "--results"):
        code = main(["--base", str(checkpoint), flag, str(checkpoint / "out"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"{flag} {checkpoint / 'out'} lies inside the input --base {checkpoint}" in err
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json"]
