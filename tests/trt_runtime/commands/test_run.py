"""`python -m trt_runtime run`: JSON Lines on stdout (one result per text, streamed) that match transformers'
pipelines, errors on stderr naming the flags, with exit 2."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys

import pytest

from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import NER_LABELS, assert_results_close, hf_pipeline, tiny_export
from trt_runtime.loader import cpu_backends

TEXTS = ["John lives in Paris, the capital of France!", "the movie was bad"]


def json_lines(stdout: str) -> list:
    lines = stdout.splitlines()
    assert lines and all(line.strip() for line in lines), stdout
    return [json.loads(line) for line in lines]


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
    assert_results_close(json_lines(result.stdout), theirs(TEXTS))
    # the CPU backend of loader.CPU_BACKENDS installed here, and why not TensorRT
    assert f"backend: {cpu_backends('none')[0]} (" in result.stderr and "no TensorRT engine" in result.stderr
    # options may come before or after DIR and between texts
    result = run("--top-k", "2", str(export_dir), TEXTS[0], "--function-to-apply", "sigmoid", TEXTS[1])
    assert result.returncode == 0, result.stderr
    assert_results_close(json_lines(result.stdout), theirs(TEXTS, top_k=2, function_to_apply="sigmoid"))


def test_texts_from_stdin_and_token_classification():
    checkpoint, export_dir = tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)
    result = run(str(export_dir), "--aggregation-strategy", "first", stdin="\n".join(TEXTS) + "\n\n")
    assert result.returncode == 0, result.stderr
    assert_results_close(
        json_lines(result.stdout),
        hf_pipeline("token-classification", checkpoint)(TEXTS, aggregation_strategy="first"),
    )


def test_question_answering_answers_come_from_the_context():
    _, export_dir = tiny_export("bert", "question-answering", sharpen=4.0)
    context = "John lives in Paris, the capital of France."
    result = run(str(export_dir), "--question", "Where does John live?", context, "--top-k", "2")
    assert result.returncode == 0, result.stderr
    (answers,) = json_lines(result.stdout)
    assert len(answers) == 2 and all(context[a["start"] : a["end"]] == a["answer"] for a in answers)


@pytest.mark.parametrize(
    ("arguments", "stdin", "message"),
    [
        (
            ["--pooling", "mean", "a good day"],
            None,
            "error: --pooling: not an option of the text-classification pipeline; it takes --top-k/--all-labels, "
            "--function-to-apply",
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--top-k", "0", "a"], "argument --top-k: must be a positive integer, got 0"),
        (["--batch-size", "two", "a"], "argument --batch-size: invalid positive_int value: 'two'"),
        (["--normalize", "a"], "--normalize: not an option of the text-classification pipeline"),
        (["a", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_option_errors_name_the_flags(arguments, message):
    export_dir = tiny_export("bert", "text-classification", sharpen=20.0)[1]
    result = run(str(export_dir), *arguments)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "top_k" not in result.stderr, result.stderr


def test_double_dash_ends_the_options():
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    theirs = hf_pipeline("text-classification", checkpoint)
    texts = ["-5 degrees and snow", "--top-k", "a plain text"]
    result = run("--top-k", "2", str(export_dir), "--", *texts)
    assert result.returncode == 0, result.stderr
    assert_results_close(json_lines(result.stdout), theirs(texts, top_k=2))
    result = run("--", str(export_dir), *texts)  # DIR after `--` too
    assert result.returncode == 0, result.stderr
    assert_results_close(json_lines(result.stdout), theirs(texts))


def test_results_stream_one_line_per_input_as_stdin_arrives():
    """With --batch-size 1 each line's result comes out before the next line is written (no EOF needed)."""
    checkpoint, export_dir = tiny_export("bert", "text-classification", sharpen=20.0)
    theirs = hf_pipeline("text-classification", checkpoint)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "trt_runtime", "run", str(export_dir), "--batch-size", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        got = []
        for text in TEXTS:
            process.stdin.write(text + "\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 120)
            assert ready, "no result before the next input was written"
            got.append(json.loads(process.stdout.readline()))
        process.stdin.close()
        assert process.wait(timeout=60) == 0 and process.stdout.read() == ""
    assert_results_close(got, theirs(TEXTS))
