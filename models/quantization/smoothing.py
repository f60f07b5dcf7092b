"""SmoothQuant-style migration (Xiao et al., ICML 2023) for the qdq mode: per-input-channel scales that move
activation outliers into the weights before calibration.

For a linear layer y = x W^T and a scale s > 0 per input channel j, y = (x / s) (W diag(s))^T exactly, and
with s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) the activation's outlier channels shrink while the
weight's columns grow (alpha: the migration strength). The activation is then quantized per tensor, the
weight per output channel, as TensorRT takes them.

Where the division goes: SmoothQuant folds 1/s into the preceding LayerNorm, which works in pre-LN models
(OPT, LLaMA), where the LayerNorm output feeds only the projections. BERT is post-LN: the LayerNorm output
is also the residual of the next add, and the LayerNorm after that add normalizes across channels, so a
per-channel 1/s cannot be carried through it. Here the division is an explicit per-channel op in front of
the activation quantizer (`TensorQuantizer.smoothing_scale`; in ONNX a Div before QuantizeLinear, which
TensorRT runs as a pointwise op fused with its producer), as modelopt's `pre_quant_scale` does
(modelopt.torch.quantization.model_calib.smoothquant; its pre_quant_scale is our 1 / s).

Sites (`smoothing_sites`): the query, key and value projections of a layer share one input and one scale
(the max over their three weights, so their Q/DQ pairs stay one and TensorRT fuses the three GEMMs), the FFN
input projection, and the FFN output projection (whose GELU input has the worst outliers). Sites whose
input quantizer is kept float are left alone.

    scales = smooth(model, batches, alpha="auto")   # measure, choose alpha per site, apply; before calibrate()
    apply_smoothing(model, scales)                  # what loading a calibration.json with "smoothing" does

Smoothing sites are BERT-style `nn.Linear` layers; SqueezeBERT's grouped 1x1 convolutions are not smoothed.

alpha "auto" chooses, for each site, the alpha of `ALPHAS` (or no smoothing) whose fake-quantized GEMM
outputs are closest to float (relative squared error) on a sample of the calibration activations.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from models.data import MODEL_INPUTS
from models.quantization.qdq.nn import QuantLinear
from models.quantization.qdq.quantized_model import named_quantizers

logger = logging.getLogger(__name__)

#: alphas "auto" tries at each site (besides no smoothing)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: activation rows (tokens) per site kept for choosing alpha
SAMPLE_ROWS = 4096
#: modelopt's guards: channels with (almost) zero range keep scale 1; scales stay within [1e-4, 1e4]
EPSILON = 1.0 / (1 << 31)
SCALE_RANGE = (1e-4, 1e4)

_SITE_PATTERNS = (
    (re.compile(r"^(?P<layer>.*\.layers?\.\d+)\.attention\.self\.(query|key|value)$"), "qkv"),
    (re.compile(r"^(?P<layer>.*\.layers?\.\d+)\.intermediate\.dense$"), "ffn-input"),
    (re.compile(r"^(?P<layer>.*\.layers?\.\d+)\.output\.dense$"), "ffn-output"),
)


@dataclass(frozen=True)
class SmoothingSite:
    """Linear layers that read one activation and share one smoothing scale."""

    name: str  # "<layer>.qkv", "<layer>.ffn-input", "<layer>.ffn-output"
    linears: tuple[str, ...]  # their module names


def smoothing_sites(model: nn.Module) -> list[SmoothingSite]:
    """The model's smoothing sites, in module order; linears whose input quantizer is disabled are skipped."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear) or not module.input_quantizer.is_enabled:
            continue
        for pattern, kind in _SITE_PATTERNS:
            match = pattern.match(name)
            if match:
                groups.setdefault(f"{match['layer']}.{kind}", []).append(name)
                break
    return [SmoothingSite(site, tuple(linears)) for site, linears in groups.items()]


def smoothing_scales(activation_amax: torch.Tensor, weight_amax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = activation_amax^alpha / weight_amax^(1 - alpha) per input channel, in float32, with modelopt's guards."""
    activation_amax, weight_amax = activation_amax.float(), weight_amax.float()
    scales = activation_amax.pow(alpha) / weight_amax.pow(1 - alpha)
    degenerate = (activation_amax <= EPSILON) | (weight_amax <= EPSILON) | ~torch.isfinite(scales)
    return torch.where(degenerate, torch.ones_like(scales), scales).clamp(*SCALE_RANGE)


def _input_channel_amax(linears: Iterable[QuantLinear]) -> torch.Tensor:
    return torch.stack([linear.weight.detach().abs().amax(dim=0) for linear in linears]).amax(dim=0)


def apply_smoothing(model: nn.Module, scales: Mapping[str, torch.Tensor]) -> None:
    """Scale each named linear's weight columns by s and divide its input by s (`scales`: linear name -> s).
    The float model computes the same function (to rounding); apply once, on unsmoothed weights."""
    modules = dict(model.named_modules())
    for name, scale in scales.items():
        linear = modules.get(name)
        if not isinstance(linear, QuantLinear):
            raise ValueError(f"smoothing: {name} is not a quantized linear layer of this model")
        scale = scale.detach().to(torch.float32).reshape(-1)
        if scale.numel() != linear.in_features or not bool(torch.all(scale > 0)):
            raise ValueError(
                f"smoothing: {name} takes {linear.in_features} positive scales, got {scale.numel()}"
                f"{'' if bool(torch.all(scale > 0)) else ' (not all positive)'}"
            )
        if linear.input_quantizer.smoothing_scale is not None:
            raise ValueError(f"smoothing: {name} is already smoothed")
        with torch.no_grad():
            linear.weight.mul_(scale.to(linear.weight.dtype))
        linear.input_quantizer.smoothing_scale = scale


def smoothing_state(model: nn.Module) -> dict[str, list[float]]:
    """linear name -> its smoothing scales (what calibration.json records under "smoothing")."""
    found = {}
    for name, quantizer in named_quantizers(model).items():
        if name.endswith("._input_quantizer") and quantizer.smoothing_scale is not None:
            found[name.removesuffix("._input_quantizer")] = quantizer.smoothing_scale.tolist()
    return found


class _Collector:
    """A forward pre-hook: per-channel max |x| of a linear's input, and a sample of its rows."""

    def __init__(self, generator: torch.Generator):
        self.amax: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.generator = generator

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
        amax = x.abs().amax(dim=0)
        self.amax = amax if self.amax is None else torch.maximum(self.amax, amax)
        self.rows.append(x[torch.randperm(x.shape[0], generator=self.generator)[: SAMPLE_ROWS // 8]])

    def sample(self) -> torch.Tensor:
        rows = torch.cat(self.rows)
        return rows[torch.randperm(rows.shape[0], generator=self.generator)[:SAMPLE_ROWS]]


def _fake_quantize(x: torch.Tensor, amax: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Symmetric int8: per tensor (dim None, the activation) or per output channel ([-127, 127], the weight)."""
    if dim is None:
        scale = (amax.clamp_min(2.0**-24) / 127).reshape(())
        return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32), -128, 127)
    scale = amax.clamp_min(2.0**-24) / 127
    zero = torch.zeros(scale.numel(), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, dim, -127, 127)


def _quantized_error(
    x: torch.Tensor, weights: list[torch.Tensor], references: list[torch.Tensor], scale: torch.Tensor | None
) -> float:
    """Relative squared error of the int8 GEMMs x W^T of a site (`references`: the float x W^T of each weight),
    smoothed by `scale` (None: not smoothed)."""
    error = total = 0.0
    xs = x if scale is None else x / scale
    xq = _fake_quantize(xs, xs.abs().amax(), None)
    for weight, reference in zip(weights, references):
        ws = weight if scale is None else weight * scale
        wq = _fake_quantize(ws, ws.abs().amax(dim=1), 0)
        error += float((xq @ wq.T - reference).pow(2).sum())
        total += float(reference.pow(2).sum())
    return error / max(total, 1e-30)


def smooth(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], alpha: float | str = "auto",
    *, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Measure each site's input on `batches` (float model), choose the scales and apply them; returns
    linear name -> s. alpha: the migration strength in [0, 1] (a number, or its string as the recipe keeps it),
    or "auto" (per site, see the module docstring).
    Run before calibration: the activation quantizers then calibrate on the smoothed inputs."""
    modules = dict(model.named_modules())
    sites = smoothing_sites(model)
    smoothed = [site for site in sites if modules[site.linears[0]].input_quantizer.smoothing_scale is not None]
    if smoothed:  # a checkpoint saved smoothed (after QAT, say): its weights carry its scales, and the sites
        # "auto" left unsmoothed then stay so (QAT trained on those grids): nothing is smoothed again
        logger.info("smoothing: the checkpoint was saved smoothed (%d site(s)); its smoothing is kept", len(smoothed))
        sites = []
    if not sites:  # SqueezeBERT's grouped convolutions, every site kept float, or all smoothed already
        logger.info("smoothing: no unsmoothed quantized query/key/value or FFN linear layers; nothing smoothed")
        return {}
    generator = torch.Generator().manual_seed(0)
    collectors = {site.name: _Collector(generator) for site in sites}
    handles = [modules[site.linears[0]].register_forward_pre_hook(collectors[site.name]) for site in sites]
    quantizers = named_quantizers(model)
    was_quantizing = {name: q.is_quant_enabled for name, q in quantizers.items()}
    was_training = model.training
    try:
        for quantizer in quantizers.values():
            quantizer.disable_quant()
        model.eval()
        with torch.no_grad():
            for batch in tqdm(batches, desc="smoothing statistics", unit="batch", disable=not progress):
                model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    finally:
        for handle in handles:
            handle.remove()
        for name, quantizer in quantizers.items():
            if was_quantizing[name]:
                quantizer.enable_quant()
        model.train(was_training)
    scales: dict[str, torch.Tensor] = {}
    for site in sites:
        collector = collectors[site.name]
        if collector.amax is None:
            raise ValueError("smoothing: no calibration batches reached the model")
        linears = [modules[name] for name in site.linears]
        weight_amax = _input_channel_amax(linears)  # type: ignore[arg-type]
        if alpha == "auto":
            sample = collector.sample()
            weights = [linear.weight.detach().float() for linear in linears]
            references = [sample @ weight.T for weight in weights]  # the float GEMMs, once for every candidate
            candidates: dict[float | None, torch.Tensor | None] = {None: None}
            candidates.update({a: smoothing_scales(collector.amax, weight_amax, a) for a in ALPHAS})
            best = min(candidates, key=lambda a: _quantized_error(sample, weights, references, candidates[a]))
            if best is None:
                continue
            scale = candidates[best]
            assert scale is not None
        else:
            scale = smoothing_scales(collector.amax, weight_amax, float(alpha))
        for name in site.linears:
            scales[name] = scale
    apply_smoothing(model, scales)
    return scales
