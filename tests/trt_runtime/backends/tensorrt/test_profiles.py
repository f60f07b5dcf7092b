"""Optimization profiles (trt_runtime.backends.tensorrt.profiles): trtexec-style shape strings, defaults from export.json,
and the runner's check of input shapes against a profile."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import trt_runtime
from tests.fixtures.export_infos import text_model_info
from tests.fixtures.tensorrt_test_models import export_info
from tests.fixtures.tiny_models import VOCAB
from trt_runtime.backends.base import BaseRunner
from trt_runtime.backends.onnxruntime.options import OrtOptions
from trt_runtime.backends.onnxruntime.runner import OrtRunner
from trt_runtime.backends.tensorrt.profiles import (
    ProfileError,
    ShapeRange,
    bucket_profiles,
    check_feeds_in_profile,
    check_shape_in_profile,
    format_shapes,
    parse_buckets,
    parse_shapes,
    profile_from_dict,
    profile_to_dict,
    resolve_profile,
    select_profile,
)
from trt_runtime.backends.tensorrt.runner import TensorRTRunner, profile_limits, validate_for_profile
from trt_runtime.contract.export_dir import ExportInfo
from trt_runtime.pipelines.text_classification import TextClassificationPipeline
from trt_runtime.tokenization import TextTokenizer
from trt_runtime.validation import InputError

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def test_parse_shapes_trtexec_format():
    assert parse_shapes("input_ids:1x128,attention_mask:1X128") == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    assert parse_shapes(" input_ids:4x2x64 ,") == {"input_ids": (4, 2, 64)}
    shapes = {"input_ids": (8, 128), "attention_mask": (8, 128)}
    assert parse_shapes(format_shapes(shapes)) == shapes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input_ids=1x128", "is not NAME:DIMS"),
        ("input_ids:1xabc", "not integers"),
        ("input_ids:0x128", "below 1"),
        ("input_ids:1x1,input_ids:2x2", "given twice"),
        ("", "no shapes given"),
    ],
)
def test_parse_shapes_errors(text, message):
    with pytest.raises(ProfileError, match=message):
        parse_shapes(text, "--opt")


def test_default_profile_from_export_json():
    profile = resolve_profile(export_info(max_len=64))
    assert list(profile) == list(NAMES)
    for name in NAMES:
        assert profile[name] == ShapeRange((1, 1), (8, 64), (32, 64))  # opt sequence 128 capped at 64


def test_default_profile_long_sequences():
    profile = resolve_profile(export_info(max_len=512))
    assert profile["input_ids"] == ShapeRange((1, 1), (8, 128), (32, 512))


def test_default_profile_multiple_choice_is_3d():
    profile = resolve_profile(export_info(multiple_choice=True, max_len=256))
    assert profile["input_ids"] == ShapeRange((1, 1, 1), (4, 4, 128), (16, 8, 256))


def test_shape_for_one_input_sets_the_shared_axes():
    profile = resolve_profile(export_info(max_len=512), min_shapes="input_ids:2x16", opt_shapes="attention_mask:4x64",
                              max_shapes="token_type_ids:16x256")
    for name in NAMES:
        assert profile[name] == ShapeRange((2, 16), (4, 64), (16, 256))


def test_cli_shapes_override_per_level_only():
    profile = resolve_profile(export_info(max_len=512), max_shapes="input_ids:64x384")
    assert profile["input_ids"] == ShapeRange((1, 1), (8, 128), (64, 384))


def test_mappings_are_accepted_too():
    profile = resolve_profile(export_info(), opt_shapes={"input_ids": (2, 32)})
    assert profile["token_type_ids"].opt == (2, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opt_shapes": "input_ids:8x128"}, r"dimension 1 \(sequence_length\) needs min <= opt <= max, got min 1x1, opt 8x128, max 32x64"),
        ({"max_shapes": "input_ids:32x65"}, r"sequence_length 65 is over the export's max_sequence_length 64"),
        ({"min_shapes": "input_ids:4x8", "opt_shapes": "input_ids:2x8"}, r"needs min <= opt <= max.*min 4x8, opt 2x8"),
        ({"opt_shapes": "input_ids:2x8,attention_mask:4x8"}, r"batch_size is 2 for input_ids but 4 for attention_mask"),
        ({"opt_shapes": "input_ids:2x8x3"}, r"input_ids has 3 dimensions \(2x8x3\) but the model's input_ids has 2"),
        ({"opt_shapes": "pixel_values:1x3"}, r"unknown input 'pixel_values'; this model's inputs are input_ids"),
    ],
)
def test_profile_errors_name_the_problem(kwargs, message):
    with pytest.raises(ProfileError, match=message):
        resolve_profile(export_info(max_len=64), **kwargs)


def test_unknown_dynamic_axis_needs_explicit_shapes():
    info = export_info()
    info.inputs[0] = type(info.inputs[0])("input_ids", "int64", ("batch_size", "chunks"))
    with pytest.raises(ProfileError, match="dynamic axis 'chunks' with no default range; give it with --min/--opt/--max"):
        resolve_profile(info)


def test_static_dimension_must_match():
    info = export_info()
    info.inputs = [type(info.inputs[0])("input_ids", "int64", ("batch_size", 16))]
    assert resolve_profile(info)["input_ids"] == ShapeRange((1, 16), (8, 16), (32, 16))
    with pytest.raises(ProfileError, match="fixed at 16 cannot change"):
        resolve_profile(info, max_shapes="input_ids:4x32")


def test_profile_dict_round_trip():
    profile = resolve_profile(export_info(multiple_choice=True))
    assert profile_from_dict(profile_to_dict(profile)) == profile


SHAPE_RANGE = ShapeRange((1, 1), (8, 128), (32, 512))


@pytest.mark.parametrize("shape", [(1, 1), (32, 512), (7, 300)])
def test_shapes_inside_the_profile_pass(shape):
    check_shape_in_profile("input_ids", shape, SHAPE_RANGE)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((33, 16), r"input input_ids has shape 33x16, outside the engine's optimization profile \(min 1x1, max 32x512\)"),
        ((4, 513), r"shape 4x513, outside"),
        ((0, 5), r"shape 0x5, outside"),
        ((4, 2, 16), r"shape 4x2x16, outside"),
    ],
)
def test_shapes_outside_the_profile_name_input_shape_and_range(shape, message):
    with pytest.raises(ProfileError, match=message) as error:
        check_shape_in_profile("input_ids", shape, SHAPE_RANGE)
    assert "python -m trt_runtime build" in str(error.value)


def test_feeds_against_profile():
    profile = resolve_profile(export_info(max_len=64))
    check_feeds_in_profile({"input_ids": (2, 10), "attention_mask": (2, 10)}, profile)
    with pytest.raises(ProfileError, match="input pixel_values is not in the engine's profile"):
        check_feeds_in_profile({"pixel_values": (2, 10)}, profile)


def test_profile_limits_for_feed_validation():
    info = export_info(max_len=64)
    profile = resolve_profile(info, min_shapes="input_ids:1x4")
    assert profile_limits(profile, info) == {"max_batch_size": 32, "max_sequence_length": 64, "min_sequence_length": 4}
    mc = export_info(multiple_choice=True)
    assert profile_limits(resolve_profile(mc), mc)["max_batch_size"] == 16


# --------------------------------------------------------------------------------------------------
# sequence-length buckets: several profiles, the smallest that fits chosen per call


def _feeds(batch: int, length: int) -> dict[str, tuple[int, int]]:
    return {name: (batch, length) for name in NAMES}


def test_buckets_cover_every_length_once():
    info = export_info(max_len=512)
    profiles = bucket_profiles(resolve_profile(info), info, parse_buckets("128, 64,256"))
    ranges = [(p["input_ids"].min, p["input_ids"].opt, p["input_ids"].max) for p in profiles]
    assert ranges == [((1, 1), (8, 64), (32, 64)), ((1, 65), (8, 128), (32, 128)),
                      ((1, 129), (8, 256), (32, 256)), ((1, 257), (8, 512), (32, 512))]
    for length in range(1, 513):  # each length in exactly one profile, the one select_profile picks
        holding = [i for i, p in enumerate(profiles) if p["input_ids"].min[1] <= length <= p["input_ids"].max[1]]
        assert holding == [select_profile(_feeds(3, length), profiles)]


def test_multiple_choice_buckets_keep_the_choices_axis():
    info = export_info(multiple_choice=True, max_len=64)
    profiles = bucket_profiles(resolve_profile(info), info, (32,))
    assert [p["input_ids"].max for p in profiles] == [(16, 8, 32), (16, 8, 64)]
    assert select_profile({n: (2, 4, 40) for n in NAMES}, profiles) == 1


def test_smallest_profile_that_fits():
    info = export_info(max_len=128)
    wide = resolve_profile(info, max_shapes="input_ids:32x128")
    narrow = resolve_profile(info, opt_shapes="input_ids:4x64", max_shapes="input_ids:8x128")
    assert select_profile(_feeds(4, 100), [wide, narrow]) == 1  # both fit; the smaller wins
    assert select_profile(_feeds(16, 100), [wide, narrow]) == 0
    with pytest.raises(ProfileError, match=r"fit none of the engine's 2 optimization profiles"):
        select_profile(_feeds(64, 10), [wide, narrow])


@pytest.mark.parametrize(("text", "message"), [("64,abc", "give sequence lengths"), ("0,64", "at least 1"),
                                               (",", "at least 1")])
def test_bad_buckets(text, message):
    with pytest.raises(ProfileError, match=message):
        parse_buckets(text)


def test_buckets_past_the_longest_sequence_are_refused():
    info = export_info(max_len=128)
    with pytest.raises(ProfileError, match=r"\[256\] are over the profile's longest sequence 128"):
        bucket_profiles(resolve_profile(info), info, (64, 256))


def test_runner_limits_and_validation_over_several_profiles():
    info = export_info(max_len=256)
    profiles = bucket_profiles(resolve_profile(info, max_shapes="input_ids:16x256"), info, (64,))
    assert profile_limits(profiles, info) == {"max_batch_size": 16, "max_sequence_length": 256, "min_sequence_length": 1}
    ids = np.ones((2, 100), np.int64)
    arrays = validate_for_profile({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0}, info, profiles)
    assert arrays["input_ids"].shape == (2, 100)
    with pytest.raises(InputError, match="over this backend's limit of 16"):
        validate_for_profile({"input_ids": np.ones((17, 10), np.int64), "attention_mask": np.ones((17, 10), np.int64),
                              "token_type_ids": np.zeros((17, 10), np.int64)}, info, profiles)


# --- the feed checks of a profile (pure functions; no TensorRT needed) ---------------------------------------

def _profile_info(task: str = "text-classification", max_len: int = 64) -> ExportInfo:
    return text_model_info(task, max_len=max_len, vocab_size=VOCAB)


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
