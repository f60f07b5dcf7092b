"""Shared fixtures: the real demo checkpoint and real sentences."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A few sentences of ordinary English for tests that only need real text; tests that need many
# sentences use the shipped calibration_data/ corpus.
SENTENCES = [
    "The movie was a delight from beginning to end.",
    "I would not recommend this restaurant to anyone.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "A quiet, thoughtful film that lingers long after the credits roll.",
    "The battery died after two hours, which is unacceptable for a new phone.",
    "Researchers found that the vaccine was safe and effective in older adults.",
    "honestly the worst customer service i have ever experienced",
    "What a beautiful morning for a walk along the river!",
]


@pytest.fixture(scope="session")
def minilm_dir():
    from models.demo_model import demo_checkpoint

    return demo_checkpoint()


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)
