"""validate_feeds: each bad feed gives its documented InputError, and nothing else ever escapes it.

The ONNX Runtime half checks that the runner calls it first: a bad feed never reaches onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.fixtures.export_infos import text_model_info
from trt_runtime.contract.export_dir import ExportInfo
from trt_runtime.validation import InputError, validate_feeds

SEQ = ("batch_size", "sequence_length")


def make_info(task: str = "text-classification", token_types: bool = True, max_len: int = 16) -> ExportInfo:
    return text_model_info(task, token_types, max_len)


def good_feeds(batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    ids = np.arange(batch * seq, dtype=np.int64).reshape(batch, seq) % 50
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_good_feeds_pass_unchanged_as_int64_in_export_order():
    feeds = good_feeds()
    out = validate_feeds({k: feeds[k] for k in reversed(list(feeds))}, make_info())
    assert list(out) == ["input_ids", "attention_mask", "token_type_ids"]
    for name in feeds:
        np.testing.assert_array_equal(out[name], feeds[name])
        assert out[name].dtype == np.int64 and out[name].flags.c_contiguous


def test_narrower_integer_dtypes_are_converted():
    feeds = {k: v.astype(np.int32 if k == "input_ids" else np.uint8) for k, v in good_feeds().items()}
    out = validate_feeds(feeds, make_info())
    assert all(v.dtype == np.int64 for v in out.values())
    np.testing.assert_array_equal(out["input_ids"], good_feeds()["input_ids"])


def test_lists_are_read_as_arrays():
    out = validate_feeds({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 0]]}, make_info())
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 0]])


def test_missing_token_type_ids_default_to_zeros():
    feeds = good_feeds()
    del feeds["token_type_ids"]
    out = validate_feeds(feeds, make_info())
    np.testing.assert_array_equal(out["token_type_ids"], np.zeros((2, 5), dtype=np.int64))


def test_feeds_must_be_a_mapping():
    with pytest.raises(InputError, match="feeds must be a dict.*input_ids, attention_mask, token_type_ids"):
        validate_feeds([np.zeros((1, 2))], make_info())


def test_unknown_name_names_the_expected_inputs():
    feeds = {**good_feeds(), "position_ids": np.zeros((2, 5), dtype=np.int64)}
    with pytest.raises(
        InputError,
        match=r"unknown input\(s\) 'position_ids'; this export takes input_ids, attention_mask, token_type_ids",
    ):
        validate_feeds(feeds, make_info())


def test_token_type_ids_for_a_model_without_them_is_unknown():
    with pytest.raises(InputError, match="unknown input.*'token_type_ids'.*takes input_ids, attention_mask$"):
        validate_feeds(good_feeds(), make_info(token_types=False))


def test_missing_attention_mask():
    feeds = good_feeds()
    del feeds["attention_mask"]
    with pytest.raises(InputError, match=r"missing input\(s\) attention_mask; this export takes"):
        validate_feeds(feeds, make_info())


def test_float_dtype_is_refused_with_the_fix():
    feeds = {**good_feeds(), "input_ids": good_feeds()["input_ids"].astype(np.float32)}
    with pytest.raises(
        InputError, match=r"input_ids has dtype float32; expected integers.*astype\(np.int64\)"
    ):
        validate_feeds(feeds, make_info())


def test_bool_mask_is_refused():
    feeds = {**good_feeds(), "attention_mask": np.ones((2, 5), dtype=bool)}
    with pytest.raises(InputError, match="attention_mask has dtype bool"):
        validate_feeds(feeds, make_info())


def test_ragged_lists_are_refused():
    with pytest.raises(InputError, match="input_ids cannot be read as an array"):
        validate_feeds({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}, make_info())


def test_wrong_rank():
    feeds = {k: v[0] for k, v in good_feeds().items()}
    with pytest.raises(
        InputError, match=r"input_ids must have rank 2 \[batch_size, sequence_length\]; got shape \(5,\)"
    ):
        validate_feeds(feeds, make_info())


def test_multiple_choice_needs_rank_3():
    with pytest.raises(InputError, match=r"rank 3 \[batch_size, num_choices, sequence_length\]"):
        validate_feeds(good_feeds(), make_info("multiple-choice"))


def test_empty_batch():
    feeds = {k: v[:0] for k, v in good_feeds().items()}
    with pytest.raises(InputError, match=r"empty batch: input_ids has shape \(0, 5\)"):
        validate_feeds(feeds, make_info())


def test_empty_sequence():
    feeds = {k: v[:, :0] for k, v in good_feeds().items()}
    with pytest.raises(InputError, match="empty sequence_length dimension"):
        validate_feeds(feeds, make_info())


def test_over_long_sequence_names_the_limit():
    with pytest.raises(InputError, match="sequence length 17 is over the limit of 16 tokens; truncate"):
        validate_feeds(good_feeds(seq=17), make_info(max_len=16))


def test_backend_limits_are_tighter():
    with pytest.raises(InputError, match="batch of 3 is over this backend's limit of 2"):
        validate_feeds(good_feeds(batch=3), make_info(), max_batch_size=2)
    with pytest.raises(InputError, match="over the limit of 4 tokens"):
        validate_feeds(good_feeds(), make_info(), max_sequence_length=4)


def test_out_of_vocabulary_id_names_where():
    feeds = good_feeds()
    feeds["input_ids"][1, 3] = 50
    with pytest.raises(
        InputError, match=r"input_ids\[1, 3\] = 50 is out of range: token ids must be in \[0, 50\)"
    ):
        validate_feeds(feeds, make_info())


def test_negative_id():
    feeds = good_feeds()
    feeds["input_ids"][0, 0] = -1
    with pytest.raises(InputError, match=r"input_ids\[0, 0\] = -1 is out of range"):
        validate_feeds(feeds, make_info())


def test_huge_unsigned_id_does_not_wrap():
    feeds = {**good_feeds(), "input_ids": np.full((2, 5), 2**64 - 1, dtype=np.uint64)}
    with pytest.raises(InputError, match=r"= 18446744073709551615 is out of range"):
        validate_feeds(feeds, make_info())


def test_bad_mask_value():
    feeds = good_feeds()
    feeds["attention_mask"][0, 2] = 2
    with pytest.raises(
        InputError, match=r"attention_mask\[0, 2\] = 2 is out of range: attention_mask values must be 0 or 1"
    ):
        validate_feeds(feeds, make_info())


def test_token_type_out_of_range():
    feeds = good_feeds()
    feeds["token_type_ids"][1, 1] = 2
    with pytest.raises(
        InputError, match=r"token_type_ids\[1, 1\] = 2 is out of range: token type ids must be in \[0, 2\)"
    ):
        validate_feeds(feeds, make_info())


def test_mismatched_shapes():
    feeds = good_feeds()
    feeds["attention_mask"] = feeds["attention_mask"][:, :4]
    with pytest.raises(InputError, match=r"attention_mask has shape \(2, 4\) but input_ids has \(2, 5\)"):
        validate_feeds(feeds, make_info())


# --- property: any input whatsoever gives valid feeds or an InputError --------------------------------

NAMES = st.sampled_from(["input_ids", "attention_mask", "token_type_ids", "labels", ""])
DTYPES = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.boolean_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
    hnp.complex_number_dtypes(),
)
ARRAYS = DTYPES.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
)
SMALL_INT_ARRAYS = hnp.arrays(  # shapes and values near the limits
    st.sampled_from([np.int64, np.int32, np.int16, np.int8]),
    st.tuples(st.integers(0, 3), st.integers(0, 20)),
    elements=st.integers(-3, 60),
)
VALUES = st.one_of(
    ARRAYS,
    SMALL_INT_ARRAYS,
    st.none(),
    st.integers(),
    st.text(max_size=3),
    st.lists(st.lists(st.integers(-(2**70), 2**70), max_size=3), max_size=3),
)


def _is_valid(out: dict[str, np.ndarray], info: ExportInfo) -> bool:
    ids = out["input_ids"]
    return (
        list(out) == info.input_names
        and all(v.dtype == np.int64 and v.shape == ids.shape and v.size > 0 for v in out.values())
        and ids.ndim == 2
        and ids.shape[1] <= info.max_sequence_length
        and ids.min() >= 0
        and ids.max() < info.vocab_size
        and set(np.unique(out["attention_mask"])) <= {0, 1}
        and out["token_type_ids"].min() >= 0
        and out["token_type_ids"].max() < info.type_vocab_size
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds=st.one_of(st.dictionaries(NAMES, VALUES, max_size=4), VALUES))
def test_validate_feeds_raises_only_input_error(feeds):
    info = make_info()
    try:
        out = validate_feeds(feeds, info)
    except InputError:
        return
    assert _is_valid(out, info)


@st.composite
def same_shape_feeds(draw):
    """Feeds of one shape with values near the limits: mostly valid, sometimes just out of range."""
    shape = draw(st.tuples(st.integers(0, 3), st.integers(0, 20)))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.int16, np.int8]))
    return {
        "input_ids": draw(hnp.arrays(dtype, shape, elements=st.integers(-1, 50))),
        "attention_mask": draw(hnp.arrays(dtype, shape, elements=st.integers(-1, 2))),
        "token_type_ids": draw(hnp.arrays(dtype, shape, elements=st.integers(-1, 2))),
    }


@settings(max_examples=200, deadline=None)
@given(feeds=same_shape_feeds())
def test_validate_feeds_on_plausible_int_feeds(feeds):
    info = make_info()
    try:
        out = validate_feeds(feeds, info)
    except InputError as e:
        assert str(e).split("[")[0] in feeds or "empty" in str(e) or "over the limit" in str(e), str(e)
        return
    assert _is_valid(out, info)
    for name in feeds:
        np.testing.assert_array_equal(out[name], feeds[name])


# --- property-based: nothing but InputError escapes, and what passes is safe to run --------------------------

def _info(task: str, token_types: bool, max_len: int, vocab: int, types: int) -> ExportInfo:
    return text_model_info(task, token_types, max_len, vocab_size=vocab, type_vocab_size=types, labels=2)


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
