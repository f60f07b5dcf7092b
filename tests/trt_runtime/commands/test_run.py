"""`python -m trt_runtime run`: JSON on stdout that matches transformers' pipelines, errors on stderr with exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import NER_LABELS, assert_results_close, hf_pipeline, tiny_export
from trt_runtime.loader import cpu_backends

TEXTS = ["John lives in Paris, the capital of France!", "the movie was bad"]


def run(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "trt_runtime", "run", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_text_classification_matches_transformers():
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    theirs = hf_pipeline("text-classification", checkpoint)
    result = run(str(export_dir), *TEXTS)
    assert result.returncode == 0, result.stderr
    assert_results_close(json.loads(result.stdout), theirs(TEXTS))
    # the CPU backend of loader.CPU_BACKENDS installed here, and why not TensorRT
    assert f"backend: {cpu_backends('none')[0]} (" in result.stderr and "no TensorRT engine" in result.stderr
    # options may come before or after DIR and between texts
    result = run("--top-k", "2", str(export_dir), TEXTS[0], "--function-to-apply", "sigmoid", TEXTS[1])
    assert result.returncode == 0, result.stderr
    assert_results_close(json.loads(result.stdout), theirs(TEXTS, top_k=2, function_to_apply="sigmoid"))


def test_texts_from_stdin_and_token_classification():
    checkpoint, export_dir = tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)
    result = run(str(export_dir), "--aggregation-strategy", "first", stdin="\n".join(TEXTS) + "\n\n")
    assert result.returncode == 0, result.stderr
    assert_results_close(
        json.loads(result.stdout),
        hf_pipeline("token-classification", checkpoint)(TEXTS, aggregation_strategy="first"),
    )


def test_question_answering_answers_come_from_the_context():
    _, export_dir = tiny_export("bert", "question-answering", sharpen=4.0)
    context = "John lives in Paris, the capital of France."
    result = run(str(export_dir), "--question", "Where does John live?", context, "--top-k", "2")
    assert result.returncode == 0, result.stderr
    (answers,) = json.loads(result.stdout)
    assert len(answers) == 2 and all(context[a["start"] : a["end"]] == a["answer"] for a in answers)


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        (
            ["--pooling", "mean", "a good day"],
            None,
            "error: unknown option\\(s\\) pooling for the text-classification pipeline",
        ),
        (
            ["--task", "fill-mask", "a good day"],
            None,
            "error: pipeline\\('fill-mask'\\) needs a fill-mask export",
        ),
        (["--backend", "tensorrt", "a good day"], None, "error: backend='tensorrt' cannot run here"),
        ([], "   \n", "error: no TEXT given"),
        (["--text-pair", "b", "a", "c"], None, "error: 2 TEXT\\(s\\) but 1 --text-pair"),
        (["a", " "], None, "error: input 1 is empty or only whitespace"),
    ],
)
def test_errors_exit_2_with_the_reason(arguments, stdin, message):
    export_dir = tiny_export("bert", "text-classification", sharpen=20.0)[1]
    result = run(str(export_dir), *arguments, stdin=stdin)
    assert result.returncode == 2 and result.stdout == ""
    assert re.search(message, result.stderr), result.stderr


def test_not_an_export_directory(tmp_path):
    result = run(str(tmp_path), "text")
    assert result.returncode == 2 and "is not an export directory" in result.stderr
