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
- qdq: relative L2 error ||onnx - torch_quantized|| / ||torch_quantized|| <= max(1e-3,
  0.75 x the module's own quantization error ||torch_float - torch_quantized|| / ||torch_quantized||).
  Why: a fake-quantized network is discontinuous. ONNX Runtime and PyTorch add in different orders; a
  1e-6 difference that lands on a rounding boundary moves one integer by one step, and over several
  layers such flips cascade within a sequence (measured on all-MiniLM-L6-v2 qdq: every layer's output
  agrees to 1e-6 until a flip, and whole sequences then differ by 20-50% of the quantization error).
  An export bug (wrong scale, axis, zero point or weights) moves outputs by the quantization error or
  more. A Q/DQ pair too many or too few is caught exactly, by counting them against the module's
  enabled quantizers (exporter.qdq), not by this tolerance. An output beyond that still passes when
  ONNX Runtime is as close to float as the module is: ||onnx - torch_float|| / ||torch_quantized -
  torch_float|| within [1 / 1.25, 1.25] (closer to float is as suspect as further: a graph that lost its
  quantization). qdq all-MiniLM-L6-v2 does that on short inputs (one 7-token sentence: 0.13 between
  the two, 0.147 and 0.15 from float).
- integer (`compare_integer`): exact. I-BERT's integer mode is one integer arithmetic in PyTorch and in
  the graph (models.quantization.integer), so every integer value of the graph, named after the module
  that produces it (exporter.integer_graph), must equal that module's output bit for bit, in ONNX
  Runtime without optimizations (the file's semantics) and with the runtime's default ones (what
  trt_runtime runs); a difference names the first module whose integers differ. The float task heads
  (pooler, classifiers, LM head) then compute from equal inputs and get the float tolerance. With
  force_dequant, the float sites (a float GELU, softmax or LayerNorm, whose float32 results differ
  between PyTorch's and ONNX Runtime's kernels by an ulp) end the exact part: the integers up to the
  first float site are compared exactly, the outputs with the qdq rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
}
#: integer mode: the float heads' tolerance on the outputs (their inputs are exact), the qdq rule after a
#: force_dequant float site
INTEGER_HEADS_TOLERANCE = TOLERANCES["none"]
FLOAT_SITES_TOLERANCE = TOLERANCES["qdq"]


@dataclass(frozen=True)
class OutputDiff:
    shape: Shape
    output: str
    max_abs_diff: float
    relative_l2: float
    violation: str | None


def ort_session(model: str | os.PathLike | bytes, runtime_default: bool = False):
    """A CPU ONNX Runtime session on a file or a serialized model: no graph optimizations (the file's own
    semantics), or the runtime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about nodes it does not fuse are noise here
    if not runtime_default:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])


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


# --------------------------------------------------------------------------------------------------
# integer mode: exact

#: integer exports are validated at sequence lengths 1 to the maximum (batch 1 and 3): the integers must
#: agree whatever the length, the padding and the batch
INTEGER_VALIDATION_SEQUENCES = (1, 7, 29)


def integer_validation_shapes(signature: Signature, max_sequence_length: int) -> list[Shape]:
    """Batches 1 and 3 x sequences 1, 7, 29 and the maximum (capped at it)."""
    from exporter.sample_inputs import VALIDATION_BATCHES, VALIDATION_CHOICES

    sequences = sorted({min(s, max_sequence_length) for s in (*INTEGER_VALIDATION_SEQUENCES, max_sequence_length)})
    choices = VALIDATION_CHOICES if signature.has_choices else None
    return [Shape(b, s, choices) for b in VALIDATION_BATCHES for s in sequences]


@dataclass
class IntegerCapture:
    """The integer outputs of a model's integer modules in one forward pass, in execution order, by the
    names the ONNX values get (module name; `_k` for its (k+1)-th call). after_float_site: the names whose
    values derive from a force_dequant float site."""

    values: dict[str, np.ndarray]
    after_float_site: set[str]


@contextmanager
def captured_integers(model: torch.nn.Module) -> Iterator[IntegerCapture]:
    """Record the integer modules' outputs (models.quantization.integer.modules.IntegerTensor) while active."""
    from models.quantization.integer.modules import INTEGER_MODULE_TYPES, IntegerTensor, QuantAct

    capture = IntegerCapture({}, set())
    calls: dict[str, int] = {}
    float_seen = [False]

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(module, QuantAct) and inputs and not isinstance(inputs[0], IntegerTensor):
                float_seen[0] = True  # a float site's output, quantized
            if not isinstance(output, IntegerTensor):
                return
            count = calls.get(name, 0)
            calls[name] = count + 1
            key = name if count == 0 else f"{name}_{count}"
            capture.values[key] = output.values.detach().cpu().numpy()
            if float_seen[0]:
                capture.after_float_site.add(key)

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if isinstance(m, INTEGER_MODULE_TYPES)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def _graph_values(path: str | os.PathLike) -> set[str]:
    import onnx

    return {v for node in onnx.load(str(path), load_external_data=False).graph.node for v in node.output}


def _with_outputs(path: str | os.PathLike, names: Sequence[str]) -> bytes:
    import onnx

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def _integer_difference(name: str, got: np.ndarray, expected: np.ndarray) -> str | None:
    if got.shape != expected.shape:
        return f"{name}: shape {got.shape} != PyTorch's {expected.shape}"
    different = got.astype(np.int64) != expected.astype(np.int64)
    if not different.any():
        return None
    where = tuple(int(i) for i in np.argwhere(different)[0])
    return (
        f"{name}: {int(different.sum())} of {different.size} integers differ (max |diff| "
        f"{int(np.abs(got.astype(np.int64) - expected.astype(np.int64)).max())}; first at {where}: ONNX "
        f"{int(got[where])}, PyTorch {int(expected[where])})"
    )


def compare_integer(
    onnx_path: str | os.PathLike,
    model: torch.nn.Module,
    signature: Signature,
    batches: Sequence[tuple[Shape, Mapping[str, np.ndarray]]],
    float_model: torch.nn.Module | None = None,
    log: Callable[[str], None] = print,
) -> list[OutputDiff]:
    """Exact validation of an integer export (see the module docstring); raises ExportValidationError.

    float_model: the float checkpoint, for the qdq rule after force_dequant float sites.
    """
    diffs: list[OutputDiff] = []
    sessions: dict[bool, object] = {}
    names: list[str] = []
    for shape, feeds in batches:
        with captured_integers(model) as capture:
            expected = torch_outputs(model, signature, feeds)
        if not sessions:  # the ONNX values named after the captured modules (exporter.integer_graph)
            present = _graph_values(onnx_path)
            names = [n for n in capture.values if n in present]
            if not names:
                raise ExportValidationError(
                    "the integer graph has none of the module outputs PyTorch produced (names like "
                    f"{next(iter(capture.values), '?')}): a bug in the export's value names"
                )
            sessions[False] = ort_session(_with_outputs(onnx_path, names), runtime_default=False)
            sessions[True] = ort_session(_with_outputs(onnx_path, names[-1:]), runtime_default=True)
        exact = [n for n in names if n not in capture.after_float_site]
        floats = torch_outputs(float_model, signature, feeds) if capture.after_float_site and float_model else {}
        problems = []
        counts = []
        for runtime_default, session in sessions.items():
            available = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
            checked = [n for n in exact if n in available]
            results = dict(zip(available, session.run(available, dict(feeds))))  # type: ignore[attr-defined]
            first = next((d for n in checked if (d := _integer_difference(n, results[n], capture.values[n]))), None)
            counts.append(len(checked))
            level = "the runtime's default optimizations" if runtime_default else "no graph optimizations"
            if first:
                problems.append(f"{shape}, with {level}: the first module whose integers differ is {first}")
                continue
            for output in signature.output_names:
                got, reference = np.asarray(results[output]), expected[output]
                tolerance = FLOAT_SITES_TOLERANCE if floats else INTEGER_HEADS_TOLERANCE
                problem = tolerance.violation(got, reference, floats.get(output))
                worst = float(np.abs(got.astype(np.float64) - reference).max()) if got.shape == reference.shape else float("inf")
                diffs.append(OutputDiff(shape, output, worst, _relative_l2(got, reference), problem))
                if problem:
                    problems.append(f"{shape}, with {level}: output {output}: {problem}")
            if runtime_default:
                log(f"  {shape}: {counts[0]} integer tensors bit for bit equal without optimizations, the last with "
                    "the runtime's; "
                    + ", ".join(f"{o} max |diff| {d.max_abs_diff:.3g}" for o, d in zip(signature.output_names, diffs[-len(signature.output_names):])))
        if problems:
            raise ExportValidationError(
                "the ONNX model does not compute the PyTorch integer model's integers:\n  " + "\n  ".join(problems)
                + "\nThis is a bug in the export (or an operator ONNX Runtime computes differently); please "
                "report it with the command line that produced it."
            )
    return diffs
