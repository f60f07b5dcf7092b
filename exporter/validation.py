"""Validation built into every export: the ONNX file in ONNX Runtime against the PyTorch module it came from.

ONNX Runtime runs with its graph optimizations off, so every node computes what the ONNX spec says:
several of its optimizations change what a quantized graph computes (DoubleQDQPairsRemover, already
at the basic level, collapses I-BERT's DequantizeLinear -> QuantizeLinear requantizations;
MatMulScaleFusion moves the attention scale across a quantized MatMul; the QDQ fusions run int8
kernels whose u8s8 products saturate on CPUs without VNNI). Those would test ONNX Runtime, not the
file. What the runtime's default optimizations give is logged for information.

Tolerances (per output, per batch):
- float: every element within 1e-4 x scale, scale = max(1, max |reference|), so one rule fits hidden
  states (~1) and vocabulary logits (~10); reordered float32 sums differ by ~1e-6.
- qdq / integer: relative L2 error ||onnx - torch_quantized|| / ||torch_quantized|| <= max(1e-3,
  0.75 x the module's own quantization error ||torch_float - torch_quantized|| / ||torch_quantized||).
  Why: a fake-quantized network is discontinuous. ONNX Runtime and PyTorch add in different orders; a
  1e-6 difference that lands on a rounding boundary moves one integer by one step, and over several
  layers such flips cascade within a sequence (measured on all-MiniLM-L6-v2 qdq: every layer's output
  agrees to 1e-6 until a flip, and whole sequences then differ by 20-50% of the quantization error).
  An export bug (wrong scale, axis, zero point or weights) moves outputs by the quantization error or
  more. A Q/DQ pair too many or too few is caught exactly, by counting them against the module's
  enabled quantizers (exporter.qdq), not by this tolerance.
- qdq and integer, in addition: an output beyond that still passes when ONNX Runtime is as close to float as the
  module is: ||onnx - torch_float|| / ||torch_quantized - torch_float|| within [1 / 1.25, 1.25] (closer to
  float is as suspect as further: a graph that lost its quantization). I-BERT's integer
  all-MiniLM-L6-v2 decorrelates further than qdq: one flipped 8-bit step changes a whole row of the next
  GEMM, and by the last layer two float summation orders (PyTorch and ONNX Runtime, or PyTorch eager and
  PyTorch with the traced arithmetic) differ by 0.6-1.1 x the quantization error while both stay exactly
  as far from float (0.212 and 0.212 with 16-bit wide activations). qdq all-MiniLM-L6-v2 does the same on
  short inputs (one 7-token sentence: 0.13 between the two, 0.147 and 0.15 from float). An export bug adds its own error: to
  pass this it must stay below ~0.75 x the quantization error, the same bound as above.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from exporter.errors import ExportValidationError
from exporter.sample_inputs import Shape
from exporter.signature import Signature

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def _relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(b.astype(np.float64)))
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))) / max(norm, 1e-30)


def _error_ratio(got: np.ndarray, expected: np.ndarray, float_expected: np.ndarray) -> float:
    """||got - float|| / ||expected - float||: how much further from float ONNX Runtime is than PyTorch."""
    return _relative_l2(got, float_expected) / max(_relative_l2(expected, float_expected), 1e-30)


@dataclass(frozen=True)
class Tolerance:
    """float (noise_ratio None): |onnx - torch| <= atol x max(1, max |torch|) everywhere.
    quantized: relative L2 error <= max(atol, noise_ratio x the module's relative quantization error), or,
    with float_error_ratio r, ||onnx - float|| / ||torch - float|| within [1 / r, r] (as accurate as torch)."""

    atol: float
    noise_ratio: float | None = None
    float_error_ratio: float | None = None

    def describe(self) -> str:
        if self.noise_ratio is None:
            return f"|diff| <= {self.atol:g} x max(1, max |torch|)"
        text = f"relative L2 error <= max({self.atol:g}, {self.noise_ratio:g} x the model's own quantization error)"
        if self.float_error_ratio is not None:
            text += f", or an error to float within {self.float_error_ratio:g}x of the model's"
        return text

    def violation(self, got: np.ndarray, expected: np.ndarray, float_expected: np.ndarray | None = None) -> str | None:
        """None when `got` is within tolerance of `expected`; otherwise what is wrong, in numbers.

        float_expected: the float model's output, needed for quantized tolerances.
        """
        if got.shape != expected.shape:
            return f"shape {got.shape} != {expected.shape}"
        if not np.all(np.isfinite(got)):
            return "non-finite values"
        if self.noise_ratio is None:
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            beyond = float(np.mean(diff > self.atol * scale)) if diff.size else 0.0
            return None if beyond == 0.0 else f"{beyond:.2%} of elements beyond {self.atol:g} x {scale:.3g}"
        if float_expected is None:
            raise ValueError("a quantized tolerance needs the float model's output")
        error = _relative_l2(got, expected)
        allowed = max(self.atol, self.noise_ratio * _relative_l2(float_expected, expected))
        if error <= allowed:
            return None
        problem = f"relative L2 error {error:.3g} > allowed {allowed:.3g}"
        if self.float_error_ratio is None:
            return problem
        ratio = _error_ratio(got, expected, float_expected)
        if 1 / self.float_error_ratio <= ratio <= self.float_error_ratio:
            return None
        return f"{problem}, and its error to float is {ratio:.3g} x the model's (not within {self.float_error_ratio:g}x)"


TOLERANCES = {
    "none": Tolerance(atol=1e-4),
    "qdq": Tolerance(atol=1e-3, noise_ratio=0.75, float_error_ratio=1.25),
    "integer": Tolerance(atol=1e-3, noise_ratio=0.75, float_error_ratio=1.25),
}


@dataclass(frozen=True)
class OutputDiff:
    shape: Shape
    output: str
    max_abs_diff: float
    relative_l2: float
    violation: str | None


def ort_session(path: str | os.PathLike, runtime_default: bool = False):
    """A CPU ONNX Runtime session: no graph optimizations (the file's own semantics), or the runtime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about nodes it does not fuse are noise here
    if not runtime_default:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(path: str | os.PathLike, runtime_default: bool = False) -> Runner:
    session = ort_session(path, runtime_default)
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds))))

    return run


def torch_outputs(model: torch.nn.Module, signature: Signature, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = model(**{name: torch.from_numpy(value) for name, value in feeds.items()})
    return {name: outputs[name].float().numpy() for name in signature.output_names}


def compare(
    run_onnx: Runner,
    model: torch.nn.Module,
    signature: Signature,
    batches: Sequence[tuple[Shape, Mapping[str, np.ndarray]]],
    tolerance: Tolerance | None,
    float_model: torch.nn.Module | None = None,
    log: Callable[[str], None] = print,
) -> list[OutputDiff]:
    """Run both on every batch and log the differences per output; over `tolerance`, raise ExportValidationError.

    tolerance=None only measures. float_model: the same checkpoint in float, for quantized tolerances.
    """
    diffs = []
    for shape, feeds in batches:
        expected = torch_outputs(model, signature, feeds)
        floats = torch_outputs(float_model, signature, feeds) if float_model is not None else {}
        got = run_onnx(feeds)
        for name in signature.output_names:
            value, reference = np.asarray(got[name]), expected[name]
            problem = tolerance.violation(value, reference, floats.get(name)) if tolerance else None
            if value.shape == reference.shape:
                worst, relative = float(np.abs(value.astype(np.float64) - reference).max()), _relative_l2(value, reference)
            else:
                worst = relative = float("inf")
            diffs.append(OutputDiff(shape, name, worst, relative, problem))
            text = f"  {shape}: {name} max |onnx - torch| = {worst:.3g}, relative L2 {relative:.3g}"
            if name in floats:
                text += f" (quantization error {_relative_l2(floats[name], reference):.3g}"
                if value.shape == reference.shape:  # the same measure for ONNX Runtime's output
                    text += f"; ONNX's {_relative_l2(floats[name], reference) * _error_ratio(value, reference, floats[name]):.3g}"
                text += ")"
            log(text + (f"  FAILED: {problem}" if problem else ""))
    failures = [d for d in diffs if d.violation]
    if tolerance and failures:
        lines = "\n".join(f"  {d.shape}, {d.output}: {d.violation}" for d in failures)
        raise ExportValidationError(
            f"the ONNX model does not reproduce the PyTorch model ({tolerance.describe()}):\n{lines}\n"
            "This is a bug in the export (or an operator ONNX Runtime computes differently); "
            "please report it with the command line that produced it."
        )
    return diffs
