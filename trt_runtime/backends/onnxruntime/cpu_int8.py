"""The INT8 graph that ONNX Runtime runs fastest on an x86 CPU, derived from a `qdq` export.

What `python -m exporter --quantization qdq` writes is laid out for TensorRT: QuantizeLinear /
DequantizeLinear pairs on the linear layers' inputs (and on the attention matmuls), signed int8
weights. On a CPU, ONNX Runtime turns those pairs into int8 kernels one node at a time, keeps attention
unfused, and has no fast s8 x s8 kernel on AVX2: slower than float. This module derives another graph
from the same export, with the same weights:

1. Q/DQ out: every weight DequantizeLinear becomes a float initializer (the export's int8 weights times
   their scales: exactly the weights the export computes with); every activation Q/DQ pair is removed
   and its calibrated scale remembered by the float tensor it quantized. SmoothQuant-style smoothing
   divisions (a constant per-channel Div before the Q/K/V projections, the FFN input and the FFN output
   projection; models.quantization.smoothing) are folded back into the weights they feed
   (`fold_smoothing_divisions`): the attention fusion does not look through them, and per-row dynamic
   activation scales do not need them.
2. Fusions: onnxruntime.transformers' BERT optimizer on that float graph (Attention with the Q, K and V
   projections in one GEMM, SkipLayerNormalization with the bias add, BiasGelu). Attention keeps the
   raw 0/1 attention mask, so left padding and masks with holes stay right.
3. INT8 GEMMs: every linear layer whose weights the export quantized (they lie on a per-channel int8
   grid) becomes an unsigned-int8-activation x signed-int8-weight kernel, the fast one of MLAS:
   QAttention for the fused attention's Q, K and V projections (or, `Recipe.attention="mha"`, one
   MatMulIntegerToFloat before a float MultiHeadAttention), MatMulIntegerToFloat / DynamicQuantizeMatMul
   for the others.
   Weights stay per output channel. Softmax, LayerNorm, GELU, the attention core and whatever
   the export left float (heads, embeddings) stay float32.
4. SkipLayerNormalization back to Sum + LayerNormalization (`split_skip_layer_norms`): ONNX Runtime's
   CPU kernel for the fused op is an order of magnitude slower than the two ops (a tenth of the INT8
   BERT-base graph's time; docs/benchmarks.md).

How the activations are quantized (`Recipe`): per row, i.e. per token, on every call ("row", the
default): each row's own symmetric scale, zero point 128, the [M, 1] row scales given to
MatMulIntegerToFloat as its input scale; QAttention takes one scale per call ("dynamic"). "static"
uses the export's calibrated per-tensor scales instead, "dynamic" one scale per tensor per call.
Measured on all-MiniLM-L6-v2 (mean sentence-embedding cosine to float on held-out sentences, 7-bit
weights): static 0.988, dynamic 0.988, dynamic + per-row FFN output projection 0.991, per-row 0.994;
the speed is the same within noise (docs/benchmarks.md). BERT's LayerNorm outputs and FFN activations
have outlier features and outlier tokens: a per-tensor scale, calibrated (clipping them) or measured
(spreading the grid over them), loses what per-token scales keep. The FFN output projection, whose
input the exporter keeps float by default for TensorRT (there it would cost accuracy), is quantized
here too ("row" for `float_inputs`): in float it would cap the speed-up (a third of the GEMM work).

Weights on 7 bits, and why: MLAS's u8 x s8 kernel on AVX2 without VNNI (vpmaddubsw) adds two u8 x s8
products in a saturating int16, and 255 x 127 x 2 overflows it: results silently wrong wherever large
activations meet large weights (a GEMM with every input at the top of its range comes out 99 % wrong
with 8-bit weights on an AVX2 EPYC, exact with 7-bit ones). With 7-bit weights
(|w| <= 63) no pair can overflow. With AVX-VNNI or AVX512-VNNI (vpdpbusd adds in int32), or off x86,
the weights keep all 8 bits. `weight_bits=None` picks by the CPU; the choice is part of the cache key.

This module only derives the graph (`derive`, in memory). Where it is kept and how it is checked before
use is `trt_runtime.backends.onnxruntime.graphs`: built explicitly (`python -m trt_runtime build DIR --target
cpu-int8`) or derived on first load into a cache directory, always with a JSON record of what it was made from
(recipe, onnxruntime version, CPU features, sha256 of model.onnx and of itself). model.onnx stays the exported
artefact (the one TensorRT builds from).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.backends.onnxruntime.recipes import (  # noqa: F401  (re-exported: the recipe's old home)
    ACTIVATION_MODES,
    ATTENTION_MODES,
    FLOAT_INPUT_MODES,
    FUSABLE_ARCHITECTURES,
    RECIPE_VERSION,
    CpuInt8Error,
    Recipe,
    check_int8_applies,
    cpu_flags,
    int8_dot_products_are_exact,
)
from trt_runtime.contract.export_dir import CONFIG_JSON, MODEL_ONNX, ExportDirError, ExportInfo

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
ACTIVATION_ZERO_POINT = 128  # u8 activations: the export's symmetric int8 grid shifted by 128


# --- 1. Q/DQ out --------------------------------------------------------------------------------------


@dataclass
class Dequantized:
    """The float graph of a qdq export and the activation scales that its Q/DQ pairs had."""

    model: onnx.ModelProto
    #: float tensor name -> the scale of the Q/DQ pair that quantized it for a linear layer (a MatMul
    #: with a constant weight); where pairs of different scales fed linear layers, the largest
    scales: dict[str, float] = field(default_factory=dict)
    weights: int = 0
    activation_pairs: int = 0


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _dequantize(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The float value of a DequantizeLinear whose inputs are all initializers."""
    x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = (
        numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        if len(node.input) > 2 and node.input[2]
        else np.zeros_like(scale)
    )
    if scale.ndim == 1 and x.ndim > 1:
        axis = int(_attribute(node, "axis", 1)) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


def _is_weight_dequantization(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    return node.op_type == "DequantizeLinear" and all(name in inits for name in node.input if name)


def _scalar(tensor: onnx.TensorProto) -> float:
    value = numpy_helper.to_array(tensor)
    if value.size != 1:
        raise CpuInt8Error(f"activation scale {tensor.name} has shape {value.shape}; expected a scalar")
    return float(value.reshape(()))


def dequantize_qdq(model: onnx.ModelProto) -> Dequantized:
    """The float graph of a Q/DQ model: weights dequantized into float initializers, activation pairs
    removed; returns it with the scales of the removed pairs (see `Dequantized.scales`)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy
    graph = model.graph
    inits = _initializers(graph)
    consumers = _consumers(graph)
    result = Dequantized(model)
    rename: dict[str, str] = {}  # dequantized activation -> the float tensor it came from
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    weights = {node.output[0] for node in graph.node if _is_weight_dequantization(node, inits)}
    for node in graph.node:
        if _is_weight_dequantization(node, inits):
            new_inits.append(numpy_helper.from_array(_dequantize(node, inits), node.output[0]))
            drop.add(id(node))
            result.weights += 1
        elif node.op_type == "QuantizeLinear":
            if node.input[1] not in inits:
                raise CpuInt8Error(f"{node.name}: the scale {node.input[1]} is not a constant")
            followers = consumers.get(node.output[0], [])
            if not followers or any(f.op_type != "DequantizeLinear" for f in followers):
                raise CpuInt8Error(
                    f"{node.name}: a QuantizeLinear whose output does not go to DequantizeLinear only"
                )
            scale = _scalar(inits[node.input[1]])
            for dq in followers:
                rename[dq.output[0]] = node.input[0]
                drop.add(id(dq))
                result.activation_pairs += 1
                for user in consumers.get(dq.output[0], []):
                    if (
                        user.op_type == "MatMul"
                        and user.input[0] == dq.output[0]
                        and user.input[1] in weights
                    ):
                        result.scales[node.input[0]] = max(scale, result.scales.get(node.input[0], 0.0))
            drop.add(id(node))
    kept = [node for node in graph.node if id(node) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    outputs = {o.name for o in graph.output}
    for dequantized, source in rename.items():  # a graph output that was dequantized keeps its name
        if dequantized in outputs:
            kept.append(helper.make_node("Identity", [source], [dequantized], name=f"{dequantized}/Identity"))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _remove_unused_initializers(graph)
    return result


def _remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


# --- 1b. smoothing divisions folded back into the weights -----------------------------------------


def _takes_constant_weight(node: onnx.NodeProto, x: str, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether `node` is x @ W with W a constant 2-D float weight (a linear layer reading x)."""
    weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
    return (
        weight is not None
        and node.domain in ("", "ai.onnx")
        and node.input[0] == x
        and weight.data_type == TensorProto.FLOAT
        and len(weight.dims) == 2
    )


def fold_smoothing_divisions(model: onnx.ModelProto, scales: dict[str, float] | None = None) -> int:
    """x / s -> MatMul(W) becomes MatMul(x, W / s[:, None]) (in place); the number of divisions folded.
    `scales` (`Dequantized.scales`, updated in place): the calibrated scale of x / s moves to x, times max s
    (for `Recipe.activations="static"`: a per-tensor grid that clips no channel of x more than the export's
    grid clipped x / s).

    What it undoes: a qdq export with SmoothQuant-style migration (models.quantization.smoothing) divides
    the input of the Q/K/V projections (one division shared by the three), of the FFN input and of the FFN
    output projection by constant per-input-channel scales s, in front of the activation QuantizeLinear,
    and multiplies the weight rows by the same s. Once the Q/DQ pairs are out, that Div sits between the
    LayerNorm and the projections, where onnxruntime.transformers' attention fusion does not look for it:
    no QAttention. The CPU's per-row dynamic activation scales do not need the migration, and the fold
    gives back the unsmoothed function (to float rounding).

    Folded: a Div by a constant per-channel divisor (shape [K] or [1, ..., K]; a Mul by a constant of that
    shape the same way, as its reciprocal) whose every consumer is a MatMul that takes it as its input and
    has a constant 2-D float weight of K rows. Anything else (scalar divisors such as attention's 1/sqrt(d)
    or GELU's 1/sqrt(2), a Div that also feeds another op or is a graph output) is left as it is.

    The weights the export quantized (per output column, `on_int8_grid`) are put back on an 8-bit grid per
    output column after the fold, so that `quantize_gemms` still finds them quantized: the same rounding
    `quantize_weight` would apply there with 8 bits (with 7 it rounds once more, as for any export weight).
    Every folded weight is a new initializer: a weight that some other node shares keeps its value."""
    graph = model.graph
    inits = _initializers(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    names = set(inits) | {name for node in graph.node for name in (*node.input, *node.output)}
    rename: dict[str, str] = {}  # (Div output) -> the tensor it divided
    drop: set[int] = set()
    folded = 0
    for node in graph.node:
        if node.op_type not in ("Div", "Mul") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        x, constant = node.input
        if node.op_type == "Mul" and x in inits:
            x, constant = constant, x
        users = consumers.get(node.output[0], [])
        if constant not in inits or x in inits or not users or node.output[0] in outputs:
            continue
        divisor = numpy_helper.to_array(inits[constant])
        if not all(_takes_constant_weight(user, node.output[0], inits) for user in users):
            continue
        weights = [inits[user.input[1]] for user in users]
        k = int(weights[0].dims[0])
        if (
            divisor.dtype != np.float32
            or divisor.ndim == 0
            or divisor.shape[-1] != k
            or divisor.size != k
            or k < 2
            or any(int(w.dims[0]) != k for w in weights)
            or not np.all(np.isfinite(divisor))
            or np.any(divisor == 0)
        ):
            continue
        # the smoothing scale s of x / s (a Mul multiplies by 1 / s); the weight rows are divided by it
        smoothing = divisor.astype(np.float64).reshape(k, 1)
        if node.op_type == "Mul":
            smoothing = 1.0 / smoothing
        for user in users:
            weight = numpy_helper.to_array(inits[user.input[1]])
            value = (weight.astype(np.float64) / smoothing).astype(np.float32)
            if on_int8_grid(weight):
                grid = quantize_weight(value, 8)
                value = (grid.values.astype(np.float32) * grid.scale).astype(np.float32)
            name, i = f"{user.input[1]}.unsmoothed", 1
            while name in names:
                i += 1
                name = f"{user.input[1]}.unsmoothed_{i}"
            names.add(name)
            graph.initializer.append(numpy_helper.from_array(value, name))
            user.input[1] = name
        if scales is not None and node.output[0] in scales:
            moved = scales.pop(node.output[0]) * float(np.abs(smoothing).max())
            scales[x] = max(moved, scales.get(x, 0.0))
        rename[node.output[0]] = x
        drop.add(id(node))
        folded += 1
    kept = [node for node in graph.node if id(node) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    _remove_unused_initializers(graph)
    return folded


# --- 2. fusions ------------------------------------------------------------------------------------


def load_exported_model(export_dir: Path) -> onnx.ModelProto:
    """The export's model.onnx; ExportDirError (not protobuf's DecodeError) where it is damaged."""
    path = export_dir / MODEL_ONNX
    try:
        return onnx.load(str(path))
    except DecodeError as e:
        raise ExportDirError(f"{path} is not a readable ONNX model ({e}); re-export the model") from None


def read_config(export_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((export_dir / CONFIG_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _quiet(logger_names: tuple[str, ...]) -> Iterator[None]:
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in logger_names]
    for log, _ in saved:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def fuse_transformer(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> onnx.ModelProto:
    """onnxruntime.transformers' BERT fusions (Python only: no ONNX Runtime session, no GPU ops)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions

    options = FusionOptions("bert")
    # the raw 0/1 mask: the default (sequence lengths) would be wrong for left padding or holes
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    with _quiet(("onnxruntime.transformers", "fusion", "onnx_model", "onnx_model_bert")):
        fused = optimizer.optimize_model(
            model,
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
    return fused.model


# --- 3. INT8 GEMMs ---------------------------------------------------------------------------------


@dataclass
class QuantizedWeight:
    values: np.ndarray  # int8 [K, N]
    scale: np.ndarray  # float32 [N]


def quantize_weight(weight: np.ndarray, bits: int) -> QuantizedWeight:
    """Symmetric per-output-channel (last axis) int8 on `bits` bits (narrow range: +-(2^(bits-1) - 1)).

    The weights come from the export's int8 weights, so with bits=8 this gives them back exactly."""
    limit = float(2 ** (bits - 1) - 1)
    amax = np.abs(weight).max(axis=0).astype(np.float32)
    scale = np.where(amax > 0, amax / limit, np.float32(1.0)).astype(np.float32)
    values = np.clip(np.rint(weight / scale), -limit, limit).astype(np.int8)
    return QuantizedWeight(values, scale)


def on_int8_grid(weight: np.ndarray) -> bool:
    """Whether every column of `weight` [K, N] is int8 x one scale: weights that the export quantized
    (per output channel, max calibration: the largest value of a column is 127 steps)."""
    amax = np.abs(weight).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    steps = weight / scale
    return bool(np.all(np.abs(steps - np.rint(steps)) < 1e-2))


@dataclass
class Summary:
    """What `quantize_gemms` did, counted per linear layer (a QAttention counts as one)."""

    attention: int = 0
    matmuls: int = 0
    static: int = 0  # inputs quantized with the export's scale
    dynamic: int = 0  # ... per tensor, per call
    row: int = 0  # ... per row, per call
    #: MatMul / Attention left float (weights not int8 in the export, or float_inputs="float")
    float_gemms: int = 0


class _Builder:
    """Emits the int8 replacement of one node at a time into `nodes`."""

    def __init__(self, graph: onnx.GraphProto, recipe: Recipe, scales: dict[str, float]):
        self.recipe = recipe.resolved()
        self.bits = self.recipe.weight_bits or 8
        self.scales = scales
        self.inits = _initializers(graph)
        self.new_inits: list[onnx.TensorProto] = []
        self.quantized: dict[tuple[str, str], tuple[str, str, str]] = {}  # (tensor, mode) -> (q, scale, zp)
        self.summary = Summary()
        self.names: set[str] = set()

    def unique(self, name: str) -> str:
        name = name.replace("/", "_").strip("_")
        candidate, i = name, 1
        while candidate in self.names:
            i += 1
            candidate = f"{name}_{i}"
        self.names.add(candidate)
        return candidate

    def constant(self, name: str, value: np.ndarray) -> str:
        name = self.unique(name)
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def int8_weight(self, name: str) -> np.ndarray | None:
        """The float value of a constant 2-D weight that the export quantized, else None."""
        init = self.inits.get(name)
        if init is None or len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            return None
        value = numpy_helper.to_array(init)
        return value if on_int8_grid(value) else None

    def input_mode(self, tensor: str, fused_attention: bool) -> str:
        """The input mode ("static", "dynamic", "row" or "float") of the input `tensor` of a linear layer."""
        if tensor in self.scales:
            mode = self.recipe.activations
        else:
            mode = self.recipe.float_inputs
        if mode == "static" and tensor not in self.scales:
            mode = "dynamic"
        if mode == "row" and fused_attention:
            mode = "dynamic"  # QAttention takes one input scale
        return mode

    def quantize_input(self, tensor: str, mode: str, nodes: list[onnx.NodeProto]) -> tuple[str, str, str]:
        """The u8 version of `tensor` per tensor (made once, shared by its consumers): (u8, scale, zero point)."""
        key = (tensor, mode)
        if key not in self.quantized:
            base = self.unique(f"{tensor}_u8")
            if mode == "static":
                scale = self.constant(f"{tensor}_scale", np.array(self.scales[tensor], np.float32))
                zero = self.constant(f"{tensor}_zero_point", np.array(ACTIVATION_ZERO_POINT, np.uint8))
                nodes.append(
                    helper.make_node("QuantizeLinear", [tensor, scale, zero], [base], name=f"{base}/Quantize")
                )
            else:
                scale, zero = f"{base}_scale", f"{base}_zero_point"
                nodes.append(
                    helper.make_node(
                        "DynamicQuantizeLinear", [tensor], [base, scale, zero], name=f"{base}/Quantize"
                    )
                )
            self.quantized[key] = (base, scale, zero)
        return self.quantized[key]

    def count(self, mode: str) -> None:
        setattr(self.summary, mode, getattr(self.summary, mode) + 1)

    def attention(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
        weight = self.int8_weight(node.input[1])
        if weight is None:
            return False
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            self.recipe.attention == "mha"
            and not attributes.get("qkv_hidden_sizes")
            and len(node.output) == 1
        ):
            return self.attention_mha(node, weight, attributes, nodes)
        mode = self.input_mode(node.input[0], fused_attention=True)
        if mode == "float":
            return False
        w = quantize_weight(weight, self.bits)
        x, x_scale, x_zero = self.quantize_input(node.input[0], mode, nodes)
        base = node.name or node.output[0]
        inputs = [
            x,
            self.constant(f"{base}_weight_s8", w.values),
            node.input[2],
            x_scale,
            self.constant(f"{base}_weight_scale", w.scale),
            node.input[3] if len(node.input) > 3 else "",
            x_zero,
        ]
        nodes.append(
            helper.make_node(
                "QAttention",
                inputs,
                list(node.output),
                name=f"{base}/QAttention",
                domain=MS_DOMAIN,
                **attributes,
            )
        )
        self.summary.attention += 1
        self.count(mode)
        return True

    def attention_mha(
        self,
        node: onnx.NodeProto,
        weight: np.ndarray,
        attributes: dict[str, Any],
        nodes: list[onnx.NodeProto],
    ) -> bool:
        """Attention(x, W_qkv, b, mask) -> int8 GEMM x @ W_qkv (one GEMM, inputs quantized as any linear
        layer's), Split into Q, K, V, and MultiHeadAttention(Q, K, V, bias b, raw mask) in float.

        The difference to QAttention: the input gets per-row scales like every other linear layer's
        (QAttention takes one), and the projection runs as one GEMM; measured slower at BERT-base on
        AVX2 (see `Recipe.attention`), so it is an option, not the default."""
        mode = self.input_mode(node.input[0], fused_attention=False)
        if mode == "float":
            return False
        base = node.name or node.output[0]
        qkv = self.unique(f"{base}_qkv")
        self.linear(node.input[0], weight, base, qkv, mode, nodes)
        hidden = weight.shape[1] // 3
        sizes = self.constant(f"{base}_qkv_split", np.array([hidden] * 3, np.int64))
        q, k, v = (self.unique(f"{base}_{part}") for part in "qkv")
        nodes.append(helper.make_node("Split", [qkv, sizes], [q, k, v], name=f"{base}/Split", axis=-1))
        mask = node.input[3] if len(node.input) > 3 else ""
        kept = {
            name: value
            for name, value in attributes.items()
            if name in ("num_heads", "mask_filter_value", "scale")
        }
        nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [q, k, v, node.input[2], mask],
                list(node.output),
                name=f"{base}/MultiHeadAttention",
                domain=MS_DOMAIN,
                **kept,
            )
        )
        self.summary.attention += 1
        self.count(mode)
        return True

    def matmul(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
        weight = self.int8_weight(node.input[1])
        mode = self.input_mode(node.input[0], fused_attention=False)
        if weight is None or mode == "float":
            return False
        self.linear(node.input[0], weight, node.name or node.output[0], node.output[0], mode, nodes)
        self.summary.matmuls += 1
        self.count(mode)
        return True

    def linear(
        self, x: str, weight: np.ndarray, base: str, output: str, mode: str, nodes: list[onnx.NodeProto]
    ) -> None:
        """output = x @ weight as a u8 x s8 GEMM, x quantized by `mode` ("row" | "dynamic" | "static")."""
        w = quantize_weight(weight, self.bits)
        w_values = self.constant(f"{base}_weight_s8", w.values)
        w_scale = self.constant(f"{base}_weight_scale", w.scale)
        if mode == "row":
            self.row_matmul(x, output, w_values, w_scale, weight.shape, nodes)
        elif mode == "dynamic":
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul",
                    [x, w_values, w_scale],
                    [output],
                    name=f"{base}/DynamicQuantizeMatMul",
                    domain=MS_DOMAIN,
                )
            )
        else:
            xq, x_scale, x_zero = self.quantize_input(x, mode, nodes)
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [xq, w_values, x_scale, w_scale, x_zero],
                    [output],
                    name=f"{base}/MatMulIntegerToFloat",
                    domain=MS_DOMAIN,
                )
            )

    def row_matmul(
        self,
        x: str,
        output: str,
        w_values: str,
        w_scale: str,
        shape: tuple[int, ...],
        nodes: list[onnx.NodeProto],
    ) -> None:
        """x [..., K] @ W: each row of x quantized with its own symmetric scale max|row| / 127 (zero point
        128); the [M, 1] row scales go to MatMulIntegerToFloat as its input scale."""
        k, n = shape
        b = self.unique(f"{output}_row")
        c = {
            "rows_shape": self.constant(f"{b}_rows_shape", np.array([-1, k], np.int64)),
            "flat": self.constant(f"{b}_flat", np.array([-1], np.int64)),
            "n": self.constant(f"{b}_n", np.array([n], np.int64)),
            "step": self.constant(f"{b}_step", np.array(1.0 / 127.0, np.float32)),
            "tiny": self.constant(f"{b}_tiny", np.array(1e-12, np.float32)),
            "zero_point": self.constant(f"{b}_zero_point", np.array(ACTIVATION_ZERO_POINT, np.uint8)),
        }

        def node_(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
            name = f"{b}_{output}"
            nodes.append(helper.make_node(op, inputs, [name], name=f"{b}/{output}", **attrs))
            return name

        rows = node_("Reshape", [x, c["rows_shape"]], "rows")  # [M, K]
        high = node_("ReduceMax", [rows], "max", axes=[1], keepdims=1)
        low = node_("ReduceMin", [rows], "min", axes=[1], keepdims=1)
        amax = node_("Max", [high, node_("Neg", [low], "neg_min"), c["tiny"]], "amax")  # [M, 1]
        scale = node_("Mul", [amax, c["step"]], "scale")
        scale_flat = node_("Reshape", [scale, c["flat"]], "scale_flat")  # [M]
        zero_points = node_("Expand", [c["zero_point"], node_("Shape", [scale_flat], "m")], "zero_points")
        quantized = node_("QuantizeLinear", [rows, scale_flat, zero_points], "u8", axis=0)
        # a_scale [M, 1]: ONNX Runtime broadcasts it against the weight scales [N] (no separate Mul pass)
        scaled = node_(
            "MatMulIntegerToFloat",
            [quantized, w_values, scale, w_scale, c["zero_point"]],
            "product",
            domain=MS_DOMAIN,
        )
        out_shape = node_("Concat", [node_("Shape", [x], "batch_dims", end=-1), c["n"]], "out_shape", axis=0)
        nodes.append(helper.make_node("Reshape", [scaled, out_shape], [output], name=f"{b}/out"))


def quantize_gemms(
    model: onnx.ModelProto, scales: dict[str, float], recipe: Recipe
) -> tuple[onnx.ModelProto, Summary]:
    """Attention and MatMul nodes whose constant weights the export quantized -> int8 kernels (in place)."""
    graph = model.graph
    builder = _Builder(graph, recipe, scales)
    builder.names |= {name for node in graph.node for name in (*node.input, *node.output, node.name)}
    builder.names |= set(builder.inits)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        done = False
        if node.op_type == "Attention" and node.domain == MS_DOMAIN:
            done = builder.attention(node, nodes)
            builder.summary.float_gemms += not done
        elif node.op_type == "MatMul" and node.input[1] in builder.inits:
            done = builder.matmul(node, nodes)
            builder.summary.float_gemms += not done
        if not done:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(builder.new_inits)
    _remove_unused_initializers(graph)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, builder.summary


# --- 4. SkipLayerNormalization back to Sum + LayerNormalization -------------------------------------

#: ONNX's LayerNormalization (the op this pass emits) exists from opset 17
LAYER_NORM_OPSET = 17


def split_skip_layer_norms(model: onnx.ModelProto) -> int:
    """SkipLayerNormalization(x, skip, gamma, beta[, bias]) -> LayerNormalization(Sum(x, skip[, bias]))
    (in place); the number replaced.

    Why: ONNX Runtime's CPU SkipLayerNormalization kernel is an order of magnitude slower than the
    two ops it fuses (figures: docs/benchmarks.md, "The CPU INT8 path"). Sum, not Add: ONNX Runtime's optimizer fuses Add +
    LayerNormalization back into SkipLayerNormalization. Nodes whose mean / inverse-std outputs are
    used are kept; the skip-sum output (the 4th) becomes the Sum's output."""
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)
    if opset < LAYER_NORM_OPSET:
        return 0
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if (
            node.op_type != "SkipLayerNormalization"
            or node.domain != MS_DOMAIN
            or any(name and name in used for name in outputs[1:3])
        ):
            nodes.append(node)
            continue
        base = node.name or outputs[0]
        total = outputs[3] or f"{base}_skip_sum"
        addends = [node.input[0], node.input[1]] + (
            [node.input[4]] if len(node.input) > 4 and node.input[4] else []
        )
        epsilon = float(
            _attribute(node, "epsilon", 1e-12)
        )  # SkipLayerNormalization's default, not ONNX's 1e-5
        layer_norm_inputs = [total, node.input[2]] + (
            [node.input[3]] if len(node.input) > 3 and node.input[3] else []
        )
        nodes.append(helper.make_node("Sum", addends, [total], name=f"{base}/Sum"))
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                layer_norm_inputs,
                [outputs[0]],
                name=f"{base}/LayerNorm",
                axis=-1,
                epsilon=epsilon,
            )
        )
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


# --- the whole derivation and its cache ------------------------------------------------------------


def derive(
    export_dir: str | os.PathLike,
    info: ExportInfo,
    recipe: Recipe | None = None,
    model: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """The CPU INT8 graph of the qdq export in `export_dir` (in memory); `model`: its model.onnx, if loaded."""
    export_dir = Path(export_dir)
    recipe = (recipe or Recipe()).resolved()
    check_int8_applies(export_dir, info)
    dequantized = dequantize_qdq(model if model is not None else load_exported_model(export_dir))
    model = dequantized.model
    unsmoothed = fold_smoothing_divisions(model, dequantized.scales)
    config = read_config(export_dir)
    if recipe.fuse and info.architecture in FUSABLE_ARCHITECTURES:
        model = fuse_transformer(
            model, int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
        )
    model, summary = quantize_gemms(model, dequantized.scales, recipe)
    split_skip_layer_norms(model)
    logger.info(
        "CPU INT8 graph of %s (%s): %d weights and %d activation Q/DQ pairs taken out, %d smoothing divisions "
        "folded into the weights; %d QAttention and %d int8 MatMul (inputs: %d static, %d dynamic per tensor, "
        "%d per row); %d linear layers left float",
        export_dir,
        recipe.tag,
        dequantized.weights,
        dequantized.activation_pairs,
        unsmoothed,
        summary.attention,
        summary.matmuls,
        summary.static,
        summary.dynamic,
        summary.row,
        summary.float_gemms,
    )
    model.doc_string = (
        f"CPU INT8 graph ({recipe.tag}) derived by trt_runtime.backends.onnxruntime.cpu_int8 from {MODEL_ONNX} "
        f"sha256 {info.onnx_sha256}"
    )
    return model
