"""next-sentence-prediction: does the second text follow the first? (BERT's pre-training head.)

Inputs: a {"text": ..., "text_pair": ...} dict, a (text, text_pair) tuple, or a list of those.
Output per pair: {"is_next": bool, "score": the probability that text_pair follows text} (logit 0 of
BertForNextSentencePrediction is "is next", logit 1 "random"). A list of pairs gives a list.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from trt_runtime.pipelines.base import CALL, Pipeline, check_text, softmax
from trt_runtime.validation import InputError

IS_NEXT = 0


def _pair(item: Any, what: str) -> tuple[str, str]:
    if isinstance(item, dict) and "text" in item and "text_pair" in item:
        return check_text(item["text"], f"{what}['text']"), check_text(
            item["text_pair"], f"{what}['text_pair']"
        )
    if isinstance(item, tuple) and len(item) == 2:
        return check_text(item[0], f"{what}[0]"), check_text(item[1], f"{what}[1]")
    raise InputError(f"{what} must be a {{'text', 'text_pair'}} dict or a (text, text_pair) tuple")


class NextSentencePredictionPipeline(Pipeline):
    task = "next-sentence-prediction"
    options: ClassVar[dict[str, Any]] = {}
    tokenizer_keywords = "keywords"  # a text-pair classifier: as text-classification

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        if isinstance(inputs, list):
            return [_pair(item, f"input {i}") for i, item in enumerate(inputs)], False
        return [_pair(inputs, "the input")], True

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        results = []
        for row in self.run_rows(self.encode(items, call=options[CALL]), options[CALL]):
            probabilities = softmax(row["logits"].astype(np.float32))
            results.append(
                {"is_next": bool(np.argmax(probabilities) == IS_NEXT), "score": float(probabilities[IS_NEXT])}
            )
        return results
