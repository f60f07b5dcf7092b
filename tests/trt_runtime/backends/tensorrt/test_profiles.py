"""Optimization profiles (trt_runtime.backends.tensorrt.profiles): trtexec-style shape strings, defaults from export.json,
and the runner's check of input shapes against a profile."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.tensorrt_test_models import export_info
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
from trt_runtime.backends.tensorrt.runner import profile_limits, validate_for_profile
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
