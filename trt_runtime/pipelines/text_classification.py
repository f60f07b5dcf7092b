"""text-classification: labels and scores, as transformers 5's TextClassificationPipeline returns them.

Inputs: a str, a {"text": ..., "text_pair": ...} dict or a (text, text_pair) tuple, or a list of those.
Scores: softmax over the labels, sigmoid, or the raw logits, chosen by `function_to_apply` or else by
export.json's problem_type ("regression": none; "multi_label_classification" or a single label:
sigmoid; otherwise softmax).
Shapes, as transformers returns them:
- top_k not given: one {"label", "score"} per input (the best label); a single str gives [that dict].
- top_k given (an int, or None for every label): per input a list of {"label", "score"} sorted by
  score, best first; a single input gives its list, a list of inputs a list of lists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trt_runtime.pipelines.base import CALL, Pipeline, check_text, labels_of, sigmoid, softmax, top_k_option
from trt_runtime.tokenization import Text
from trt_runtime.validation import InputError

FUNCTIONS = ("softmax", "sigmoid", "none")
#: top_k's default: "not given" (transformers' legacy output of one best label), distinct from None
BEST_ONLY = "best-only"


def _text_or_pair(item: Any, what: str) -> Text:
    if isinstance(item, str):
        return check_text(item, what)
    if isinstance(item, dict):
        if "text" not in item:
            raise InputError(f"{what} is a dict without 'text'; pass {{'text': ..., 'text_pair': ...}}")
        unknown = set(item) - {"text", "text_pair"}
        if unknown:
            raise InputError(
                f"{what} has unknown key(s) {', '.join(sorted(unknown))}; use 'text' and 'text_pair'"
            )
        if item.get("text_pair") is None:
            return check_text(item["text"], f"{what}['text']")
        return check_text(item["text"], f"{what}['text']"), check_text(
            item["text_pair"], f"{what}['text_pair']"
        )
    if isinstance(item, tuple) and len(item) == 2:
        return check_text(item[0], f"{what}[0]"), check_text(item[1], f"{what}[1]")
    raise InputError(
        f"{what} must be a str, a {{'text', 'text_pair'}} dict or a (text, text_pair) tuple, "
        f"got {type(item).__name__}"
    )


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    options = {"top_k": BEST_ONLY, "function_to_apply": None}
    tokenizer_keywords = "keywords"

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        if isinstance(inputs, list):
            return [_text_or_pair(item, f"input {i}") for i, item in enumerate(inputs)], False
        return [_text_or_pair(inputs, "the input")], "str" if isinstance(inputs, str) else "pair"

    def function_for(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in FUNCTIONS:
                raise ValueError(f"function_to_apply={requested!r}; choose one of {', '.join(FUNCTIONS)}")
            return requested
        problem_type, labels = self.info.problem_type, self._num_labels
        if problem_type == "regression":
            return "none"
        if problem_type == "multi_label_classification" or labels == 1:
            return "sigmoid"
        return "softmax"

    @property
    def _num_labels(self) -> int:
        return int(self.info.outputs[0].shape[-1]) if isinstance(self.info.outputs[0].shape[-1], int) else 0

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        function = self.function_for(options["function_to_apply"])
        top_k = options["top_k"]
        best_only = top_k == BEST_ONLY
        if not best_only:
            top_k = top_k_option(top_k)
        results: list[Any] = []
        for row in self.run_rows(self.encode(items, call=options[CALL]), options[CALL]):
            logits = row["logits"].astype(np.float32)
            scores = (
                softmax(logits)
                if function == "softmax"
                else sigmoid(logits)
                if function == "sigmoid"
                else logits
            )
            labels = labels_of(self.info, len(scores))
            if best_only:
                best = int(np.argmax(scores))
                results.append({"label": labels[best], "score": float(scores[best])})
                continue
            order = np.argsort(
                -scores, kind="stable"
            )  # best first; ties keep label order, as a stable sort does
            ranked = [{"label": labels[i], "score": float(scores[i])} for i in order]
            results.append(ranked if top_k is None else ranked[:top_k])
        return results

    def _shape(self, results: list[Any], single: Any, call_options: dict[str, Any]) -> Any:
        if not single:
            return results
        best_only = {**self.defaults, **call_options}["top_k"] == BEST_ONLY
        # transformers wraps a lone str's best label in a list (but not a lone pair's)
        return [results[0]] if best_only and single == "str" else results[0]
