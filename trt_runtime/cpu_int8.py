"""The INT8 graph that ONNX Runtime runs fastest on an x86 CPU, derived from a `qdq` export.

What `python -m exporter --quantization qdq` writes is laid out for TensorRT: every linear layer's
input, both attention matmuls and the residual adds have a QuantizeLinear/DequantizeLinear pair, weights
are signed int8. On a CPU, ONNX Runtime turns those pairs into int8 kernels one node at a time and
keeps the float attention, LayerNorm and GELU subgraphs unfused, which is slower than float. This
module derives another graph from the same export, computing with the same weights and the same
calibrated activation scales:

1. Q/DQ out: every weight DequantizeLinear becomes a float initializer (the export's int8 weights times
   their scales: exactly the weights the export computes with); every activation Q/DQ pair is removed,
   its scale remembered by the float tensor it quantized.
2. Fusions: onnxruntime.transformers' BERT optimizer on that float graph (Attention with the Q, K and V
   projections in one GEMM, SkipLayerNormalization with the bias add, BiasGelu). Attention keeps the
   raw 0/1 attention mask, so left padding and masks with holes stay right.
3. INT8 GEMMs: each linear layer that the export quantized becomes an unsigned-int8-activation x
   signed-int8-weight kernel: QAttention for the fused attention, MatMulIntegerToFloat after a
   QuantizeLinear (static: the export's calibrated scale, zero point 128 so the grid is the export's
   symmetric one) or DynamicQuantizeMatMul (dynamic: range measured on every call). Weights stay
   per output channel. Everything else (softmax, LayerNorm, GELU, the attention matmuls, the heads the
   export left in float) stays float32.

Weights on 7 bits, and why: MLAS's U8S8 kernel on AVX2 without VNNI (vpmaddubsw) adds two u8 x s8
products in a saturating int16, and 255 x 127 x 2 overflows it: the results are silently wrong by
up to ~10 % of a GEMM's output range. With 7-bit weights (|w| <= 63) no pair can overflow.
With AVX-VNNI or AVX512-VNNI (vpdpbusd adds in int32) the weights keep all 8 bits. `weight_bits=None`
picks by the CPU; the choice is part of the cache key.

The derived graph is written once next to the export, `<dir>/.cache/cpu-int8-<onnxruntime version>-
<sha256[:16] of model.onnx>-<recipe>.onnx` (temporary sibling, then renamed), and `OrtRunner` loads it
for qdq exports on the CPU execution provider (see `trt_runtime.ort_runner.ort_model_path`).
model.onnx stays the exported artefact (the one TensorRT builds from).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.export_dir import CONFIG_JSON, MODEL_ONNX, ExportInfo, sha256_file

logger = logging.getLogger(__name__)

#: bumped when the derivation changes, so that older cached graphs are not reused
RECIPE_VERSION = 1
CACHE_DIR = ".cache"
MS_DOMAIN = "com.microsoft"
#: architectures whose float graph onnxruntime.transformers' "bert" optimizer knows how to fuse
FUSABLE_ARCHITECTURES = ("bert",)
ACTIVATION_ZERO_POINT = 128  # u8 activations: the export's symmetric int8 grid shifted by 128


class CpuInt8Error(ValueError):
    """The export cannot be turned into the CPU INT8 graph (not a qdq export, unexpected Q/DQ layout)."""


@dataclass(frozen=True)
class Recipe:
    """How the CPU graph is made; `tag` names it in the cache key.

    activations: "static" (the export's calibrated scales) or "dynamic" (each call's own range).
    weight_bits: 8 or 7; None: 8 where the CPU has VNNI (or is not x86), else 7 (see the module doc).
    fuse: onnxruntime.transformers' fusions (Attention -> QAttention, SkipLayerNormalization, BiasGelu).
    """

    activations: str = "static"
    weight_bits: int | None = None
    fuse: bool = True

    def __post_init__(self) -> None:
        if self.activations not in ("static", "dynamic"):
            raise ValueError(f"activations={self.activations!r}; choose static or dynamic")
        if self.weight_bits not in (None, 7, 8):
            raise ValueError(f"weight_bits={self.weight_bits!r}; choose 7, 8 or None (by the CPU)")

    def resolved(self) -> Recipe:
        """This recipe with weight_bits chosen for this CPU where it was None."""
        if self.weight_bits is not None:
            return self
        return Recipe(self.activations, 8 if int8_dot_products_are_exact() else 7, self.fuse)

    @property
    def tag(self) -> str:
        bits = self.resolved().weight_bits
        return f"v{RECIPE_VERSION}-{self.activations}-w{bits}" + ("-fused" if self.fuse else "")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def int8_dot_products_are_exact() -> bool:
    """Whether MLAS's u8 x s8 kernel adds in int32 here (VNNI, or not x86); False on AVX2-only x86."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


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
                raise CpuInt8Error(f"{node.name}: a QuantizeLinear whose output does not go to DequantizeLinear only")
            scale = _scalar(inits[node.input[1]])
            for dq in followers:
                rename[dq.output[0]] = node.input[0]
                drop.add(id(dq))
                result.activation_pairs += 1
                for user in consumers.get(dq.output[0], []):
                    if user.op_type == "MatMul" and user.input[0] == dq.output[0] and user.input[1] in weights:
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


# --- 2. fusions ------------------------------------------------------------------------------------


def _read_config(export_dir: Path) -> dict[str, Any]:
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


@dataclass
class Summary:
    """What `quantize_gemms` did."""

    attention: int = 0
    matmuls: int = 0
    static: int = 0
    dynamic: int = 0
    float_matmuls: int = 0


class _Builder:
    def __init__(self, graph: onnx.GraphProto, recipe: Recipe, scales: dict[str, float]):
        self.graph = graph
        self.recipe = recipe
        self.scales = scales
        self.inits = _initializers(graph)
        self.new_inits: list[onnx.TensorProto] = []
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}  # float tensor -> (q, scale, zero point)
        self.summary = Summary()

    def constant(self, name: str, value: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        if init is None:
            return None
        value = numpy_helper.to_array(init)
        return value if value.ndim == 2 and value.dtype == np.float32 else None

    def quantize_input(self, tensor: str, nodes: list[onnx.NodeProto]) -> tuple[str, str, str]:
        """u8 version of `tensor` (made once, shared by every consumer): (tensor, scale, zero point)."""
        if tensor in self.quantized_inputs:
            return self.quantized_inputs[tensor]
        base = tensor.replace("/", "_").strip("_")
        quantized = f"{base}_u8"
        if self.recipe.activations == "static":
            scale = self.constant(f"{base}_scale", np.array(self.scales[tensor], np.float32))
            zero = self.constant(f"{base}_zero_point", np.array(ACTIVATION_ZERO_POINT, np.uint8))
            nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{base}/Quantize"))
            self.summary.static += 1
        else:
            scale, zero = f"{base}_scale", f"{base}_zero_point"
            nodes.append(
                helper.make_node("DynamicQuantizeLinear", [tensor], [quantized, scale, zero], name=f"{base}/Quantize")
            )
            self.summary.dynamic += 1
        self.quantized_inputs[tensor] = (quantized, scale, zero)
        return self.quantized_inputs[tensor]

    def attention(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
        weight = self.weight(node.input[1])
        if weight is None or node.input[0] not in self.scales:
            return False
        bits = self.recipe.resolved().weight_bits or 8
        w = quantize_weight(weight, bits)
        x, x_scale, x_zero = self.quantize_input(node.input[0], nodes)
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
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(
            helper.make_node("QAttention", inputs, list(node.output), name=f"{base}/QAttention", domain=MS_DOMAIN, **attributes)
        )
        self.summary.attention += 1
        return True

    def matmul(self, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> bool:
        weight = self.weight(node.input[1])
        if weight is None or node.input[0] not in self.scales:
            return False
        bits = self.recipe.resolved().weight_bits or 8
        w = quantize_weight(weight, bits)
        base = node.name or node.output[0]
        w_name = self.constant(f"{base}_weight_s8", w.values)
        w_scale = self.constant(f"{base}_weight_scale", w.scale)
        if self.recipe.activations == "dynamic":
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [node.input[0], w_name, w_scale], list(node.output),
                    name=f"{base}/DynamicQuantizeMatMul", domain=MS_DOMAIN,
                )
            )
            self.summary.dynamic += 1
        else:
            x, x_scale, x_zero = self.quantize_input(node.input[0], nodes)
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat", [x, w_name, x_scale, w_scale, x_zero], list(node.output),
                    name=f"{base}/MatMulIntegerToFloat", domain=MS_DOMAIN,
                )
            )
        self.summary.matmuls += 1
        return True


def quantize_gemms(model: onnx.ModelProto, scales: dict[str, float], recipe: Recipe) -> tuple[onnx.ModelProto, Summary]:
    """Attention and MatMul nodes with constant weights whose input the export quantized -> INT8 kernels."""
    graph = model.graph
    builder = _Builder(graph, recipe, scales)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        done = False
        if node.op_type == "Attention" and node.domain == MS_DOMAIN:
            done = builder.attention(node, nodes)
        elif node.op_type == "MatMul":
            done = builder.matmul(node, nodes)
            builder.summary.float_matmuls += not done and builder.weight(node.input[1]) is not None
        if not done:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(builder.new_inits)
    _remove_unused_initializers(graph)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model, builder.summary


# --- the whole derivation and its cache ------------------------------------------------------------


def derive(export_dir: str | os.PathLike, info: ExportInfo, recipe: Recipe | None = None) -> onnx.ModelProto:
    """The CPU INT8 graph of the qdq export in `export_dir` (in memory)."""
    export_dir = Path(export_dir)
    recipe = (recipe or Recipe()).resolved()
    if info.quantization != "qdq":
        raise CpuInt8Error(
            f"{export_dir} is a {info.quantization!r} export; the CPU INT8 graph is derived from qdq exports"
        )
    dequantized = dequantize_qdq(onnx.load(str(export_dir / MODEL_ONNX)))
    model = dequantized.model
    config = _read_config(export_dir)
    if recipe.fuse and info.architecture in FUSABLE_ARCHITECTURES:
        model = fuse_transformer(
            model, int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
        )
    model, summary = quantize_gemms(model, dequantized.scales, recipe)
    logger.info(
        "CPU INT8 graph of %s (%s): %d weights and %d activation Q/DQ pairs taken out; %d QAttention, "
        "%d int8 MatMul (%d static, %d dynamic input quantizations), %d MatMul left float",
        export_dir, recipe.tag, dequantized.weights, dequantized.activation_pairs, summary.attention,
        summary.matmuls, summary.static, summary.dynamic, summary.float_matmuls,
    )
    doc = f"CPU INT8 graph ({recipe.tag}) derived by trt_runtime.cpu_int8 from {MODEL_ONNX} sha256 {info.onnx_sha256}"
    model.doc_string = doc
    return model


def cache_path(export_dir: str | os.PathLike, info: ExportInfo, recipe: Recipe | None = None) -> Path:
    """<dir>/.cache/cpu-int8-<onnxruntime version>-<sha256[:16] of model.onnx>-<recipe tag>.onnx"""
    import onnxruntime

    export_dir = Path(export_dir)
    digest = info.onnx_sha256 or sha256_file(export_dir / MODEL_ONNX)
    tag = (recipe or Recipe()).tag
    return export_dir / CACHE_DIR / f"cpu-int8-{onnxruntime.__version__}-{digest[:16]}-{tag}.onnx"


def cached_model(
    export_dir: str | os.PathLike, info: ExportInfo, recipe: Recipe | None = None
) -> tuple[Path, str]:
    """The CPU INT8 graph's file, derived and written now where missing: (path, "created ..." | "reused ...")."""
    path = cache_path(export_dir, info, recipe)
    if path.exists():
        return path, f"reused {path}"
    model = derive(export_dir, info, recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.onnx")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, f"created {path}"
