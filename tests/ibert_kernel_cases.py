"""Test cases for the ibert Triton kernels, shared by the GPU tests and the Triton-interpreter tests.

Each case is float32 input built from random integers times the scale (plus off-grid values, exact
ties, values past I-BERT's clipping points, masked -3.4e38 scores), and its expected output is
`models.quantization.integer_reference.ibert_op`, the NumPy int64 reference. Kernels must match it
bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.quantization import integer_reference as ref
from trt_runtime.plugins import constants

F32 = np.float32


@dataclass
class Case:
    op: str
    x: np.ndarray
    attributes: dict[str, Any]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}-{'x'.join(map(str, self.x.shape))}-{self.extra.get('label', '')}"

    def expected(self) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return ref.ibert_op(self.op, self.x, self.weight, self.bias, **self.attributes)


def _integer_grid(rng: np.random.Generator, shape: tuple[int, ...], scale: np.ndarray, limit: int) -> np.ndarray:
    """Values on and off the scale's grid: k * s, (k + 0.5) * s (ties), k * s + noise."""
    k = rng.integers(-limit, limit + 1, size=shape).astype(F32)
    kind = rng.integers(0, 3, size=shape)
    x = np.where(kind == 0, k, np.where(kind == 1, k + F32(0.5), k + rng.uniform(-0.49, 0.49, size=shape).astype(F32)))
    return (x * scale).astype(F32)


def gelu_cases(seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for shape, per_channel, low, high in [
        ((2, 3, 37), True, 0.005, 0.05),
        ((4, 64), False, 0.02, 0.02),
        ((1, 1, 1), False, 0.1, 0.1),
        ((3, 5, 96), True, 0.001, 0.1),
        ((1, 2, 1500), False, 0.0005, 0.0005),  # more elements than one program's block
    ]:
        channels = shape[-1] if per_channel else 1
        scale = rng.uniform(low, high, channels).astype(F32)
        limit = int(np.max(-ref.gelu_constants(scale).b_int)) * 2  # past the erf clipping point
        x = _integer_grid(rng, shape, scale, limit)
        x.reshape(-1)[:2] = [F32(3e38), F32(-3e38)][: x.size]  # clip to the int32 range
        label = f"{'channel' if per_channel else 'tensor'}-{low:g}"
        cases.append(Case("IntGELU", x, ref.gelu_attributes(scale), extra={"label": label}))
    return cases


def realistic_exp_scale(input_scale: float, fraction: float) -> float:
    """An exp_scale like a calibrated QuantAct(16): the largest exp integer over 2**15 - 1, times `fraction`."""
    c_int = np.floor((F32(1) / F32(input_scale) ** 2) * F32(ref.EXP_C))
    return float(F32(c_int * 2.0**ref.EXP_SHIFT_BITS / (2**15 - 1) * fraction))


def softmax_cases(seed: int = 1) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for shape, input_scale, fraction, output_bits, masked in [
        ((2, 4, 7, 50), 0.05, 1.0, 8, 5),  # attention scores with masked (-3.4e38) tails
        ((3, 128), 0.01, 0.7, 8, 0),
        ((1, 1), 0.2, 1.0, 8, 0),
        ((2, 300), 0.02, 1.3, 12, 17),  # rows longer than the block, not a power of two
        ((1, 3, 129), 0.1, 0.9, 16, 0),
    ]:
        x = rng.normal(0, 4, size=shape).astype(F32)
        x = np.where(rng.random(shape) < 0.3, np.round(x / F32(input_scale)) * F32(input_scale), x).astype(F32)
        if masked:
            x[..., -masked:] = F32(-3.4028235e38)
        exp_scale = realistic_exp_scale(input_scale, fraction)
        attributes = ref.softmax_attributes(input_scale, exp_scale, output_bits)
        cases.append(Case("IntSoftmax", x, attributes, extra={"label": f"{input_scale:g}-bits{output_bits}"}))
    return cases


def layernorm_cases(seed: int = 2) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for shape, input_scale, shift in [((2, 3, 300), 0.01, 0), ((4, 768), 0.05, 2), ((3, 1, 5), 0.2, 1), ((1, 257), 0.003, 3)]:
        channels = shape[-1]
        weight = rng.uniform(0.3, 1.7, channels).astype(F32) * rng.choice([F32(-1), F32(1)], channels)
        bias = rng.normal(0, 0.5, channels).astype(F32)
        x = _integer_grid(rng, shape, np.array([input_scale], F32), 2000)
        x[0, ..., :] = F32(input_scale) * 7  # a constant row: variance 0
        attributes = ref.layernorm_attributes(input_scale, shift, weight)
        cases.append(Case("IntLayerNorm", x, attributes, weight, bias, extra={"label": f"{input_scale:g}-shift{shift}"}))
    return cases


def all_cases() -> list[Case]:
    return gelu_cases() + softmax_cases() + layernorm_cases()


def run_case(case: Case, launchers: Any, to_tensor: Callable[[np.ndarray], Any]) -> np.ndarray:
    """Run the case's kernel through `launchers` (trt_runtime.plugins.launchers), tensors made by `to_tensor`."""
    a = case.attributes
    x = to_tensor(case.x)
    if case.op == "IntGELU":
        ints, floats = constants.gelu_tables(a["input_scale"])
        y = launchers.int_gelu(x, to_tensor(ints), to_tensor(floats))
    elif case.op == "IntSoftmax":
        y = launchers.int_softmax(x, a["input_scale"], a["exp_scale"], a["output_bits"])
    else:
        assert case.weight is not None and case.bias is not None
        ints, floats = constants.layernorm_tables(case.weight, case.bias)
        y = launchers.int_layernorm(
            x, to_tensor(case.weight), to_tensor(case.bias), to_tensor(ints), to_tensor(floats),
            a["input_scale"], a["shift"],
        )
    return y.cpu().numpy()


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == F32
    different = actual.view(np.uint32) != expected.view(np.uint32)
    if different.any():
        where = tuple(int(i) for i in np.argwhere(different)[0])
        raise AssertionError(
            f"{int(different.sum())} of {different.size} values differ; first at {where}: kernel {actual[where]!r}, "
            f"reference {expected[where]!r}"
        )


# --------------------------------------------------------------------------------------------------
# interpreter mode: Triton decides between compiled and interpreted kernels when a @triton.jit function
# is defined -- its own library's too (tl.max's combine function) -- so TRITON_INTERPRET=1 must be set
# before triton is imported. The interpreter tests therefore run the cases in a fresh process:
#     TRITON_INTERPRET=1 python -m tests.ibert_kernel_cases      # prints one JSON result per case


def interpreter_numpy_compatibility() -> None:
    """Triton 3.6's interpreter turns scalar tensors into Python ints with int(array_of_shape_1), which
    NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted"), so a loop whose bound is a
    kernel argument (`range(0, row_length, BLOCK)`) fails. Patch that one conversion."""
    try:
        int(np.zeros(1, np.int64))  # type: ignore[arg-type]
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def _outcome(actual: np.ndarray, expected: np.ndarray) -> str | None:
    try:
        assert_bitwise_equal(actual, expected)
    except AssertionError as e:
        return str(e)
    return None


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (before Python starts) to run the kernels in Triton's interpreter", file=sys.stderr)
        return 2
    import torch

    interpreter_numpy_compatibility()
    from trt_runtime.plugins import launchers

    results = []
    for case in all_cases():
        with np.errstate(over="ignore", invalid="ignore"):  # masked -3.4e38 lanes overflow on the way to the clip
            actual = run_case(case, launchers, torch.from_numpy)
        results.append({"id": case.id, "mismatch": _outcome(actual, case.expected())})

    # negative control: a GELU table off by one in one channel must change the output
    case = gelu_cases()[0]
    ints, floats = constants.gelu_tables(case.attributes["input_scale"])
    ints[2, 5] += 1
    with np.errstate(over="ignore", invalid="ignore"):
        actual = launchers.int_gelu(torch.from_numpy(case.x), torch.from_numpy(ints), torch.from_numpy(floats)).numpy()
    results.append({"id": "negative-control", "mismatch": _outcome(actual, case.expected())})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
