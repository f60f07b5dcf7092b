"""PyTorch BERT-family encoders (BERT/QDQBERT, I-BERT, SqueezeBERT) with their task heads.

    import models
    m = models.load("ckpt_dir", task="text-classification", quantization="none" | "qdq" | "integer")
    out = m(input_ids=ids, attention_mask=mask)   # {"logits": tensor}
"""

from models.architectures import ARCHITECTURES, FORCE_DEQUANT_VALUES, QUANTIZATION_MODES, Architecture
from models.loading import CheckpointError, load, load_config
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
