"""multiple-choice and next-sentence-prediction pipelines (transformers has no pipeline for either) against
the Hugging Face models run on transformers' own tokenization, softmaxed in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer, BertForNextSentencePrediction

import trt_runtime
from tests.fixtures.runtime_exports import tiny_export
from trt_runtime.validation import InputError

PROMPTS = [
    {
        "prompt": "John lives in Paris.",
        "choices": ["He works at the bank.", "The river is red.", "Mary was born."],
    },
    {"prompt": "What a great movie!", "choices": ["The film was good.", "It was bad."]},
    {"question": "Where was Mary born?", "choices": ["in Berlin", "in London", "at night", "in the house"]},
]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_choice_scores(checkpoint, prompt: str, choices: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForMultipleChoice.from_pretrained(checkpoint).eval()
    batch = tokenizer([prompt] * len(choices), choices, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: v[None] for k, v in batch.items()}).logits[0].numpy()
    return softmax(logits.astype(np.float64))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_multiple_choice_scores(model_type):
    checkpoint, export_dir = tiny_export(model_type, "multiple-choice", sharpen=8.0)
    choose = trt_runtime.pipeline("multiple-choice", export_dir, batch_size=4)
    results = choose(PROMPTS)
    assert len(results) == len(PROMPTS)
    for item, result in zip(PROMPTS, results):
        expected = reference_choice_scores(
            checkpoint, item.get("prompt", item.get("question")), item["choices"]
        )
        np.testing.assert_allclose(result["scores"], expected, atol=1e-5)
        best = int(np.argmax(expected))
        assert result["index"] == best and result["choice"] == item["choices"][best]
        assert result["score"] == pytest.approx(expected[best], abs=1e-5)
    single = choose(prompt=PROMPTS[0]["prompt"], choices=PROMPTS[0]["choices"])
    assert single == choose(PROMPTS[0]) and single["scores"] == pytest.approx(results[0]["scores"], abs=1e-6)


def test_multiple_choice_bad_inputs():
    _, export_dir = tiny_export("bert", "multiple-choice", sharpen=8.0)
    choose = trt_runtime.pipeline("multiple-choice", export_dir)
    with pytest.raises(InputError, match=r"\['choices'\] must be a list of at least two texts"):
        choose({"prompt": "a day", "choices": ["one"]})
    with pytest.raises(InputError, match=r"\['choices'\]\[1\] is empty"):
        choose({"prompt": "a day", "choices": ["one", " "]})
    with pytest.raises(InputError, match="needs 'prompt' \\(or 'question'\\) and 'choices'"):
        choose([{"choices": ["a", "b"]}])


def test_next_sentence_prediction():
    _, export_dir = tiny_export("bert", "next-sentence-prediction", sharpen=8.0)
    checkpoint = export_dir.parent / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = BertForNextSentencePrediction.from_pretrained(checkpoint).eval()
    pairs = [("John lives in Paris.", "He works at the bank."), ("The film was good.", "Berlin is a city.")]
    nsp = trt_runtime.pipeline("next-sentence-prediction", export_dir)
    results = nsp([{"text": a, "text_pair": b} for a, b in pairs])
    for (a, b), result in zip(pairs, results):
        with torch.no_grad():
            logits = model(**tokenizer(a, b, return_tensors="pt")).logits[0].numpy()
        probabilities = softmax(logits.astype(np.float64))
        assert result["score"] == pytest.approx(probabilities[0], abs=1e-5)
        assert result["is_next"] == bool(probabilities[0] > probabilities[1])
    assert nsp(pairs[0]) == results[0]
    with pytest.raises(
        InputError, match="must be a {'text', 'text_pair'} dict or a \\(text, text_pair\\) tuple"
    ):
        nsp("just one text")
