"""PyTorch BERT-family encoders (BERT/QDQBERT, I-BERT, SqueezeBERT) with their task heads.

    import models
    m = models.load("ckpt_dir", task="text-classification", quantization="none" | "qdq" | "integer")
    out = m(input_ids=ids, attention_mask=mask)   # {"logits": tensor}

Imports are lazy: `import models` loads neither torch nor transformers until a name below is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.architectures import ARCHITECTURES, FORCE_DEQUANT_VALUES, QUANTIZATION_MODES, Architecture
    from models.errors import CheckpointError
    from models.loading import load, load_config
    from models.tasks import TASKS, TaskModel

__all__ = [
    "ARCHITECTURES",
    "FORCE_DEQUANT_VALUES",
    "QUANTIZATION_MODES",
    "TASKS",
    "Architecture",
    "CheckpointError",
    "TaskModel",
    "load",
    "load_config",
]

_LAZY = {
    "ARCHITECTURES": "models.architectures",
    "FORCE_DEQUANT_VALUES": "models.architectures",
    "QUANTIZATION_MODES": "models.architectures",
    "Architecture": "models.architectures",
    "CheckpointError": "models.errors",
    "load": "models.loading",
    "load_config": "models.loading",
    "TASKS": "models.tasks",
    "TaskModel": "models.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
