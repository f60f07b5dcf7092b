"""question-answering pipeline against an independent brute-force search over the Hugging Face model's logits.

transformers 5 has no question-answering pipeline, so the reference here is written out plainly from
what transformers 4's pipeline did: split the context into windows (only_second truncation with a
doc stride), mask everything but the context and [CLS], softmax start and end, score every span of at
most max_answer_len tokens as p_start x p_end, keep each window's best (top_k * 2 + 10 with word
alignment, else top_k) spans on allowed tokens, widen them to whole words, merge answers with the
same text by adding their scores, add the [CLS] "no answer" where asked, and sort.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

import trt_runtime
from tests.fixtures.runtime_exports import assert_results_close, tiny_export
from trt_runtime.validation import InputError

QUESTION = "Where does John live?"
CONTEXT = (
    "John lives in Paris, the capital of France. Mary was born in Berlin and works at the bank in London."
)
LONG_CONTEXT = " ".join(
    [
        "They walked in the rain to the old red house near the river.",
        "John lives in Paris, the capital of France.",
        "What a great movie! The film was not bad at all.",
        "Mary was born in Berlin; she reads a good book every night.",
        "Where does he play? He plays in New York when the sun is out.",
        "The capital of France is Paris, a city on the river.",
        "John lives in London and works at the bank.",
    ]
)


def masked_softmax(logits, allowed):
    masked = np.array([value if ok else -10000.0 for value, ok in zip(logits.tolist(), allowed)])
    exp = np.exp(masked - masked.max())
    return exp / exp.sum()


def brute_force(
    model,
    tokenizer,
    question,
    context,
    *,
    top_k=1,
    max_answer_len=15,
    max_seq_len=64,
    doc_stride=32,
    handle_impossible_answer=False,
    align_to_words=True,
):
    encoded = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    answers: list[dict] = []
    null_score = 1e6
    for window in range(len(encoded["input_ids"])):
        ids = encoded["input_ids"][window]
        n = len(ids)
        inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long)}
        if "token_type_ids" in encoded:
            inputs["token_type_ids"] = torch.tensor([encoded["token_type_ids"][window]])
        with torch.no_grad():
            out = model(**inputs)
        sequence_ids = encoded.sequence_ids(window)
        allowed = [sequence_ids[i] == 1 or ids[i] == tokenizer.cls_token_id for i in range(n)]

        p_start, p_end = (
            masked_softmax(out.start_logits[0], allowed),
            masked_softmax(out.end_logits[0], allowed),
        )
        null_score = min(null_score, p_start[0] * p_end[0])
        p_start[0] = p_end[0] = 0.0
        spans = [
            (p_start[s] * p_end[e], s, e) for s in range(n) for e in range(s, min(n, s + max_answer_len))
        ]
        spans.sort(key=lambda span: -span[0])  # stable: ties stay in (start, end) order
        for score, s, e in spans[: top_k * 2 + 10 if align_to_words else top_k]:
            if not (allowed[s] and allowed[e]):
                continue
            first, last = encoded["offset_mapping"][window][s][0], encoded["offset_mapping"][window][e][1]
            words = (encoded.token_to_word(window, s), encoded.token_to_word(window, e))
            if align_to_words and None not in words:
                first = encoded.word_to_chars(window, words[0], sequence_index=1).start
                last = encoded.word_to_chars(window, words[1], sequence_index=1).end
            text = context[first:last]
            same = [a for a in answers if a["answer"].lower() == text.lower()]
            if same:
                same[0]["score"] += score
            else:
                answers.append({"score": score, "start": first, "end": last, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda a: -a["score"])[:top_k]
    return answers[0] if len(answers) == 1 else answers


@pytest.fixture(scope="module", params=["bert", "roberta"])
def qa(request):
    checkpoint, export_dir = tiny_export(request.param, "question-answering", sharpen=4.0)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return trt_runtime.pipeline("question-answering", export_dir), model, tokenizer


def test_short_context_best_answer(qa):
    ours, model, tokenizer = qa
    got = ours(question=QUESTION, context=CONTEXT)
    assert_results_close(got, brute_force(model, tokenizer, QUESTION, CONTEXT))
    assert got["answer"] == CONTEXT[got["start"] : got["end"]] and got["answer"]


def test_long_context_split_into_windows(qa):
    ours, model, tokenizer = qa
    windows = tokenizer(
        QUESTION,
        LONG_CONTEXT,
        truncation="only_second",
        max_length=64,
        stride=32,
        return_overflowing_tokens=True,
    )["input_ids"]
    assert len(windows) >= 3, "the context needs several windows"
    for top_k in (1, 4):
        assert_results_close(
            ours({"question": QUESTION, "context": LONG_CONTEXT}, top_k=top_k),
            brute_force(model, tokenizer, QUESTION, LONG_CONTEXT, top_k=top_k),
        )


def test_stride_seq_len_and_answer_length_options(qa):
    ours, model, tokenizer = qa
    options = {"max_seq_len": 40, "doc_stride": 10, "max_answer_len": 3, "top_k": 3}
    assert_results_close(
        ours(question=QUESTION, context=LONG_CONTEXT, **options),
        brute_force(model, tokenizer, QUESTION, LONG_CONTEXT, **options),
    )
    for answer in ours(question=QUESTION, context=LONG_CONTEXT, **options):
        assert (
            len(tokenizer(answer["answer"], add_special_tokens=False)["input_ids"]) <= 3 + 2
        )  # words widen spans


def test_without_word_alignment(qa):
    ours, model, tokenizer = qa
    assert_results_close(
        ours(question=QUESTION, context=LONG_CONTEXT, align_to_words=False, top_k=2),
        brute_force(model, tokenizer, QUESTION, LONG_CONTEXT, align_to_words=False, top_k=2),
    )


def test_impossible_answer(qa):
    ours, model, tokenizer = qa
    got = ours(question=QUESTION, context=CONTEXT, handle_impossible_answer=True, top_k=200)
    assert_results_close(
        got, brute_force(model, tokenizer, QUESTION, CONTEXT, handle_impossible_answer=True, top_k=200)
    )
    assert [(a["start"], a["end"]) for a in got if a["answer"] == ""] == [(0, 0)]


def test_batch_forms(qa):
    ours, model, tokenizer = qa
    questions = [QUESTION, "Where was Mary born?"]
    expected = [brute_force(model, tokenizer, q, CONTEXT) for q in questions]
    assert_results_close(ours(question=questions, context=CONTEXT), expected)
    assert_results_close(ours([{"question": q, "context": CONTEXT} for q in questions]), expected)
    assert_results_close(ours(question=questions, context=[CONTEXT, CONTEXT]), expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p(question="", context=CONTEXT), r"\['question'\] is empty"),
        (lambda p: p(question=QUESTION, context="   "), r"\['context'\] is empty"),
        (lambda p: p(question=QUESTION), "needs both question= and context="),
        (lambda p: p({"question": QUESTION}), "must be a dict with 'question' and 'context'"),
        (lambda p: p(question=[QUESTION] * 2, context=[CONTEXT]), "2 questions but 1 contexts"),
        (
            lambda p: p(question=" ".join(["where"] * 80), context=CONTEXT),
            "cannot fit the input into 64 tokens",
        ),
    ],
)
def test_bad_inputs(qa, call, message):
    with pytest.raises(InputError, match=message):
        call(qa[0])


def test_doc_stride_over_max_seq_len(qa):
    with pytest.raises(ValueError, match=r"doc_stride \(50\) is larger than max_seq_len \(40\)"):
        qa[0](question=QUESTION, context=CONTEXT, max_seq_len=40, doc_stride=50)
