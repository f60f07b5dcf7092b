"""TensorRT optimization profiles: the (min, opt, max) shape of every input, as plain data.

An engine runs only on input shapes inside its profile, so the builder, engine.json and the runner
share this one definition. Everything here is pure Python: the CPU tests cover it without TensorRT.

Shapes on the command line use trtexec's format: `input_ids:1x128,attention_mask:1x128`. A shape
given for one input also fixes the named axes (batch_size, sequence_length, num_choices) it shares
with the others, so `--opt input_ids:8x128` is enough for a model with three inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ExportInfo, TensorSpec

Shape = tuple[int, ...]

BATCH_SIZE = "batch_size"
SEQUENCE_LENGTH = "sequence_length"
NUM_CHOICES = "num_choices"
#: default (min, opt, max) per named axis; sequence_length's max (and so opt's cap) is the export's
#: max_sequence_length. Multiple choice multiplies batch by choices, so its batch range is smaller.
DEFAULT_AXIS_RANGES: dict[str, tuple[int, int, int]] = {
    BATCH_SIZE: (1, 8, 32),
    SEQUENCE_LENGTH: (1, 128, 512),
    NUM_CHOICES: (1, 4, 8),
}
MULTIPLE_CHOICE_BATCH = (1, 4, 16)


class ProfileError(QbertError, ValueError):
    """A profile that cannot be built or an input shape outside one; the message says the fix."""

    code = "profile-invalid"


@dataclass(frozen=True)
class ShapeRange:
    """The shapes one input may take: every dimension of min <= opt <= max."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapeRange:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


#: input name -> its shape range; one optimization profile
Profile = dict[str, ShapeRange]


def profile_to_dict(profile: Profile) -> dict[str, dict[str, list[int]]]:
    return {name: shape_range.to_dict() for name, shape_range in profile.items()}


def profile_from_dict(data: Mapping[str, Any]) -> Profile:
    return {str(name): ShapeRange.from_dict(value) for name, value in data.items()}


def format_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def format_shapes(shapes: Mapping[str, Shape]) -> str:
    """The trtexec spelling, `input_ids:1x128,attention_mask:1x128`."""
    return ",".join(f"{name}:{format_shape(shape)}" for name, shape in shapes.items())


def parse_shapes(text: str, option: str = "shapes") -> dict[str, Shape]:
    """Parse trtexec's shape list `name:AxBxC,name2:AxB` into {name: (A, B, C), ...}."""
    shapes: dict[str, Shape] = {}
    example = "input_ids:1x128,attention_mask:1x128"
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ProfileError(f"{option}: {item!r} is not NAME:DIMS; write e.g. {example}")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ProfileError(f"{option}: {item!r} has dimensions that are not integers; write e.g. {example}") from None
        if any(d < 1 for d in shape):
            raise ProfileError(f"{option}: {item!r} has a dimension below 1; every dimension must be at least 1")
        if name in shapes:
            raise ProfileError(f"{option}: input {name!r} is given twice")
        shapes[name] = shape
    if not shapes:
        raise ProfileError(f"{option}: no shapes given; write e.g. {example}")
    return shapes


def default_axis_ranges(info: ExportInfo) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) per named axis for this export, opt capped at max."""
    ranges = dict(DEFAULT_AXIS_RANGES)
    if any(NUM_CHOICES in spec.shape for spec in info.inputs):
        ranges[BATCH_SIZE] = MULTIPLE_CHOICE_BATCH
    max_len = int(info.max_sequence_length)
    if max_len < 1:
        raise ProfileError(f"export.json has max_sequence_length {max_len}; re-export the model")
    ranges[SEQUENCE_LENGTH] = (1, min(DEFAULT_AXIS_RANGES[SEQUENCE_LENGTH][1], max_len), max_len)
    return {axis: (lo, min(opt, hi), hi) for axis, (lo, opt, hi) in ranges.items()}


def _learn_axes(
    inputs: list[TensorSpec], given: Mapping[str, Shape], which: str, option: str
) -> dict[str, int]:
    """Named-axis sizes implied by the shapes given for some inputs; conflicting sizes are an error."""
    specs = {spec.name: spec for spec in inputs}
    axes: dict[str, int] = {}
    seen_from: dict[str, str] = {}
    for name, shape in given.items():
        if name not in specs:
            raise ProfileError(
                f"{option}: unknown input {name!r}; this model's inputs are {', '.join(specs)}"
            )
        spec = specs[name]
        if len(shape) != len(spec.shape):
            raise ProfileError(
                f"{option}: {name} has {len(shape)} dimensions ({format_shape(shape)}) but the model's {name} "
                f"has {len(spec.shape)} {list(spec.shape)}"
            )
        for dim, size in zip(spec.shape, shape):
            if isinstance(dim, int):
                if size != dim:
                    raise ProfileError(
                        f"{option}: {name} is {format_shape(shape)} but its dimension fixed at {dim} cannot change "
                        f"({list(spec.shape)})"
                    )
                continue
            if dim in axes and axes[dim] != size:
                raise ProfileError(
                    f"{option}: {which} {dim} is {axes[dim]} for {seen_from[dim]} but {size} for {name}; inputs "
                    f"that share an axis must agree"
                )
            axes[dim] = size
            seen_from[dim] = name
    return axes


def resolve_profile(
    info: ExportInfo,
    min_shapes: str | Mapping[str, Shape] | None = None,
    opt_shapes: str | Mapping[str, Shape] | None = None,
    max_shapes: str | Mapping[str, Shape] | None = None,
) -> Profile:
    """The optimization profile for `info`'s inputs: shapes given (CLI strings or mappings) over defaults.

    Each of min/opt/max is resolved separately: sizes of named axes come from the shapes given for
    that level (shared between inputs), else from `default_axis_ranges`. The result is checked:
    min <= opt <= max on every dimension, sequence_length at most max_sequence_length.
    """
    defaults = default_axis_ranges(info)
    levels: list[dict[str, int]] = []
    for index, (option, given) in enumerate((("--min", min_shapes), ("--opt", opt_shapes), ("--max", max_shapes))):
        if isinstance(given, str):
            given = parse_shapes(given, option)
        axes = _learn_axes(info.inputs, given or {}, option.lstrip("-"), option)
        levels.append(axes)
        for spec in info.inputs:
            for dim in spec.shape:
                if isinstance(dim, str) and dim not in axes:
                    if dim not in defaults:
                        raise ProfileError(
                            f"input {spec.name} has a dynamic axis {dim!r} with no default range; give it with "
                            f"--min/--opt/--max (e.g. {spec.name}:{format_shape(tuple(1 for _ in spec.shape))})"
                        )
                    axes[dim] = defaults[dim][index]

    profile: Profile = {}
    for spec in info.inputs:
        shapes = [
            tuple(dim if isinstance(dim, int) else level[dim] for dim in spec.shape) for level in levels
        ]
        shape_range = ShapeRange(*shapes)
        _check_range(spec, shape_range)
        profile[spec.name] = shape_range
    max_len = info.max_sequence_length
    for spec in info.inputs:
        if SEQUENCE_LENGTH in spec.shape:
            longest = profile[spec.name].max[spec.shape.index(SEQUENCE_LENGTH)]
            if longest > max_len:
                raise ProfileError(
                    f"--max: sequence_length {longest} is over the export's max_sequence_length {max_len} "
                    f"(the model has no position embeddings beyond it); use at most {max_len}"
                )
    return profile


def _check_range(spec: TensorSpec, shape_range: ShapeRange) -> None:
    for axis, (lo, opt, hi) in enumerate(zip(shape_range.min, shape_range.opt, shape_range.max)):
        if not lo <= opt <= hi:
            raise ProfileError(
                f"profile for {spec.name}: dimension {axis} ({spec.shape[axis]}) needs min <= opt <= max, got "
                f"min {format_shape(shape_range.min)}, opt {format_shape(shape_range.opt)}, "
                f"max {format_shape(shape_range.max)}; fix --min/--opt/--max"
            )


def check_shape_in_profile(name: str, shape: Shape, shape_range: ShapeRange) -> None:
    """Raise ProfileError unless `shape` lies inside the profile's range for input `name`."""
    shape = tuple(int(d) for d in shape)
    inside = len(shape) == len(shape_range.min) and all(
        lo <= d <= hi for d, lo, hi in zip(shape, shape_range.min, shape_range.max)
    )
    if not inside:
        raise ProfileError(
            f"input {name} has shape {format_shape(shape) or '()'}, outside the engine's optimization profile "
            f"(min {format_shape(shape_range.min)}, max {format_shape(shape_range.max)}); split or truncate the "
            f"input, or rebuild with a wider profile: python -m trt_runtime build DIR --max {name}:..."
        )


def check_feeds_in_profile(shapes: Mapping[str, Shape], profile: Profile) -> None:
    """Every fed input inside the profile; inputs the profile does not know are an error too."""
    for name, shape in shapes.items():
        if name not in profile:
            raise ProfileError(f"input {name} is not in the engine's profile ({', '.join(profile)}); rebuild the engine")
        check_shape_in_profile(name, shape, profile[name])


def parse_buckets(text: str | None) -> tuple[int, ...] | None:
    """`--sequence-buckets 64,128,256` -> (64, 128, 256): sorted, unique, each at least 1."""
    if text is None:
        return None
    try:
        buckets = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ProfileError(f"--sequence-buckets {text!r}: give sequence lengths, e.g. 64,128,256,512") from None
    if not buckets or buckets[0] < 1:
        raise ProfileError(f"--sequence-buckets {text!r}: give sequence lengths of at least 1, e.g. 64,128,256,512")
    return tuple(buckets)


def bucket_profiles(profile: Profile, info: ExportInfo, buckets: tuple[int, ...]) -> list[Profile]:
    """One profile per sequence-length bucket, as demo/BERT builds one per sequence length
    (NVIDIA/TensorRT v10.13.0 demo/BERT/builder.py:343-371): bucket k covers sequence lengths
    (bucket k-1, bucket k] with opt = max = bucket k; the other axes keep `profile`'s ranges. Buckets past
    the profile's longest sequence are an error; the longest sequence itself always gets a bucket."""
    longest = max(
        (r.max[spec.shape.index(SEQUENCE_LENGTH)] for spec in info.inputs if SEQUENCE_LENGTH in spec.shape
         for r in [profile[spec.name]]),
        default=None,
    )
    if longest is None:
        raise ProfileError("--sequence-buckets: the model's inputs have no sequence_length axis")
    too_long = [b for b in buckets if b > longest]
    if too_long:
        raise ProfileError(
            f"--sequence-buckets {','.join(map(str, buckets))}: {too_long} are over the profile's longest sequence "
            f"{longest}; use at most {longest} (or raise --max)"
        )
    bounds = sorted(set(buckets) | {longest})
    profiles = []
    low = 1
    for high in bounds:
        bucket: Profile = {}
        for spec in info.inputs:
            shape_range = profile[spec.name]
            if SEQUENCE_LENGTH not in spec.shape:
                bucket[spec.name] = shape_range
                continue
            axis = spec.shape.index(SEQUENCE_LENGTH)
            lo = max(low, shape_range.min[axis])
            if lo > high:
                break

            def with_sequence(shape: Shape, value: int, axis: int = axis) -> Shape:
                return shape[:axis] + (value,) + shape[axis + 1 :]

            bucket[spec.name] = ShapeRange(
                with_sequence(shape_range.min, lo), with_sequence(shape_range.opt, high), with_sequence(shape_range.max, high)
            )
        else:
            profiles.append(bucket)
        low = high + 1
    return profiles


def _contains(profile: Profile, shapes: Mapping[str, Shape]) -> bool:
    try:
        check_feeds_in_profile(shapes, profile)
    except ProfileError:
        return False
    return True


def select_profile(shapes: Mapping[str, Shape], profiles: list[Profile]) -> int:
    """Index of the smallest profile (by the volume of its max shapes) that holds every input's shape;
    ProfileError naming the shapes and the profiles' limits when none does."""
    fitting = [index for index, profile in enumerate(profiles) if _contains(profile, shapes)]
    if not fitting:
        if len(profiles) == 1:
            check_feeds_in_profile(shapes, profiles[0])  # its own, more specific message
        ranges = "; ".join(
            ", ".join(f"{name} {format_shape(r.min)}..{format_shape(r.max)}" for name, r in profile.items())
            for profile in profiles
        )
        given = ", ".join(f"{name} {format_shape(tuple(shape))}" for name, shape in shapes.items())
        raise ProfileError(
            f"inputs {given} fit none of the engine's {len(profiles)} optimization profiles ({ranges}); split or "
            f"truncate the input, or rebuild with wider profiles"
        )

    def size(index: int) -> tuple[int, int]:
        volume = 1
        for shape_range in profiles[index].values():
            for dim in shape_range.max:
                volume *= dim
        return volume, index

    return min(fitting, key=size)


def profiles_union_limits(profiles: list[Profile], name: str) -> ShapeRange:
    """The smallest min and largest max over `profiles` of input `name` (what a runner can accept at all)."""
    ranges = [profile[name] for profile in profiles if name in profile]
    mins = tuple(min(dims) for dims in zip(*(r.min for r in ranges)))
    maxs = tuple(max(dims) for dims in zip(*(r.max for r in ranges)))
    return ShapeRange(mins, ranges[0].opt, maxs)
