"""`QuantDescriptor`: how one tensor is quantized (pytorch-quantization's names and defaults).

    QuantDescriptor(num_bits=8, axis=None, amax=None, unsigned=False, narrow_range=False,
                    calib_method="max", fake_quant=True, learn_amax=False)

`axis=None` quantizes per tensor; an int (or a one-element tuple) keeps one amax per index of that
axis (per channel). Activations use `QUANT_DESC_8BIT_PER_TENSOR`; weights use
`QUANT_DESC_8BIT_PER_CHANNEL_AXIS0`, one amax per output channel and the narrow range [-127, 127]
that TensorRT uses for weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

CALIB_METHODS = ("max", "histogram")


@dataclass(frozen=True)
class QuantDescriptor:
    num_bits: int = 8
    axis: int | tuple[int, ...] | None = None
    amax: float | Sequence[float] | None = None
    unsigned: bool = False
    narrow_range: bool = False
    calib_method: str = "max"
    fake_quant: bool = True
    learn_amax: bool = False
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_bits, int) or not 2 <= self.num_bits <= 16:
            raise ValueError(f"QuantDescriptor: num_bits must be an int in 2..16, got {self.num_bits!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ValueError(
                f"QuantDescriptor: calib_method must be one of {', '.join(CALIB_METHODS)}, got "
                f"{self.calib_method!r} (percentile, mse and entropy are computed from the 'histogram' calibrator)"
            )
        if not self.fake_quant:
            raise ValueError(
                "QuantDescriptor: fake_quant=False (real integer tensors) is not supported; the toolkit fakes "
                "quantization so that the ONNX exporters emit QuantizeLinear/DequantizeLinear"
            )
        axis = self.axis
        if isinstance(axis, Sequence):
            if len(axis) != 1:
                raise ValueError(
                    f"QuantDescriptor: axis={axis!r}: per-channel quantization supports one axis "
                    "(ONNX QuantizeLinear and TensorRT take a single axis); pass an int"
                )
            object.__setattr__(self, "axis", int(axis[0]))
        elif axis is not None and not isinstance(axis, int):
            raise ValueError(f"QuantDescriptor: axis must be None, an int or a one-element tuple, got {axis!r}")

    @property
    def channel_axis(self) -> int | None:
        """The per-channel axis as an int, or None for per-tensor quantization."""
        return self.axis if isinstance(self.axis, int) else None

    @property
    def max_bound(self) -> int:
        """Largest integer: 127 for signed 8 bits, 255 for unsigned."""
        return (1 << (self.num_bits - 1 + int(self.unsigned))) - 1

    @property
    def min_bound(self) -> int:
        """Smallest integer: -128 signed, -127 signed narrow range, 0 unsigned."""
        if self.unsigned:
            return 0
        return -self.max_bound if self.narrow_range else -self.max_bound - 1

    def with_(self, **changes: object) -> QuantDescriptor:
        """A copy with some fields changed, e.g. `QUANT_DESC_8BIT_PER_TENSOR.with_(calib_method="histogram")`."""
        return replace(self, **changes)  # type: ignore[arg-type]


QUANT_DESC_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8)
QUANT_DESC_8BIT_PER_CHANNEL_AXIS0 = QuantDescriptor(num_bits=8, axis=0, narrow_range=True)
