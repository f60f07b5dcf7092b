"""benchmarks/eval: the tasks and splits (checked against the raw TSV files), recipe keys, the report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.eval.__main__ import recipe_from
from benchmarks.eval.recipe import FLOAT_FIELDS, Recipe, ptq_variants
from benchmarks.eval.report import TABLE_BEGIN, TABLE_END, markdown_table, update_doc
from benchmarks.eval.tasks import TASKS, examples, training_batches
from models.data import CALIBRATION_FILE, LABELLED_DIR, SOURCES, normalize, split_of


def raw_rows() -> list[tuple[str, float, str]]:
    """(source, score, text) straight from the shipped TSV files."""
    rows = []
    for source in SOURCES:
        with open(LABELLED_DIR / f"{source}.tsv", encoding="utf-8", newline="") as f:
            for _, score, text in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                rows.append((source, float(score), text))
    return rows


def test_binary_test_split_drops_neutral_and_labels_by_sign():
    test = [r for r in raw_rows() if split_of(r[2]) == "test"]
    binary = examples(TASKS["binary"], "test")
    kept = [r for r in test if r[1] != 0.0]
    assert len(binary) == len(kept) == len(test) - sum(r[1] == 0.0 for r in test)
    assert list(binary.texts) == [r[2] for r in kept]
    np.testing.assert_array_equal(binary.targets, [int(r[1] > 0) for r in kept])
    assert binary.targets.dtype == np.int64
    assert 2000 < len(binary) < 2600  # ~10 % of the 23,703 sentences


def test_regression_keeps_every_sentence_with_its_score():
    test = [r for r in raw_rows() if split_of(r[2]) == "test"]
    regression = examples(TASKS["regression"], "test")
    assert len(regression) == len(test)
    np.testing.assert_array_equal(regression.targets, [r[1] for r in test])
    assert regression.targets.min() >= -4 and regression.targets.max() <= 4


def test_evaluation_splits_never_share_text_with_calibration_or_each_other():
    calibration = {
        normalize(line) for line in CALIBRATION_FILE.read_text(encoding="utf-8").splitlines() if line.strip()
    }
    splits = {
        name: {normalize(t) for t in examples(TASKS["regression"], name).texts}
        for name in ("train", "dev", "test")
    }
    assert len(calibration) > 900
    for name, texts in splits.items():
        assert not texts & calibration, name
    assert not splits["train"] & splits["test"]
    assert not splits["dev"] & splits["test"]
    assert not splits["train"] & splits["dev"]


def test_a_limited_sample_is_seeded_and_from_its_split():
    task = TASKS["binary"]
    a, b = examples(task, "train", limit=100, seed=0), examples(task, "train", limit=100, seed=0)
    assert a.texts == b.texts and a.digest() == b.digest()
    assert examples(task, "train", limit=100, seed=1).texts != a.texts
    assert all(split_of(t) == "train" for t in a.texts)
    with pytest.raises(ValueError, match="unknown split"):
        examples(task, "validation")


def test_training_batches_are_length_bucketed_with_the_task_dtype(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    for name, dtype in (("binary", "torch.int64"), ("regression", "torch.float32")):
        data = examples(TASKS[name], "dev", limit=96)
        batches = training_batches(TASKS[name], data, tokenizer, batch_size=32, max_length=64)
        assert [len(b["labels"]) for b in batches] == [32, 32, 32]
        assert str(batches[0]["labels"].dtype) == dtype
        lengths = [int(b["attention_mask"].sum(dim=1).max()) for b in batches]
        assert lengths == sorted(lengths)
        widths = [int(b["attention_mask"].sum(dim=1).min()) for b in batches]
        assert widths[1] >= lengths[0]  # the second batch starts where the first ended


def test_recipe_keys_follow_the_fields_that_went_in():
    base = Recipe()
    assert base.key(*FLOAT_FIELDS) == Recipe().key(*FLOAT_FIELDS)
    assert base.key(*FLOAT_FIELDS) != Recipe(train_samples=10).key(*FLOAT_FIELDS)
    assert base.key(*FLOAT_FIELDS) == Recipe(qat_samples=10).key(
        *FLOAT_FIELDS
    )  # QAT settings do not retrain float
    assert base.key(*FLOAT_FIELDS, extra={"task": "binary"}) != base.key(
        *FLOAT_FIELDS, extra={"task": "regression"}
    )


def test_recipe_overrides_from_the_command_line():
    recipe = recipe_from(["train_samples=64", "learning_rate=3e-5", "freeze_word_embeddings=false"])
    assert (recipe.train_samples, recipe.learning_rate, recipe.freeze_word_embeddings) == (64, 3e-5, False)
    for bad in ("nope=1", "train_samples", "train_samples=many", "freeze_word_embeddings=maybe"):
        with pytest.raises(SystemExit):
            recipe_from([bad])


def test_ptq_variants_cover_every_calibrator_or_those_named():
    assert [v.name for v in ptq_variants()] == [
        "ptq-max",
        "ptq-percentile-99.9",
        "ptq-percentile-99.99",
        "ptq-percentile-99.999",
        "ptq-mse",
        "ptq-entropy",
    ]
    assert [(v.method, v.percentile) for v in ptq_variants(["percentile-99.99"])] == [("percentile", 99.99)]


def test_doc_block_is_replaced_and_prose_kept(tmp_path: Path):
    doc = tmp_path / "eval.md"
    doc.write_text(f"# Title\n\nprose before\n\n{TABLE_BEGIN}\nold table\n{TABLE_END}\n\nprose after\n")
    updated = update_doc(doc, f"{TABLE_BEGIN}\nnew table\n{TABLE_END}")
    assert updated == f"# Title\n\nprose before\n\n{TABLE_BEGIN}\nnew table\n{TABLE_END}\n\nprose after\n"
    missing = tmp_path / "none.md"
    assert update_doc(missing, f"{TABLE_BEGIN}\nx\n{TABLE_END}").endswith(f"{TABLE_END}\n")


def test_markdown_table_formats_points_intervals_and_the_graph_that_ran():
    change = {"delta": -0.0043, "ci_low": -0.0091, "ci_high": 0.0004}
    derived = {"graph_kind": "cpu-int8", "graph": "cpu-int8-x.onnx"}
    rows = [
        {
            "title": "float (FP32)",
            "group": "float",
            "onnxruntime": {"accuracy": 0.9, "f1": 0.91, "runtime": {"graph_kind": "exported"}},
        },
        {
            "title": "PTQ max",
            "group": "ptq",
            "onnxruntime": {
                "accuracy": 0.8957,
                "f1": 0.905,
                "change_vs_float": {"accuracy": change, "f1": change},
                "runtime": derived,
            },
            "onnxruntime_exported": {"accuracy": 0.8957, "change_vs_float": {"accuracy": change}},
        },
    ]
    integer = {"graph_kind": "cpu-integer", "graph": "cpu-integer-1.32.0-v1-u8s8.onnx"}
    rows.append({
        "title": "I-BERT integer, PTQ", "group": "integer",
        "onnxruntime": {"accuracy": 0.9, "f1": 0.91, "change_vs_float": {"accuracy": change, "f1": change},
                        "runtime": integer},
    })
    table = markdown_table("binary", {"metrics": ["accuracy", "f1"], "rows": rows}).splitlines()
    assert len(table) == 5
    assert table[4].startswith("| I-BERT integer, PTQ | CPU integer | 90.0 |")
    assert table[0].count("|") == 8  # model, graph, 2 x (metric, change), exported-graph change
    assert "PyTorch" not in table[0]  # a column only when some row has it
    assert table[2] == "| float (FP32) | exported | 90.0 | (reference) | 91.0 | (reference) | (reference) |"
    assert table[3] == (
        "| PTQ max | CPU INT8 | 89.6 | -0.4 [-0.9, +0.0] | 90.5 | -0.4 [-0.9, +0.0] | -0.4 [-0.9, +0.0] |"
    )


def test_every_derived_cpu_graph_has_a_table_label():
    from benchmarks.eval.report import DERIVED_GRAPH_LABELS, graph_ran
    from trt_runtime.backends.onnxruntime.graphs import CPU_GRAPHS

    assert set(DERIVED_GRAPH_LABELS) == set(CPU_GRAPHS)
    assert graph_ran({"onnxruntime": {"runtime": {"graph_reason": "the CPU INT8 graph ..."}}}) == "(not recorded)"


def test_markdown_table_regression_shows_every_metric_rmse_in_score_units():
    change = {"delta": 0.0123, "ci_low": -0.001, "ci_high": 0.0251}
    rows = [
        {
            "title": "I-BERT integer, PTQ",
            "group": "integer",
            "onnxruntime": {
                "pearson": 0.81234,
                "spearman": 0.8,
                "rmse": 1.2345,
                "change_vs_float": {"pearson": change, "spearman": change, "rmse": change},
                "runtime": {"graph_kind": "exported"},
            },
        }
    ]
    table = markdown_table(
        "regression", {"metrics": ["pearson", "spearman", "rmse"], "rows": rows}
    ).splitlines()
    assert table[2] == (
        "| I-BERT integer, PTQ | exported | 81.2 | +1.2 [-0.1, +2.5] | 80.0 | +1.2 [-0.1, +2.5] "
        "| 1.23 | +0.012 [-0.001, +0.025] |"
    )
