"""Task synonyms resolve to the canonical task, as optimum and transformers resolve them.

OPTIMUM_SYNONYMS is optimum's whole `TasksManager._SYNONYM_TASK_MAP`, copied from
huggingface/optimum optimum/exporters/tasks.py at 83c88b8fc51e791f263a954e3568e1d2a02aa003 (optimum is not
installed here: its transformers pin conflicts with ours); transformers' `TASK_ALIASES` is read from the
installed transformers.
"""

from __future__ import annotations

import pytest

from trt_runtime.contract.export_dir import TASKS
from trt_runtime.contract.tasks import TASK_SYNONYMS, UnknownTaskError, canonical_task

OPTIMUM_SYNONYMS = {
    "audio-ctc": "automatic-speech-recognition",
    "causal-lm": "text-generation",
    "causal-lm-with-past": "text-generation-with-past",
    "default": "feature-extraction",
    "default-with-past": "feature-extraction-with-past",
    "masked-lm": "fill-mask",
    "mask-generation": "feature-extraction",
    "sentence-similarity": "feature-extraction",
    "seq2seq-lm": "text2text-generation",
    "seq2seq-lm-with-past": "text2text-generation-with-past",
    "sequence-classification": "text-classification",
    "speech2seq-lm": "automatic-speech-recognition",
    "speech2seq-lm-with-past": "automatic-speech-recognition-with-past",
    "summarization": "text2text-generation",
    "text-to-speech": "text-to-audio",
    "translation": "text2text-generation",
    "vision2seq-lm": "image-to-text",
    "zero-shot-classification": "text-classification",
    "image-feature-extraction": "feature-extraction",
    "pretraining": "feature-extraction",
    "stable-diffusion": "text-to-image",
    "stable-diffusion-xl": "text-to-image",
    "latent-consistency": "text-to-image",
}


@pytest.mark.parametrize("synonym", sorted(OPTIMUM_SYNONYMS))
def test_optimum_synonyms(synonym):
    """Every optimum synonym of one of our tasks gives that task; the others are refused by name."""
    target = OPTIMUM_SYNONYMS[synonym]
    if target in TASKS:
        assert canonical_task(synonym) == target
    else:
        with pytest.raises(UnknownTaskError, match=f"unknown task '{synonym}'; choose one of: feature-extraction"):
            canonical_task(synonym)


def test_transformers_pipeline_aliases():
    from transformers.pipelines import TASK_ALIASES

    assert "sentiment-analysis" in TASK_ALIASES  # the alias the issue was about
    for alias, target in TASK_ALIASES.items():
        if target in TASKS:
            assert canonical_task(alias) == target
        else:
            with pytest.raises(UnknownTaskError):
                canonical_task(alias)


def test_canonical_names_auto_and_nothing_else():
    for task in TASKS:
        assert canonical_task(task) == task
    assert canonical_task("auto") is None and canonical_task(None) is None  # optimum's default: infer it
    # the table holds nothing beyond the two sources
    from transformers.pipelines import TASK_ALIASES

    assert set(TASK_SYNONYMS) <= set(OPTIMUM_SYNONYMS) | set(TASK_ALIASES)
    with pytest.raises(UnknownTaskError, match="unknown task 'Text-Classification'") as raised:
        canonical_task("Text-Classification")  # neither tool folds case
    assert raised.value.code == "unknown-task"
