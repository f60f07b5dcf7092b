"""Optimization profiles (trt_runtime.backends.tensorrt.profiles): trtexec-style shape strings, defaults from export.json,
and the runner's check of input shapes against a profile."""

from __future__ import annotations

import pytest

from tests.fixtures.tensorrt_test_models import export_info
from trt_runtime.backends.tensorrt.profiles import (
    ProfileError,
    ShapeRange,
    check_feeds_in_profile,
    check_shape_in_profile,
    format_shapes,
    parse_shapes,
    profile_from_dict,
    profile_to_dict,
    resolve_profile,
)
from trt_runtime.backends.tensorrt.runner import profile_limits

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
