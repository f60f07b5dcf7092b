"""question-answering: extractive answers as transformers 4's QuestionAnsweringPipeline found and scored them.

(transformers 5 has no question-answering pipeline; this follows the last transformers 4 one.)
Inputs: qa(question=..., context=...), qa({"question": ..., "context": ...}), a list of such dicts, or
question=[...] with one context or a list of contexts.
How: the question and the context are encoded as a pair, the context split into windows of at most
max_seq_len tokens (default min(384, the model's limit)) overlapping by doc_stride tokens (default
min(max_seq_len // 2, 128)). In each window, start and end logits outside the context (question,
special tokens; the [CLS] token stays a candidate for "no answer") are masked, each softmaxed, and a
span scores start_prob x end_prob, with start <= end < start + max_answer_len (default 15). The best
top_k * 2 + 10 spans of each window (top_k with align_to_words=False) are widened to whole words
(align_to_words=True, the default), answers with the same text (case-insensitive) are merged by adding
their scores, and the top_k best are returned. handle_impossible_answer=True adds the empty answer,
scored by the smallest [CLS] start x end probability over the windows.
Output: {"score", "start", "end", "answer"} (character offsets into the context); a list of them when
top_k > 1 finds several; a list of inputs gives a list of those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tokenizers import Encoding

from trt_runtime.pipelines.base import CALL, Pipeline, check_text, top_k_option
from trt_runtime.validation import InputError

DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128
MASKED_LOGIT = -10000.0


def _example(item: Any, what: str) -> tuple[str, str]:
    if not isinstance(item, dict) or "question" not in item or "context" not in item:
        raise InputError(f"{what} must be a dict with 'question' and 'context', got {type(item).__name__}")
    return check_text(item["question"], f"{what}['question']"), check_text(
        item["context"], f"{what}['context']"
    )


def _int_option(value: Any, what: str, low: int) -> Any:
    """None, or an int >= low (bools refused); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an int >= {low} (or None for the default), got {value!r}")
    return value


def span_candidates(
    start_probs: np.ndarray, end_probs: np.ndarray, allowed: np.ndarray, top_k: int, max_answer_len: int
) -> list[tuple[int, int, float]]:
    """The top_k (start, end, score) spans by start x end probability, both ends on allowed tokens.

    Only spans with start <= end < start + max_answer_len are candidates. (transformers 4 zeroed the
    others but could still return them, as score-0 junk, when top_k exceeded the real spans.)
    """
    n = len(start_probs)
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]  # end - start
    in_band = (offset >= 0) & (offset < max_answer_len)
    scores = np.where(in_band, np.outer(start_probs, end_probs), -np.inf)
    flat = scores.ravel()
    best = np.argsort(-flat, kind="stable")[: min(top_k, int(in_band.sum()))]
    starts, ends = np.unravel_index(best, scores.shape)
    return [(int(s), int(e), float(scores[s, e])) for s, e in zip(starts, ends) if allowed[s] and allowed[e]]


class QuestionAnsweringPipeline(Pipeline):
    task = "question-answering"
    options = {
        "top_k": 1,
        "doc_stride": None,
        "max_answer_len": 15,
        "max_seq_len": None,
        "handle_impossible_answer": False,
        "align_to_words": True,
    }

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        question, context = options.pop("question", None), options.pop("context", None)
        if inputs is not None and (question is not None or context is not None):
            raise InputError(
                "pass either a {'question', 'context'} dict (or a list of them) or question= and context="
            )
        if inputs is None:
            if question is None or context is None:
                raise InputError("question answering needs both question= and context=")
            if isinstance(question, str) and isinstance(context, str):
                return [_example({"question": question, "context": context}, "the input")], True
            if isinstance(question, list) and isinstance(context, str):
                inputs = [{"question": q, "context": context} for q in question]
            elif isinstance(question, list) and isinstance(context, list):
                if len(question) != len(context):
                    raise InputError(
                        f"{len(question)} questions but {len(context)} contexts; "
                        f"pass one context per question"
                    )
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            else:
                raise InputError("question= must be a str or a list of str, context= a str or a list of str")
        if isinstance(inputs, dict):
            return [_example(inputs, "the input")], True
        if isinstance(inputs, list):
            return [_example(item, f"input {i}") for i, item in enumerate(inputs)], False
        raise InputError(
            f"the question-answering pipeline takes {{'question', 'context'}} dicts, "
            f"got {type(inputs).__name__}"
        )

    def _windows(self, question: str, context: str, max_seq_len: int, doc_stride: int) -> list[Encoding]:
        encoding = self.encode(
            [(question, context)],
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            windows=True,
        )[0]
        return [encoding, *encoding.overflowing]

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        top_k = top_k_option(options["top_k"]) or 1
        max_answer_len = _int_option(options["max_answer_len"], "max_answer_len", 1) or 0
        if max_answer_len < 1:
            raise ValueError("max_answer_len must be an int >= 1, got None")
        max_seq_len = _int_option(options["max_seq_len"], "max_seq_len", 1)
        max_seq_len = min(max_seq_len or DEFAULT_MAX_SEQ_LEN, self.max_length)
        doc_stride = _int_option(options["doc_stride"], "doc_stride", 0)
        doc_stride = min(max_seq_len // 2, DEFAULT_DOC_STRIDE) if doc_stride is None else doc_stride
        if doc_stride > max_seq_len:
            raise ValueError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        align, impossible = bool(options["align_to_words"]), bool(options["handle_impossible_answer"])

        windows = [self._windows(q, c, max_seq_len, doc_stride) for q, c in items]
        for index, example in enumerate(windows):
            # where the question fills max_seq_len, `tokenizers` returns windows without the context or longer
            # than asked instead of an error
            too_long = any(len(window.ids) > max_seq_len for window in example)
            if too_long or not any(sequence == 1 for sequence in example[0].sequence_ids):
                raise InputError(
                    f"input {index}: the question leaves no room for the context within max_seq_len="
                    f"{max_seq_len} tokens; shorten the question or raise max_seq_len"
                )
        flat = [window for example in windows for window in example]
        rows = iter(self.run_rows(flat, options[CALL]))
        results = []
        for (_, context), example_windows in zip(items, windows):
            answers: list[dict[str, Any]] = []
            min_null_score = 1000000.0  # transformers' starting value: "large and positive"
            for window in example_windows:
                row = next(rows)
                null_score = self._window_answers(
                    window, row, context, answers, top_k * 2 + 10 if align else top_k, max_answer_len, align
                )
                min_null_score = min(min_null_score, null_score)
            if impossible:
                answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
            best = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
            results.append(best[0] if len(best) == 1 else best)
        return results

    def _window_answers(
        self,
        window: Encoding,
        row: dict[str, np.ndarray],
        context: str,
        answers: list[dict[str, Any]],
        candidates: int,
        max_answer_len: int,
        align: bool,
    ) -> float:
        """Add this window's best spans to `answers` (merging equal texts); returns its no-answer score."""
        ids = np.array(window.ids)
        # tokens that may be part of an answer: the context, and [CLS] (the "no answer" position)
        allowed = np.array([sequence == 1 for sequence in window.sequence_ids])
        if self.tokenizer.cls_token_id is not None:
            allowed |= ids == self.tokenizer.cls_token_id
        allowed &= np.array(window.attention_mask, dtype=bool)
        start = np.where(allowed, row["start_logits"].astype(np.float64), MASKED_LOGIT)
        end = np.where(allowed, row["end_logits"].astype(np.float64), MASKED_LOGIT)
        start = np.exp(start - start.max())
        start /= start.sum()
        end = np.exp(end - end.max())
        end /= end.sum()
        null_score = float(start[0] * end[0])
        start[0] = end[0] = 0.0  # the first position ([CLS]) is never a span
        for s, e, score in span_candidates(start, end, allowed, candidates, max_answer_len):
            first, last = self._characters(window, s, e, align)
            text = context[first:last]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += score
            else:
                answers.append({"score": score, "start": first, "end": last, "answer": text})
        return null_score

    @staticmethod
    def _characters(window: Encoding, start: int, end: int, align: bool) -> tuple[int, int]:
        """Character span of tokens start..end in the context, widened to whole words (align, where known)."""
        if align:
            start_word, end_word = window.token_to_word(start), window.token_to_word(end)
            if start_word is not None and end_word is not None:
                first, last = window.word_to_chars(start_word, 1), window.word_to_chars(end_word, 1)
                if first is not None and last is not None:
                    return first[0], last[1]
        # tokens that belong to no word ([CLS]) keep their own offsets, as transformers falls back to
        return window.offsets[start][0], window.offsets[end][1]
