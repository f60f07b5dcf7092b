"""Tiny checkpoints with tokenizers, exported with `exporter.export`, for the runtime and pipeline tests.

`tiny_export(model_type, task, **overrides)` returns (checkpoint_dir, export_dir): the Hugging Face
checkpoint (the reference for transformers' pipelines) and its float ONNX export. Results are cached
for the whole test session, so test modules that use the same model share one export.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.tiny_models import hf_model
from tests.tiny_tokenizers import save_tiny_tokenizer

_ROOT: Path | None = None
_CACHE: dict[tuple, tuple[Path, Path]] = {}

#: token-classification labels with B-/I- tags, so that entity grouping has something to group
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="runtime-exports-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def save_checkpoint(
    directory: Path, model_type: str, task: str, sharpen: float = 1.0, **overrides: Any
) -> torch.nn.Module:
    """A tiny random model of `task` with the tiny tokenizer of its family, saved to `directory`.

    sharpen scales the task head's output weights so that classes and spans have clearly different
    scores (a near-uniform random head makes the best label a coin toss between float rounding errors).
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = save_tiny_tokenizer(directory, model_type)
    model = hf_model(model_type, task, vocab_size=max(vocab_size, 99), **overrides)
    if sharpen != 1.0:
        head = [
            m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" not in name
        ][-1]
        with torch.no_grad():
            head.weight.mul_(sharpen)
    model.save_pretrained(directory)
    return model


def tiny_export(model_type: str, task: str, sharpen: float = 1.0, **overrides: Any) -> tuple[Path, Path]:
    """(checkpoint_dir, export_dir) of a tiny model exported float by exporter.export; cached per session."""
    import exporter

    key = (model_type, task, sharpen, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
    if key not in _CACHE:
        name = f"{model_type}-{task}-{len(_CACHE)}"
        checkpoint, export_dir = _root() / name / "checkpoint", _root() / name / "export"
        save_checkpoint(checkpoint, model_type, task, sharpen, **overrides)
        exporter.export(checkpoint, export_dir, task=task, quantization="none", log=None)
        _CACHE[key] = (checkpoint, export_dir)
    return _CACHE[key]


def assert_results_close(ours: Any, theirs: Any, atol: float = 1e-4, where: str = "result") -> None:
    """Same structure and values; floats (scores) within atol, everything else (labels, offsets) equal."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{where}: keys {ours!r} vs {theirs!r}"
        for key in theirs:
            assert_results_close(ours[key], theirs[key], atol, f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: {ours!r} vs {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_results_close(a, b, atol, f"{where}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert isinstance(ours, float), f"{where}: {ours!r} is not a float"
        assert abs(ours - float(theirs)) <= atol, f"{where}: {ours} vs {theirs}"
    else:
        assert ours == theirs and type(ours) is type(
            int(theirs) if isinstance(theirs, np.integer) else theirs
        ), f"{where}: {ours!r} vs {theirs!r}"


def hf_pipeline(task: str, checkpoint: Path, **kwargs: Any):
    """transformers' pipeline for the checkpoint, on the CPU."""
    import transformers

    return transformers.pipeline(task, model=str(checkpoint), device="cpu", **kwargs)
