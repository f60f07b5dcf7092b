"""Task names: the canonical ones of the export directory (`export_dir.TASKS`) and the synonyms users bring.

People come with the names of the tools they know: optimum's exporter (`optimum-cli export onnx --task
sequence-classification`, `--task auto`) and transformers' pipelines (`pipeline("sentiment-analysis")`).
`canonical_task` maps those to ours, so the exporter takes them as they are; export.json always records the
canonical name.

Sources (the synonyms whose canonical task is one of ours, copied as data):
- optimum `optimum/exporters/tasks.py`, `TasksManager._SYNONYM_TASK_MAP` (huggingface/optimum at
  83c88b8fc51e791f263a954e3568e1d2a02aa003), which `TasksManager.map_from_synonym` applies;
  "auto" is optimum's default task ("infer the task from the model": `TasksManager.infer_task_from_model`).
  Its other entries map to tasks these encoders do not have (text2text-generation, automatic-speech-
  recognition, text-to-audio, image-to-text, the "-with-past" KV-cache variants, text-to-image).
- transformers `transformers/pipelines/__init__.py`, `TASK_ALIASES` (transformers 5.24.0):
  "sentiment-analysis" and "ner" (its third alias, text-to-speech, is not an encoder task).
"""

from __future__ import annotations

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import TASKS

#: the task meaning "infer it from config.json's architectures" (optimum's default `--task auto`)
AUTO_TASK = "auto"

#: synonym -> canonical task (optimum's TasksManager._SYNONYM_TASK_MAP and transformers' TASK_ALIASES;
#: see the module docstring for the exact sources)
TASK_SYNONYMS: dict[str, str] = {
    # optimum TasksManager._SYNONYM_TASK_MAP
    "causal-lm": "text-generation",
    "default": "feature-extraction",
    "masked-lm": "fill-mask",
    "mask-generation": "feature-extraction",
    "sentence-similarity": "feature-extraction",
    "sequence-classification": "text-classification",
    "zero-shot-classification": "text-classification",
    "image-feature-extraction": "feature-extraction",
    "pretraining": "feature-extraction",
    # transformers.pipelines.TASK_ALIASES
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
}


class UnknownTaskError(QbertError, ValueError):
    """A task name that is neither one of ours nor a synonym of one."""

    code = "unknown-task"


def canonical_task(name: str | None) -> str | None:
    """The canonical task for `name` (one of TASKS, a synonym, or "auto"/None: None, i.e. infer it)."""
    if name is None or name == AUTO_TASK:
        return None
    if name in TASKS:
        return name
    if name in TASK_SYNONYMS:
        return TASK_SYNONYMS[name]
    raise UnknownTaskError(
        f"unknown task {name!r}; choose one of: {', '.join(TASKS)}, or {AUTO_TASK} (from config.json); "
        f"optimum's and transformers' synonyms work too: {', '.join(TASK_SYNONYMS)}"
    )
