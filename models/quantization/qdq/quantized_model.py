"""Operations over all the quantizers of a model, addressed by their module names.

A quantizer's name is its module path in the model, e.g.
`bert.encoder.layer.0.attention.self.query._input_quantizer` or
`bert.encoder.layer.0.attention.self.matmul_a_input_quantizer`; calibration files, checkpoints
(`<name>._amax`) and `keep_float` patterns all use it.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from models.quantization.errors import NotCalibratedError
from models.quantization.qdq.tensor_quantizer import NOT_CALIBRATED_HINT, TensorQuantizer
from models.quantization.recipe import SENSITIVE_SITES  # QDQBERT's sensitive sites belong to the recipe

logger = logging.getLogger(__name__)

AMAX_SUFFIX = "._amax"
SMOOTHING_SCALE_KEY = "_smoothing_scale"  # TensorQuantizer's buffer of SmoothQuant's divisors


def named_quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    """Every TensorQuantizer of the model by module name (and tells each its name, for error messages)."""
    found: dict[str, TensorQuantizer] = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            module.name = name
            found[name] = module
    return found


def weight_of(model: nn.Module, quantizer_name: str) -> torch.Tensor | None:
    """The weight a `..._weight_quantizer` quantizes (None for activation quantizers)."""
    parent_name, _, attr = quantizer_name.rpartition(".")
    if attr != "_weight_quantizer":
        return None
    parent = model.get_submodule(parent_name) if parent_name else model
    weight = getattr(parent, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


@dataclass(frozen=True)
class QuantizerCounts:
    """How many quantizers of a qdq model fake-quantize, by kind (what its ONNX graph must hold)."""

    weights: int  # per-channel weight quantizers: int8 initializers + DequantizeLinear in the graph
    activations: int  # activation quantizers: QuantizeLinear/DequantizeLinear pairs


def quantizer_counts(model: nn.Module) -> QuantizerCounts:
    """The weight and activation quantizers of `model` that are in quant mode (kept-float ones excluded)."""
    enabled = [name for name, q in named_quantizers(model).items() if q.is_quant_enabled]
    weights = sum(weight_of(model, name) is not None for name in enabled)
    return QuantizerCounts(weights, len(enabled) - weights)


def expected_amax_shape(model: nn.Module, name: str, quantizer: TensorQuantizer) -> tuple[int, ...] | None:
    """Shape amax takes after calibration: () per tensor; [C, 1, ...] (keepdims) per channel of a weight."""
    if quantizer.axis is None:
        return ()
    weight = weight_of(model, name)
    if weight is None:
        return None  # a per-channel activation quantizer: its channel count is known only from data
    shape = [1] * weight.dim()
    shape[quantizer.axis] = weight.shape[quantizer.axis]
    return tuple(shape)


def set_amax(model: nn.Module, name: str, quantizer: TensorQuantizer, value: torch.Tensor, where: str) -> None:
    """Give a quantizer an amax read from a file, checked against the quantizer's shape, in its canonical shape."""
    value = torch.as_tensor(value, dtype=torch.float32)
    shape = expected_amax_shape(model, name, quantizer)
    if shape is not None:
        expected = int(torch.Size(shape).numel())
        if value.numel() != expected:
            kind = "per-tensor" if quantizer.axis is None else f"per-channel (axis {quantizer.axis})"
            raise ValueError(
                f"{where}: amax of {name} has {value.numel()} value(s) (shape {tuple(value.shape)}), but this "
                f"{kind} quantizer needs {expected}: the file was made for a different model; recalibrate"
            )
        value = value.reshape(shape)
    try:
        quantizer.amax = value
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load_amax_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> list[str]:
    """Load `<quantizer name>._amax` tensors into the model's quantizers; returns the names loaded."""
    quantizers = named_quantizers(model)
    unknown = sorted(key for key in state if key.removesuffix(AMAX_SUFFIX) not in quantizers)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise ValueError(
            f"{where}: amax for quantizers this model does not have: {shown}. The checkpoint's quantizers "
            f"do not match the model (another architecture, or quantization sites that differ)"
        )
    loaded = []
    for key, value in state.items():
        name = key.removesuffix(AMAX_SUFFIX)
        set_amax(model, name, quantizers[name], value, where)
        loaded.append(name)
    return loaded


def load_quantization_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """The one entry point for quantization state found in a checkpoint (called by `models.load`).

    qdq: `<quantizer>._amax` (QDQBERT / our QAT checkpoints) and `<quantizer>._smoothing_scale` (a smoothed
    model saved after QAT) go into the TensorQuantizers. Other keys
    (I-BERT's integer-mode buffers: scaling factors, ranges) belong to the integer modules, which take
    them with the rest of their state; they are skipped here.
    """
    if getattr(model, "quantization", "qdq") != "qdq":
        return
    # a smoothed checkpoint (QAT after SmoothQuant): its weights are W diag(s), its input quantizers divide by s
    quantizers = named_quantizers(model)
    for key, value in state.items():
        name = key.removesuffix("." + SMOOTHING_SCALE_KEY)
        if name != key and name in quantizers and quantizers[name].smoothing_scale is None:
            quantizers[name].smoothing_scale = value
    amax_state = {k: v for k, v in state.items() if k.endswith(AMAX_SUFFIX)}
    if not amax_state:
        return
    source = getattr(model, "source_dir", None)
    load_amax_state(model, amax_state, where=str(source) if source else "checkpoint")


def uncalibrated_quantizers(model: nn.Module) -> list[str]:
    """Names of quantizers that would quantize but have no amax."""
    return [name for name, q in named_quantizers(model).items() if q.is_quant_enabled and q.amax is None]


def check_calibrated(model: nn.Module) -> None:
    missing = uncalibrated_quantizers(model)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise NotCalibratedError(f"{len(missing)} quantizer(s) are not calibrated ({shown}): {NOT_CALIBRATED_HINT}")


def _matcher(pattern: str):
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def select_quantizers(model: nn.Module, patterns: str | Iterable[str]) -> dict[str, TensorQuantizer]:
    """Quantizers whose names match any pattern (fnmatch, or a regex after "re:"); unmatched patterns are errors,
    except the names of SENSITIVE_SITES: a site this architecture does not have ("conv-ffn-output-input" is
    SqueezeBERT's) selects nothing."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    quantizers = named_quantizers(model)
    chosen: dict[str, TensorQuantizer] = {}
    for pattern in patterns:
        site = pattern in SENSITIVE_SITES
        pattern = SENSITIVE_SITES.get(pattern, pattern)
        match = _matcher(pattern)
        hits = {name: q for name, q in quantizers.items() if match(name)}
        if not hits and not (site and quantizers):
            example = next(iter(quantizers), "(the model has no quantizers: load it with quantization='qdq')")
            raise ValueError(
                f"pattern {pattern!r} matches no quantizer; names look like {example!r} "
                f"(fnmatch patterns such as '*.matmul_a_input_quantizer', or 're:' + a regular expression)"
            )
        chosen.update(hits)
    return chosen


def keep_float(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Disable (keep in float) the quantizers whose names match; returns their names.

    Patterns are fnmatch patterns, regular expressions prefixed with "re:", or the names of
    `SENSITIVE_SITES`: "ffn-output-input", "conv-ffn-output-input", "softmax-output", "residual-adds".
    """
    chosen = select_quantizers(model, patterns)
    for quantizer in chosen.values():
        quantizer.disable()
    logger.info("kept %d quantizer(s) in float", len(chosen))
    return sorted(chosen)


def set_quantization(model: nn.Module, enabled: bool) -> None:
    """Switch fake quantization on or off for every enabled quantizer (off: the float model, exactly)."""
    for quantizer in named_quantizers(model).values():
        if enabled:
            quantizer.enable_quant()
        else:
            quantizer.disable_quant()
