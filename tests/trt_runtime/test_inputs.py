"""Issue 11, inputs: every bad input to a runner or a pipeline fails loudly with InputError, never silently.

What tests/test_runtime_validation.py, tests/test_runtime_ort_runner.py and tests/test_pipelines_errors.py
already cover (each rule of validate_feeds, bad feeds through OrtRunner, empty texts in four pipelines) is
not repeated here. Here: proof that ONNX Runtime on its own gives wrong answers for the ids we refuse,
float (NaN) feeds, the TensorRT profile checks and the pipelines' use of a profile's limits, over-long
and empty inputs in every pipeline, a tokenizer larger than the model, and property-based tests.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import trt_runtime
from tests.fixtures.runtime_exports import NER_LABELS, tiny_export
from trt_runtime.backends.base import BaseRunner
from trt_runtime.backends.onnxruntime.options import OrtOptions
from trt_runtime.backends.onnxruntime.runner import CACHE_DIR, OrtRunner
from trt_runtime.backends.tensorrt.profiles import ShapeRange, resolve_profile
from trt_runtime.backends.tensorrt.runner import TensorRTRunner, profile_limits, validate_for_profile
from trt_runtime.contract.export_dir import ExportDirError, ExportInfo, TensorSpec
from trt_runtime.pipelines.base import Pipeline
from trt_runtime.pipelines.text_classification import TextClassificationPipeline
from trt_runtime.tokenization import TextTokenizer
from trt_runtime.validation import InputError, validate_feeds

VOCAB = 99  # tests/tiny_models.py


@pytest.fixture(scope="module")
def clf_dir() -> Path:
    return tiny_export("bert", "text-classification")[1]


@pytest.fixture(scope="module")
def clf_runner(clf_dir: Path) -> OrtRunner:
    return OrtRunner(clf_dir, cache=False)


def _feeds(ids: list[list[int]], **overrides: Any) -> dict[str, np.ndarray]:
    input_ids = np.array(ids, dtype=np.int64)
    feeds = {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }
    feeds.update({name: np.asarray(value, dtype=np.int64) for name, value in overrides.items()})
    return feeds


# --- out-of-range ids: ONNX Runtime alone answers wrongly; the runner refuses first ----------------------

GOOD = [[2, 10, 11, 3]]


def _raw_session(export_dir: Path) -> ort.InferenceSession:
    """A bare ONNX Runtime session on the export's model.onnx, with no validation in front of it."""
    return ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_negative_token_id_is_silently_another_token_in_onnxruntime_and_refused_by_the_runner(
    clf_dir, clf_runner
):
    """Gather takes -1 as the last row: ONNX Runtime alone answers for token 98, a silently wrong answer."""
    session = _raw_session(clf_dir)
    negative = _feeds([[2, -1, 11, 3]])
    last_token = _feeds([[2, VOCAB - 1, 11, 3]])
    np.testing.assert_array_equal(session.run(None, negative)[0], session.run(None, last_token)[0])
    with pytest.raises(
        InputError, match=r"input_ids\[0, 1\] = -1 is out of range: token ids must be in \[0, 99\)"
    ):
        clf_runner(negative)


def test_token_id_past_the_vocabulary_is_refused_before_the_gather(clf_dir, clf_runner):
    """ONNX Runtime's CPU Gather stops with its own error (a GPU Gather reads out of bounds); ours is first."""
    feeds = _feeds([[2, VOCAB, 11, 3]])
    with pytest.raises(Exception, match="out of data bounds") as raw:
        _raw_session(clf_dir).run(None, feeds)
    assert not isinstance(raw.value, InputError)
    with pytest.raises(InputError, match=r"input_ids\[0, 1\] = 99 is out of range"):
        clf_runner(feeds)


def test_negative_token_type_is_silently_wrong_in_onnxruntime_and_refused_by_the_runner(clf_dir, clf_runner):
    """-1 is the last row of the token-type table: ONNX Runtime alone answers as for token type 1."""
    session = _raw_session(clf_dir)
    right = session.run(None, _feeds(GOOD))[0]
    wrong = session.run(None, _feeds(GOOD, token_type_ids=[[0, -1, 0, 0]]))[0]
    np.testing.assert_array_equal(wrong, session.run(None, _feeds(GOOD, token_type_ids=[[0, 1, 0, 0]]))[0])
    assert not np.array_equal(wrong, right)
    with pytest.raises(InputError, match=r"token_type_ids\[0, 1\] = -1 is out of range"):
        clf_runner(_feeds(GOOD, token_type_ids=[[0, -1, 0, 0]]))


def test_attention_mask_of_5_gives_nan_in_onnxruntime_and_is_refused_by_the_runner(clf_dir, clf_runner):
    session = _raw_session(clf_dir)
    assert np.isnan(session.run(None, _feeds(GOOD, attention_mask=[[1, 5, 1, 1]]))[0]).any()
    with pytest.raises(InputError, match=r"attention_mask\[0, 1\] = 5 is out of range: .* 0 or 1"):
        clf_runner(_feeds(GOOD, attention_mask=[[1, 5, 1, 1]]))


@pytest.mark.parametrize("name", ["input_ids", "attention_mask", "token_type_ids"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_float_feeds_with_nan_are_refused_by_dtype(clf_runner, name, dtype):
    """None of our exports take float inputs: a float array (NaN or not) is refused by its dtype."""
    feeds: dict[str, np.ndarray] = dict(_feeds(GOOD))
    value = feeds[name].astype(dtype)
    value[0, 0] = np.nan
    feeds[name] = value
    with pytest.raises(
        InputError,
        match=rf"{name} has dtype {np.dtype(dtype).name}; expected integers .*astype\(np.int64\)",
    ):
        clf_runner(feeds)


def test_runner_result_does_not_depend_on_the_feed_layout(clf_runner):
    """Non-contiguous, big-endian, read-only and narrower feeds give the result of plain int64 ones."""
    plain = _feeds([[2, 10, 11, 3], [2, 12, 3, 0]], attention_mask=[[1, 1, 1, 1], [1, 1, 1, 0]])
    expected = clf_runner(plain)["logits"]
    wide = {name: np.repeat(value, 2, axis=1)[:, ::2] for name, value in plain.items()}  # strided views
    big_endian = {name: value.astype(">i8") for name, value in plain.items()}
    read_only = {name: value.copy() for name, value in plain.items()}
    for value in read_only.values():
        value.flags.writeable = False
    narrow = {name: value.astype(np.uint8) for name, value in plain.items()}
    for feeds in (wide, big_endian, read_only, narrow):
        np.testing.assert_array_equal(clf_runner(feeds)["logits"], expected)


# --- TensorRT: the feed checks of a profile (pure functions; no TensorRT needed) -------------------------


def _profile_info(task: str = "text-classification", max_len: int = 64) -> ExportInfo:
    shape: tuple[str, ...] = (
        ("batch_size", "num_choices", "sequence_length")
        if task == "multiple-choice"
        else ("batch_size", "sequence_length")
    )
    return ExportInfo(
        architecture="bert",
        model_type="bert",
        task=task,
        quantization="none",
        opset=17,
        inputs=[TensorSpec(n, "int64", shape) for n in ("input_ids", "attention_mask", "token_type_ids")],
        outputs=[TensorSpec("logits", "float32", ("batch_size", 3))],
        max_sequence_length=max_len,
        vocab_size=VOCAB,
        type_vocab_size=2,
    )


def _ones(*shape: int) -> dict[str, np.ndarray]:
    ids = np.full(shape, 5, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


PROFILE_CASES = {
    "batch over the profile": ((9, 10), r"batch of 9 is over this backend's limit of 8; split the batch"),
    "sequence over the profile, under the export": ((2, 33), r"sequence length 33 is over the limit of 32"),
    "sequence under the profile": ((2, 3), r"sequence length 3 is under this backend's minimum of 4"),
}


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_feeds_outside_a_tensorrt_profile_are_input_errors(case):
    info = _profile_info()
    profile = resolve_profile(info, "input_ids:1x4", "input_ids:4x16", "input_ids:8x32")
    shape, message = PROFILE_CASES[case]
    with pytest.raises(InputError, match=message):
        validate_for_profile(_ones(*shape), info, profile)
    validate_for_profile(_ones(8, 32), info, profile)  # the corners of the profile pass
    validate_for_profile(_ones(1, 4), info, profile)


def test_choices_outside_a_multiple_choice_profile_are_input_errors():
    info = _profile_info("multiple-choice")
    profile = resolve_profile(info, "input_ids:1x1x1", "input_ids:2x2x16", "input_ids:4x3x32")
    with pytest.raises(
        InputError, match=r"input input_ids has shape 2x5x10, outside the engine's optimization"
    ):
        validate_for_profile(_ones(2, 5, 10), info, profile)
    assert validate_for_profile(_ones(2, 3, 10), info, profile)["input_ids"].shape == (2, 3, 10)


def test_tensorrt_runner_tells_pipelines_its_profile_limits():
    """The limits a pipeline reads (to batch, truncate and pad) come from the engine's profile."""
    info = _profile_info()
    runner = TensorRTRunner.__new__(TensorRTRunner)  # no engine: only the profile-derived attributes
    runner.info = info
    runner.profile = resolve_profile(info, "input_ids:1x4", "input_ids:4x16", "input_ids:8x32")
    assert (runner.max_batch_size, runner.max_sequence_length, runner.min_sequence_length) == (8, 32, 4)


class ProfileRunner(BaseRunner):
    """An ONNX Runtime runner held to a TensorRT profile exactly as TensorRTRunner holds its engine to it:
    the same `validate_for_profile` before every call, the same limit properties for the pipelines."""

    backend = "onnxruntime"
    options_class = OrtOptions

    def __init__(self, export_dir: Path, max_batch: int, min_len: int, max_len: int):
        self.runner = OrtRunner(export_dir, cache=False)
        super().__init__(export_dir, info=self.runner.info)
        self.profile = resolve_profile(
            self.info,
            min_shapes=f"input_ids:1x{min_len}",
            max_shapes=f"input_ids:{max_batch}x{max_len}",
            opt_shapes=f"input_ids:1x{min_len}",
        )
        self.limits = profile_limits(self.profile, self.info)
        self.shapes: list[tuple[int, ...]] = []

    @property
    def max_batch_size(self) -> int | None:
        return self.limits["max_batch_size"]

    @property
    def max_sequence_length(self) -> int | None:
        return self.limits["max_sequence_length"]

    @property
    def min_sequence_length(self) -> int:
        return self.limits["min_sequence_length"]

    def _validate(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return validate_for_profile(feeds, self.info, self.profile)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.shapes.append(feeds["input_ids"].shape)
        return self.runner(feeds)


def test_pipeline_truncates_to_the_profile_and_pads_up_to_its_minimum(clf_dir):
    tokenizer = TextTokenizer.from_directory(clf_dir)
    limited = ProfileRunner(clf_dir, max_batch=2, min_len=12, max_len=16)
    pipe = TextClassificationPipeline(limited, tokenizer, batch_size=8, top_k=None)
    free = trt_runtime.pipeline("text-classification", clf_dir, top_k=None)
    short, long = "a good day", " ".join(["the movie was good"] * 10)
    with pytest.warns(UserWarning, match="longer than 16 tokens and were truncated"):
        results = pipe([short, long, short, short, long])
    assert all(batch <= 2 and 12 <= sequence <= 16 for batch, sequence in limited.shapes), limited.shapes
    # padding up to the profile's minimum is masked out: the short texts score as without a profile
    for got, expected in zip(results[::2], free([short, short, short])):
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-4)


# --- pipelines: over-long input is truncated with a warning; empty parts are refused ----------------------

PIPELINES = {
    "token-classification": lambda: tiny_export(
        "bert", "token-classification", sharpen=4.0, id2label=NER_LABELS
    ),
    "fill-mask": lambda: tiny_export("bert", "fill-mask", sharpen=4.0),
    "feature-extraction": lambda: tiny_export("bert", "feature-extraction"),
    "next-sentence-prediction": lambda: tiny_export("bert", "next-sentence-prediction", sharpen=8.0),
    "multiple-choice": lambda: tiny_export("bert", "multiple-choice", sharpen=8.0),
    "question-answering": lambda: tiny_export("bert", "question-answering", sharpen=4.0),
}
LONG = " ".join(["john lives in paris and mary reads a book"] * 12)  # ~110 tokens, the limit is 64


@pytest.fixture(scope="module")
def pipes() -> dict[str, Pipeline]:
    return {task: trt_runtime.pipeline(task, make()[1]) for task, make in PIPELINES.items()}


OVER_LONG = {
    "token-classification": LONG,
    "fill-mask": "the [MASK] day . " + LONG,
    "feature-extraction": LONG,
    "next-sentence-prediction": {"text": LONG, "text_pair": LONG},
    "multiple-choice": {"prompt": LONG, "choices": [LONG, "a good day"]},
}


@pytest.mark.parametrize("task", list(OVER_LONG))
def test_over_long_input_is_truncated_with_a_warning(pipes, task):
    with pytest.warns(UserWarning, match=r"longer than 64 tokens and were truncated; the model did not see"):
        result = pipes[task](OVER_LONG[task])
    if task == "feature-extraction":
        assert np.asarray(result).shape == (1, 64, 32)
    if task == "token-classification":
        assert result and max(entity["index"] for entity in result) < 64


def test_over_long_context_is_split_into_windows_without_a_warning(pipes):
    context = LONG + " john lives in berlin ."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning: the windows cover the whole context
        answer = pipes["question-answering"](question="where does john live ?", context=context)
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_over_long_text_for_a_fill_mask_whose_mask_is_cut_off(pipes):
    with (
        pytest.raises(InputError, match=r"no mask token \(\[MASK\]\) within the first 64 tokens"),
        pytest.warns(UserWarning, match="truncated"),
    ):
        pipes["fill-mask"](LONG + " the [MASK] day")


EMPTY_PARTS = {
    "question-answering question": (
        "question-answering",
        {"question": "  ", "context": "john lives in paris"},
        r"\['question'\] is empty",
    ),
    "question-answering context": (
        "question-answering",
        {"question": "who ?", "context": ""},
        r"\['context'\] is empty",
    ),
    "multiple-choice prompt": (
        "multiple-choice",
        {"prompt": "\n", "choices": ["a", "b"]},
        r"\['prompt'\] is empty",
    ),
    "multiple-choice choice": (
        "multiple-choice",
        {"prompt": "the day", "choices": ["good", " "]},
        r"\['choices'\]\[1\] is empty",
    ),
    "multiple-choice one choice": (
        "multiple-choice",
        {"prompt": "the day", "choices": ["good"]},
        "at least two texts",
    ),
    "next-sentence text_pair": (
        "next-sentence-prediction",
        {"text": "a day", "text_pair": "\t"},
        r"\['text_pair'\] is empty",
    ),
    "feature-extraction empty list": ("feature-extraction", [], "no inputs given"),
    "question-answering empty list": ("question-answering", [], "no inputs given"),
}


@pytest.mark.parametrize("case", list(EMPTY_PARTS))
def test_empty_or_whitespace_parts_of_an_input(pipes, case):
    task, value, message = EMPTY_PARTS[case]
    with pytest.raises(InputError, match=message):
        pipes[task](value)


QA_OPTIONS = {
    "max_seq_len below the question": ({"max_seq_len": 3}, InputError, "leaves no room for the context"),
    "max_seq_len a string": ({"max_seq_len": "64"}, ValueError, "max_seq_len must be an int >= 1"),
    "negative doc_stride": ({"doc_stride": -1}, ValueError, "doc_stride must be an int >= 0"),
    "bool max_answer_len": ({"max_answer_len": True}, ValueError, "max_answer_len must be an int >= 1"),
}


@pytest.mark.parametrize("case", list(QA_OPTIONS))
def test_question_answering_options_that_cannot_work(pipes, case):
    options, error, message = QA_OPTIONS[case]
    with pytest.raises(error, match=message):
        pipes["question-answering"](
            question="where does john live ?", context="john lives in paris . " * 5, **options
        )


def test_tokenizer_with_more_tokens_than_the_model_is_refused_when_the_pipeline_is_made(clf_dir, tmp_path):
    """An added token past the model's vocabulary would reach the embedding Gather with id 99."""
    from tokenizers import Tokenizer

    export_dir = tmp_path / "export"
    shutil.copytree(clf_dir, export_dir, ignore=shutil.ignore_patterns(CACHE_DIR))
    tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    new_tokens = [f"zebra{i}" for i in range(VOCAB + 1 - tokenizer.get_vocab_size())]
    assert (
        tokenizer.add_tokens(new_tokens) == len(new_tokens) and tokenizer.token_to_id(new_tokens[-1]) == VOCAB
    )
    tokenizer.save(str(export_dir / "tokenizer.json"))
    with pytest.raises(
        ExportDirError, match="token ids up to 99, but the model's vocabulary .* has 99 entries"
    ):
        trt_runtime.pipeline("text-classification", export_dir)


# --- property-based: nothing but InputError escapes, and what passes is safe to run ----------------------


def _info(task: str, token_types: bool, max_len: int, vocab: int, types: int) -> ExportInfo:
    shape: tuple[str, ...] = (
        ("batch_size", "num_choices", "sequence_length")
        if task == "multiple-choice"
        else ("batch_size", "sequence_length")
    )
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    return ExportInfo(
        architecture="bert",
        model_type="bert",
        task=task,
        quantization="none",
        opset=17,
        inputs=[TensorSpec(name, "int64", shape) for name in names],
        outputs=[TensorSpec("logits", "float32", ("batch_size", 2))],
        max_sequence_length=max_len,
        vocab_size=vocab,
        type_vocab_size=types if token_types else 1,
    )


INFOS = st.builds(
    _info,
    task=st.sampled_from(["text-classification", "multiple-choice"]),
    token_types=st.booleans(),
    max_len=st.integers(1, 12),
    vocab=st.integers(1, 40),
    types=st.integers(1, 3),
)
ODD_DTYPES = st.sampled_from(
    ["<i8", ">i8", ">i4", "<u2", ">u8", "i1", "u1", "<f4", ">f8", "?", "O", "V8", "M8[s]"]
)


class _BadArray:
    """An array-like whose conversion fails."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise RuntimeError("no array for you")


class _Feeds(Mapping[str, Any]):
    """A read-only Mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@st.composite
def odd_values(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """An input of `shape` (usually) in an unusual form: odd dtypes and byte orders, views, objects."""
    kind = draw(st.sampled_from(["array", "view", "list", "bad", "scalar"]))
    if kind == "bad":
        return _BadArray()
    if kind == "scalar":
        return draw(st.one_of(st.integers(-3, 50), st.floats(allow_nan=True), st.none(), st.text(max_size=2)))
    dtype = np.dtype(draw(ODD_DTYPES))
    if dtype.kind in "OVM":
        return np.zeros(shape, dtype=dtype)
    elements = st.integers(-2, 45) if dtype.kind in "iu" else None
    if dtype.kind == "u":
        elements = st.integers(0, 45)
    if dtype.kind == "i" and dtype.itemsize == 1:
        elements = st.integers(-2, 45)
    value = draw(hnp.arrays(dtype, shape, elements=elements))
    if kind == "view" and value.ndim and value.shape[-1] > 1:
        return value[..., ::-1]  # negative strides
    if kind == "list":
        return value.tolist()
    return value


@st.composite
def feeds_and_info(draw: st.DrawFn) -> tuple[Any, ExportInfo, dict[str, int]]:
    info = draw(INFOS)
    rank = len(info.inputs[0].shape)
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank - 1, max_size=rank + 1))) + (
        draw(st.integers(0, 14)),
    )
    names = draw(st.lists(st.sampled_from(info.input_names + ["labels"]), unique=True, max_size=4))
    feeds = {name: draw(odd_values(shape)) for name in names}
    limits = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "max_batch_size": st.integers(1, 5),
                "max_sequence_length": st.integers(1, 14),
                "min_sequence_length": st.integers(1, 6),
            },
        )
    )
    wrapped = draw(st.sampled_from([dict, _Feeds]))(feeds)
    return wrapped, info, limits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=feeds_and_info())
def test_validate_feeds_any_export_any_limits_raises_only_input_error(case):
    feeds, info, limits = case
    try:
        out = validate_feeds(feeds, info, **limits)
    except InputError:
        return
    ids = out["input_ids"]
    limit = min(info.max_sequence_length, limits.get("max_sequence_length", info.max_sequence_length))
    assert list(out) == info.input_names
    assert all(
        v.dtype == np.dtype(np.int64) and v.dtype.isnative and v.flags.c_contiguous for v in out.values()
    )
    assert all(v.shape == ids.shape for v in out.values()) and ids.size > 0
    assert ids.ndim == len(info.inputs[0].shape)
    assert limits.get("min_sequence_length", 1) <= ids.shape[-1] <= limit
    assert ids.shape[0] <= limits.get("max_batch_size", ids.shape[0])
    assert ids.min() >= 0 and ids.max() < info.vocab_size
    assert set(np.unique(out["attention_mask"])) <= {0, 1}
    if "token_type_ids" in out:
        assert out["token_type_ids"].min() >= 0 and out["token_type_ids"].max() < info.type_vocab_size
    for name, value in feeds.items():  # what was given comes back with the same values
        np.testing.assert_array_equal(out[name], np.asarray(value).astype(np.int64))


@st.composite
def profile_cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], ExportInfo, dict[str, ShapeRange]]:
    info = _profile_info(draw(st.sampled_from(["text-classification", "multiple-choice"])), max_len=16)
    rank = len(info.inputs[0].shape)
    low = [draw(st.integers(1, 3)) for _ in range(rank)]
    high = [lo + draw(st.integers(0, 3)) for lo in low]
    high[-1] = min(high[-1], 16)
    low[-1] = min(low[-1], high[-1])
    shape_range = ShapeRange(tuple(low), tuple(low), tuple(high))
    profile = {spec.name: shape_range for spec in info.inputs}
    shape = tuple(draw(st.integers(0, 7)) for _ in range(draw(st.integers(rank - 1, rank + 1))))
    ids = draw(hnp.arrays(np.int64, shape, elements=st.integers(-1, VOCAB)))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return feeds, info, profile


@settings(max_examples=300, deadline=None)
@given(case=profile_cases())
def test_profile_checks_raise_only_input_error_and_pass_only_shapes_inside(case):
    feeds, info, profile = case
    try:
        out = validate_for_profile(feeds, info, profile)
    except InputError:
        return
    shape_range = profile["input_ids"]
    shape = out["input_ids"].shape
    assert all(lo <= d <= hi for d, lo, hi in zip(shape, shape_range.min, shape_range.max, strict=True))


@pytest.fixture(scope="module")
def fuzz_pipe(clf_dir) -> Pipeline:
    return trt_runtime.pipeline("text-classification", clf_dir, top_k=None)


TEXTS = st.text(
    alphabet=st.one_of(
        st.characters(),  # any code point: controls, NUL, surrogates excluded by hypothesis, RTL, emoji...
        st.sampled_from(list(" \t\n\u00a0\u200b\ufeff#[]")),
    ),
    max_size=300,
)
SPECIAL_TOKENS = st.sampled_from(["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "##s"])
TEXTS = st.lists(st.one_of(TEXTS, SPECIAL_TOKENS), max_size=4).map(" ".join) | TEXTS
PIPELINE_INPUTS = st.one_of(
    TEXTS,
    st.lists(TEXTS, max_size=4),
    st.tuples(TEXTS, TEXTS),
    st.fixed_dictionaries({"text": TEXTS}, optional={"text_pair": st.one_of(TEXTS, st.none())}),
    st.dictionaries(st.sampled_from(["text", "text_pair", "pair"]), TEXTS, max_size=3),
    st.none(),
    st.integers(),
    st.binary(max_size=5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=PIPELINE_INPUTS)
def test_text_classification_pipeline_gives_scores_or_input_error_for_any_input(fuzz_pipe, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation of long texts
        try:
            result = fuzz_pipe(inputs)
        except InputError:
            return
    rows = result if isinstance(inputs, list) else [result]
    assert len(rows) == (len(inputs) if isinstance(inputs, list) else 1)
    for row in rows:
        scores = [entry["score"] for entry in row]
        assert sorted(entry["label"] for entry in row) == ["NEGATIVE", "NEUTRAL", "POSITIVE"]
        assert all(np.isfinite(scores)) and abs(sum(scores) - 1) < 1e-4
