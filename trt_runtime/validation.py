"""Checks on what a caller feeds a runner, before any backend sees it; every backend calls `validate_feeds`.

A bad feed must fail here with a message that names the input, what was expected and how to fix it,
never deep inside ONNX Runtime or TensorRT (an out-of-range token id reaching a Gather reads out of
bounds on a GPU). The rules, in the order they are checked:

- `feeds` is a mapping from input names to arrays (NumPy arrays or anything `np.asarray` reads).
- names: every name is one of the export's inputs; `input_ids` and `attention_mask` are required;
  `token_type_ids`, where the export has it, defaults to zeros (as Hugging Face models default it).
- dtype: integer arrays of any width, signed or unsigned, are accepted and converted to int64 after the
  range checks below (so the conversion never wraps); floats, bools and strings are refused.
- rank and shape: [batch_size, sequence_length] ([batch_size, num_choices, sequence_length] for
  multiple choice); every input has the shape of `input_ids`; no dimension is empty; the sequence is at
  most the export's `max_sequence_length` (or the tighter limits a backend passes, such as a TensorRT
  optimization profile's).
- values: `input_ids` in [0, vocab_size), `token_type_ids` in [0, type_vocab_size), `attention_mask` 0 or 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ExportInfo, TensorSpec

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
#: inputs a caller may leave out, and the value that stands in for them
OPTIONAL_INPUTS = {TOKEN_TYPE_IDS: 0}


class InputError(QbertError, ValueError):
    """Input a model cannot run on (feeds to a runner, text to a pipeline); the message says the fix."""

    code = "input-invalid"


def _expected_names(info: ExportInfo) -> str:
    return ", ".join(info.input_names)


def _layout(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(dim) for dim in spec.shape) + "]"


def _as_integer_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except Exception as e:  # ragged lists, objects whose __array__ fails, ...
            raise InputError(f"{name} cannot be read as an array ({e}); pass a NumPy int64 array") from None
    if array.dtype.kind not in "iu":
        raise InputError(
            f"{name} has dtype {array.dtype}; expected integers (int64; other integer widths are converted). "
            f"Convert it with .astype(np.int64)"
        )
    return array


def _check_range(name: str, array: np.ndarray, low: int, high: int, meaning: str) -> None:
    """All values in [low, high); the message shows the first offender and where it is."""
    if array.size == 0:
        return
    if int(array.min()) >= low and int(array.max()) < high:
        return
    bad = (array < low) | (array >= high)
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise InputError(f"{name}[{', '.join(map(str, where))}] = {int(array[where])} is out of range: {meaning}")


def validate_feeds(
    feeds: Mapping[str, Any],
    info: ExportInfo,
    *,
    max_batch_size: int | None = None,
    max_sequence_length: int | None = None,
    min_sequence_length: int = 1,
) -> dict[str, np.ndarray]:
    """Check `feeds` against the export; return them as C-contiguous int64 arrays in the export's input order.

    max_batch_size / max_sequence_length: tighter limits than export.json's (a TensorRT profile's);
    min_sequence_length likewise. Raises InputError, and nothing else, for any input it refuses.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(
            f"feeds must be a dict of input name -> array, got {type(feeds).__name__}; "
            f"this export takes {_expected_names(info)}"
        )
    specs = {spec.name: spec for spec in info.inputs}
    names = list(feeds.keys())
    unknown = [name for name in names if name not in specs]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown)
        raise InputError(f"unknown input(s) {shown}; this export takes {_expected_names(info)}")
    missing = [name for name in specs if name not in feeds and name not in OPTIONAL_INPUTS]
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}; this export takes {_expected_names(info)}")
    if INPUT_IDS not in specs:
        raise InputError(
            f"this export has no {INPUT_IDS} input ({_expected_names(info)}); re-export the model"
        )

    arrays = {name: _as_integer_array(name, feeds[name]) for name in specs if name in feeds}
    reference = specs[INPUT_IDS]
    ids = arrays[INPUT_IDS]
    if ids.ndim != len(reference.shape):
        raise InputError(
            f"{INPUT_IDS} must have rank {len(reference.shape)} {_layout(reference)}; got shape {ids.shape}"
        )
    for name, array in arrays.items():
        if array.shape != ids.shape:
            raise InputError(
                f"{name} has shape {array.shape} but {INPUT_IDS} has {ids.shape}; every input must have the "
                f"same shape {_layout(specs[name])}"
            )
    for axis, dim in enumerate(reference.shape):
        if isinstance(dim, int) and ids.shape[axis] != dim:
            raise InputError(
                f"{INPUT_IDS} dimension {axis} must be {dim} {_layout(reference)}; got shape {ids.shape}"
            )
    axis_names = [str(dim) for dim in reference.shape]
    for axis, size in enumerate(ids.shape):
        if size == 0:
            what = "empty batch" if axis == 0 else f"empty {axis_names[axis]} dimension"
            raise InputError(f"{what}: {INPUT_IDS} has shape {ids.shape}; pass at least one token per row")

    batch, sequence = ids.shape[0], ids.shape[-1]
    if max_batch_size is not None and batch > max_batch_size:
        raise InputError(
            f"batch of {batch} is over this backend's limit of {max_batch_size}; split the batch"
        )
    limit = (
        info.max_sequence_length
        if max_sequence_length is None
        else min(max_sequence_length, info.max_sequence_length)
    )
    if sequence > limit:
        raise InputError(
            f"sequence length {sequence} is over the limit of {limit} tokens; truncate the input "
            f"(the pipelines do that with a warning)"
        )
    if sequence < min_sequence_length:
        raise InputError(
            f"sequence length {sequence} is under this backend's minimum of {min_sequence_length}"
        )

    _check_range(INPUT_IDS, ids, 0, info.vocab_size, f"token ids must be in [0, {info.vocab_size})")
    if ATTENTION_MASK in arrays:
        _check_range(ATTENTION_MASK, arrays[ATTENTION_MASK], 0, 2, "attention_mask values must be 0 or 1")
    if TOKEN_TYPE_IDS in arrays:
        types = info.type_vocab_size
        _check_range(
            TOKEN_TYPE_IDS, arrays[TOKEN_TYPE_IDS], 0, types, f"token type ids must be in [0, {types})"
        )

    validated: dict[str, np.ndarray] = {}
    for name in specs:
        if name in arrays:
            validated[name] = np.ascontiguousarray(arrays[name], dtype=np.int64)
        else:
            validated[name] = np.full(ids.shape, OPTIONAL_INPUTS[name], dtype=np.int64)
    return validated
