"""Task pipelines: `pipeline(task, dir)` -> a callable: text in, what a Hugging Face pipeline returns out.

    clf = pipeline("text-classification", "exports/sst2")        # backend="auto": TensorRT or ONNX Runtime
    clf("a great movie")                                          # [{"label": "POSITIVE", "score": 0.99}]
    embed = pipeline("feature-extraction", "exports/minilm", pooling="mean", normalize=True)

One module per task; tokenization, batching and running are shared (pipelines/base.py), and all
post-processing is NumPy, so both backends give the same results.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from trt_runtime.contract.export_dir import read_export_info
from trt_runtime.pipelines.base import Pipeline, task_mismatch

#: task -> "module:class" under trt_runtime.pipelines
PIPELINES = {
    "text-classification": "text_classification:TextClassificationPipeline",
    "token-classification": "token_classification:TokenClassificationPipeline",
    "question-answering": "question_answering:QuestionAnsweringPipeline",
    "fill-mask": "fill_mask:FillMaskPipeline",
    "multiple-choice": "multiple_choice:MultipleChoicePipeline",
    "feature-extraction": "feature_extraction:FeatureExtractionPipeline",
    "next-sentence-prediction": "next_sentence_prediction:NextSentencePredictionPipeline",
}
#: transformers' other names for the same tasks
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
NOT_A_PIPELINE = {
    "text-generation": (
        "text-generation is not served as a pipeline: the export is an encoder with a causal LM head run "
        "once over the whole input (no generation loop, no KV cache). Use trt_runtime.load(dir) and read "
        "the runner's `logits` [batch, tokens, vocab] (the next-token scores of every position)"
    ),
}

__all__ = ["PIPELINES", "Pipeline", "pipeline", "pipeline_class"]


def pipeline_class(task: str) -> type[Pipeline]:
    task = ALIASES.get(task, task)
    if task in NOT_A_PIPELINE:
        raise ValueError(NOT_A_PIPELINE[task])
    if task not in PIPELINES:
        raise ValueError(f"unknown task {task!r}; pipelines exist for {', '.join(PIPELINES)}")
    module, name = PIPELINES[task].split(":")
    cls: type[Pipeline] = getattr(importlib.import_module(f"trt_runtime.pipelines.{module}"), name)
    return cls


def pipeline(
    task: str | None = None,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    *,
    batch_size: int | None = None,
    directory: str | os.PathLike | None = None,
    **options: Any,
) -> Pipeline:
    """A pipeline for `task` (None: export.json's task) over the export directory `model`, called as
    transformers' `pipeline(task, model=...)` is (`directory=` is the same argument by its older name).

    batch_size: rows per model run (None: DEFAULT_BATCH_SIZE, and more rows for short texts by the token
    budget `max_batch_tokens`, DEFAULT_MAX_BATCH_TOKENS; a batch_size given runs that many rows, as
    transformers does).
    options: the task's own options (defaults for every call, e.g. top_k, aggregation_strategy,
    pooling), the per-call options as defaults (transformers' truncation, max_length, ... as the task
    takes them: `Pipeline.call_option_names`), and the runner's (e.g. intra_op_num_threads, providers,
    cache_dir; see trt_runtime.load). export.json is read and checked once, before anything is loaded.
    """
    from trt_runtime.loader import all_runner_options, open_runner
    from trt_runtime.tokenization import TextTokenizer

    if (model is None) == (directory is None):
        raise TypeError("pipeline() takes the export directory once: pipeline(task, model=DIR) or pipeline(task, DIR)")
    directory = Path(model if model is not None else directory)  # type: ignore[arg-type]
    info = read_export_info(directory)
    cls = pipeline_class(task or info.task)
    accepted = {*cls.options, *cls.call_option_names()} - {"batch_size"}
    task_options = {k: v for k, v in options.items() if k in accepted}
    other = {k: v for k, v in options.items() if k not in accepted}
    known = all_runner_options()
    unknown = sorted(set(other) - known)
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for pipeline({cls.task!r}); it takes "
            f"{', '.join(cls.options) or 'no task options'}, {', '.join(cls.call_option_names())} and the runner's "
            f"{', '.join(sorted(known))}"
        )
    if info.task != cls.task:  # before loading any model
        raise ValueError(task_mismatch(cls.task, info.task, directory))
    tokenizer = TextTokenizer.from_directory(directory)
    runner = open_runner(directory, info, backend, **other)
    return cls(runner, tokenizer, batch_size=batch_size, **task_options)
