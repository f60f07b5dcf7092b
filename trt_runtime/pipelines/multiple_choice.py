"""multiple-choice: which of several endings fits a prompt best (transformers has no pipeline for this task).

Inputs: mc({"prompt": ..., "choices": [...]}), mc(prompt=..., choices=[...]), or a list of such dicts
("question" is accepted for "prompt"). Each (prompt, choice) pair is encoded as the model was trained
on (SWAG-style: the prompt as the first text, the choice as the second, truncated longest-first with a
warning) and all choices of a prompt go to the model together as one [choices, tokens] row.
Output per prompt: {"choice": best choice's text, "index": its position, "score": its probability,
"scores": the softmax probability of every choice, in the order given}. A list of prompts gives a list.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from trt_runtime.pipelines.base import CALL, Pipeline, batches, check_text, pad_rows, softmax
from trt_runtime.validation import InputError


def _question(item: Any, what: str) -> tuple[str, list[str]]:
    if not isinstance(item, dict):
        raise InputError(
            f"{what} must be a dict {{'prompt': str, 'choices': [str, ...]}}, got {type(item).__name__}"
        )
    prompt = item.get("prompt", item.get("question"))
    choices = item.get("choices")
    if prompt is None or choices is None:
        raise InputError(f"{what} needs 'prompt' (or 'question') and 'choices'")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise InputError(f"{what}['choices'] must be a list of at least two texts")
    return (
        check_text(prompt, f"{what}['prompt']"),
        [check_text(choice, f"{what}['choices'][{i}]") for i, choice in enumerate(choices)],
    )


class MultipleChoicePipeline(Pipeline):
    task = "multiple-choice"
    options: ClassVar[dict[str, Any]] = {}
    tokenizer_keywords = "keywords"  # a text-pair classifier: as text-classification

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        prompt, choices = options.pop("prompt", None), options.pop("choices", None)
        if inputs is None:
            return [_question({"prompt": prompt, "choices": choices}, "the input")], True
        if prompt is not None or choices is not None:
            raise InputError(
                "pass either a {'prompt', 'choices'} dict (or a list of them) or prompt= and choices="
            )
        if isinstance(inputs, dict):
            return [_question(inputs, "the input")], True
        if isinstance(inputs, list):
            return [_question(item, f"input {i}") for i, item in enumerate(inputs)], False
        raise InputError(
            f"the multiple-choice pipeline takes {{'prompt', 'choices'}} dicts, got {type(inputs).__name__}"
        )

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        names = [spec.name for spec in self.runner.input_specs]
        logits: list[np.ndarray] = [np.empty(0)] * len(items)
        # prompts with the same number of choices share a batch ([batch, choices, tokens] needs one count)
        by_count: dict[int, list[int]] = {}
        for index, (_, choices) in enumerate(items):
            by_count.setdefault(len(choices), []).append(index)
        for count, indices in by_count.items():
            for batch in batches(indices, max(1, options[CALL].batch_size // count)):
                pairs = [(items[i][0], choice) for i in batch for choice in items[i][1]]
                encodings = self.encode(pairs, call=options[CALL])
                flat = pad_rows(encodings, self.tokenizer.pad_token_id, names, self.min_length)
                feeds = {name: array.reshape(len(batch), count, -1) for name, array in flat.items()}
                outputs = self.runner(feeds)["logits"]
                for position, index in enumerate(batch):
                    logits[index] = outputs[position]
        results = []
        for (_, choices), scores in zip(items, logits):
            probabilities = softmax(scores.astype(np.float32))
            best = int(np.argmax(probabilities))
            results.append(
                {
                    "choice": choices[best],
                    "index": best,
                    "score": float(probabilities[best]),
                    "scores": [float(p) for p in probabilities],
                }
            )
        return results
