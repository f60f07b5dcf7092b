"""The checkpoints that the benchmark measures: a BERT-base-sized model with random weights, and the demo model.

Random weights are enough for speed (the kernels do not look at the values). The BERT-base checkpoint
takes transformers' `BertConfig()` defaults (12 layers, hidden 768, 12 heads, intermediate 3072, vocab
30522), a fixed seed, and the demo model's tokenizer (the same uncased 30522-token WordPiece
vocabulary), so that it calibrates on the shipped text like a real model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trt_runtime.contract.files import atomic_directory

BERT_BASE_SEED = 0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def bert_base_random(root: Path) -> Path:
    """`<root>/bert-base-random`: made once (in a temporary sibling, then renamed) and reused."""
    target = root / "bert-base-random"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import BertConfig, BertModel

    from models.demo_model import demo_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(BERT_BASE_SEED)
    model = BertModel(BertConfig())
    model.eval()
    tokenizer_dir = demo_checkpoint()
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy2(tokenizer_dir / name, staging / name)
    return target


def minilm() -> Path:
    """all-MiniLM-L6-v2's checkpoint directory (models.demo_model)."""
    from models.demo_model import demo_checkpoint

    return demo_checkpoint()
