"""What precision each layer of an engine runs in: TensorRT's engine inspector JSON, summarised.

The builder sets `profiling_verbosity = DETAILED` (as Polygraphy does by default,
tools/Polygraphy/polygraphy/backend/trt/config.py v10.13.0) and asks
`engine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON)` with an
execution context at the profile's opt shapes, so dimensions are concrete. trtexec writes the same JSON
with `--exportLayerInfo` (samples/common/sampleReporting.cpp `printLayerInfo`, v10.13.0:546-559). The
builder keeps it as `engine_layers.json`; `summarize_layers` turns it into the `layers` entry of
engine.json that `python -m trt_runtime inspect DIR` shows, so nobody has to trust that Q/DQ became INT8.

The format, as TensorRT writes it (real examples: NVIDIA/TensorRT v10.13.0
tools/experimental/trt-engine-explorer/examples/pytorch/resnet/A100/*/*.graph.json and tests/inputs/;
Myelin layers of a BERT engine in NVIDIA/TensorRT issue #4397; `Metadata` in issue #4020):
`{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Location", "Dimensions", "Format/Datatype"}],
"Outputs": [...], "ParameterType", "TacticName", "TacticValue", "StreamId", "Metadata"}, ...],
"Bindings": [...]}`. `LayerType` is the implementation (CaskConvolution, CaskGemmMatrixMultiply,
Reformat, PointWiseV2, and inside a Myelin region `gemm` and `kgen`); `Format/Datatype` is a layout
description ("Row major linear FP32", "Thirty-two wide channel vectorized row major Int8 format") or,
for Myelin tensors, a bare type ("Half", "Float", "Int8"; trex/activations.py's "kgen formats");
`Metadata` lists the ONNX nodes a layer came from as "[ONNX Layer: NAME]" joined by U+001E. With a
lower verbosity `Layers` holds only names.

Rules (what a layer "runs in"):
- a layer's precision is its first input's type (trex layer.py: `self.precision = self.inputs[0].precision`);
  NoOp layers do nothing and are not counted;
- GEMMs are layers of type `gemm` (Myelin) or of parameter type MatrixMultiply / Convolution /
  FullyConnected (and Cask*Gemm*, Cask*Convolution implementations); their work is 2*M*N*K from the
  logical shapes (MatMul: K is the first input's last dimension; Convolution: input channels times the
  kernel's size over the groups). Fused attention kernels (Myelin `kgen` layers such as
  `_gemm_mha_v2`, or tactics named *mha*) hold both attention GEMMs, 4*|Q|*Sk of work, and are counted
  apart as `fused_attention`;
- an ibert plugin layer is one whose name or metadata names an ibert node of the network handed to
  the parser (the builder passes their names), else one that mentions IntGELU / IntSoftmax / IntLayerNorm.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from math import prod
from typing import Any

from trt_runtime.backends.tensorrt.plugins.specs import PLUGINS
from trt_runtime.contract.errors import QbertError


class LayerReportError(QbertError, ValueError):
    """The layer information cannot be summarised (not the inspector's JSON, or not DETAILED)."""

    code = "layer-report-invalid"


#: substrings of a Format/Datatype string, most specific first, and the precision they mean
#: (trex/activations.py `_regionFormatDict` and `parse_tensor_info`; Polygraphy backend/trt/util.py)
_DATATYPES = (
    ("BFLOAT16", "BF16"), ("BF16", "BF16"),
    ("FP16", "FP16"), ("HALF", "FP16"),
    ("FP32", "FP32"), ("FLOAT", "FP32"),
    ("FP8", "FP8"), ("FP4", "FP4"),
    ("UINT8", "UINT8"), ("INT8", "INT8"), ("INT4", "INT4"),
    ("INT32", "INT32"), ("INT64", "INT64"), ("BOOL", "BOOL"), ("DOUBLE", "FP64"),
)
_GEMM_PARAMETER_TYPES = frozenset({"MatrixMultiply", "Convolution", "FullyConnected"})
_PROFILE_SUFFIX = re.compile(r" \[profile (\d+)\]")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]\x1e]*)\]")


def datatype(format_datatype: str) -> str:
    """The precision a `Format/Datatype` string names ("Row major linear FP16 format" -> "FP16")."""
    text = format_datatype.upper()
    for needle, precision in _DATATYPES:
        if needle in text:
            return precision
    return "unknown"


def _layers(information: str | Mapping[str, Any] | list[Any]) -> list[dict[str, Any]]:
    data: Any = json.loads(information) if isinstance(information, str) else information
    layers = data.get("Layers") if isinstance(data, Mapping) else data
    if not isinstance(layers, list):
        raise LayerReportError("not the engine inspector's JSON (no 'Layers' list)")
    if layers and not all(isinstance(layer, Mapping) for layer in layers):
        raise LayerReportError(
            "the engine holds layer names only: it was built without ProfilingVerbosity.DETAILED (trtexec: "
            "--profilingVerbosity=detailed); rebuild it with python -m trt_runtime build"
        )
    return [dict(layer) for layer in layers if not _in_other_profile(str(layer.get("Name", "")))]


def _in_other_profile(name: str) -> bool:
    """Layers of profile N > 0 carry a " [profile N]" suffix (trex parser.py `filter_profiles`); count one."""
    match = _PROFILE_SUFFIX.search(name)
    return match is not None and match.group(1) != "0"


def _tensors(layer: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = layer.get(key) or []
    return [t for t in value if isinstance(t, Mapping)]


def layer_precision(layer: Mapping[str, Any]) -> str:
    tensors = _tensors(layer, "Inputs") or _tensors(layer, "Outputs")
    return datatype(str(tensors[0].get("Format/Datatype", ""))) if tensors else "unknown"


def onnx_nodes(layer: Mapping[str, Any]) -> list[str]:
    """The ONNX nodes a layer came from, from its Metadata ("[ONNX Layer: NAME]" records)."""
    return _ONNX_LAYER.findall(str(layer.get("Metadata", "")))


def _tactic(layer: Mapping[str, Any]) -> str:
    return str(layer.get("TacticName") or layer.get("TacticValue") or "")


#: fused multi-head attention kernels: Myelin's `_gemm_mha_v2` (issue #4397), TensorRT's fmha plugins/tactics;
#: not a layer merely named after an ONNX scope called "mha"
_FUSED_ATTENTION = re.compile(r"gemm_mha|fmha|(?:^|_)mha_v\d", re.IGNORECASE)


def is_fused_attention(layer: Mapping[str, Any]) -> bool:
    return layer.get("LayerType") != "gemm" and bool(
        _FUSED_ATTENTION.search(str(layer.get("Name", ""))) or _FUSED_ATTENTION.search(_tactic(layer))
    )


def is_gemm(layer: Mapping[str, Any]) -> bool:
    kind = str(layer.get("LayerType", ""))
    return (
        kind == "gemm"
        or layer.get("ParameterType") in _GEMM_PARAMETER_TYPES
        or ("Cask" in kind and ("Gemm" in kind or "Convolution" in kind))
    )


def _dims(tensor: Mapping[str, Any]) -> list[int] | None:
    dims = tensor.get("Dimensions")
    if not isinstance(dims, list) or not dims or any(not isinstance(d, int) or d < 0 for d in dims):
        return None  # missing, or dynamic (-1): no execution context with shapes was given
    return dims


def gemm_work(layer: Mapping[str, Any]) -> int | None:
    """Multiply-adds x 2 of a GEMM or fused-attention layer, from its logical shapes; None when unknown."""
    inputs, outputs = _tensors(layer, "Inputs"), _tensors(layer, "Outputs")
    if not inputs or not outputs:
        return None
    first, out = _dims(inputs[0]), _dims(outputs[0])
    if first is None or out is None:
        return None
    if is_fused_attention(layer):
        keys = _dims(inputs[1]) if len(inputs) > 1 else None
        return 4 * prod(first) * keys[-1] if keys else None
    if layer.get("ParameterType") == "Convolution" and isinstance(layer.get("Kernel"), list) and len(first) > 1:
        groups = int(layer.get("Groups", 1) or 1)
        return 2 * prod(out) * first[1] * prod(int(k) for k in layer["Kernel"]) // groups
    return 2 * prod(out) * first[-1]


def _plugin_of(layer: Mapping[str, Any], ibert_nodes: Mapping[str, str] | None) -> str | None:
    names = [str(layer.get("Name", "")), *onnx_nodes(layer)]
    if ibert_nodes:
        for node, plugin in ibert_nodes.items():
            if any(node and (node == name or node in name) for name in names):
                return plugin
        return None
    text = " ".join(names + [str(layer.get("LayerType", ""))])
    return next((spec.plugin_id for op, spec in PLUGINS.items() if op in text), None)


def _shares(work: Mapping[str, int]) -> dict[str, float]:
    total = sum(work.values())
    return {kind: round(value / total, 4) for kind, value in work.items()} if total else {}


def summarize_layers(
    information: str | Mapping[str, Any] | list[Any], ibert_nodes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The layer report (see the module docstring) of the inspector's JSON, as plain data for engine.json.

    ibert_nodes: ONNX node name -> plugin id of the ibert nodes handed to the parser.
    """
    layers = [layer for layer in _layers(information) if layer.get("LayerType") != "NoOp"]
    precision: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    gemm_layers: Counter[str] = Counter()
    gemm_work_by: Counter[str] = Counter()
    attention_work_by: Counter[str] = Counter()
    attention_layers: Counter[str] = Counter()
    plugins: Counter[str] = Counter()
    plugin_layers: list[str] = []
    unknown_work = 0
    for layer in layers:
        kind = layer_precision(layer)
        precision[kind] += 1
        kinds[str(layer.get("LayerType", "unknown"))] += 1
        plugin = _plugin_of(layer, ibert_nodes)
        if plugin is not None:
            plugins[plugin] += 1
            plugin_layers.append(str(layer.get("Name", "")))
            continue
        attention = is_fused_attention(layer)
        if not (attention or is_gemm(layer)):
            continue
        work = gemm_work(layer)
        if attention:
            attention_layers[kind] += 1
        else:
            gemm_layers[kind] += 1
        if work is None:
            unknown_work += 1
        elif attention:
            attention_work_by[kind] += work
        else:
            gemm_work_by[kind] += work
    all_work = gemm_work_by + attention_work_by
    return {
        "layers": len(layers),
        "precision": dict(precision.most_common()),
        "layer_types": dict(kinds.most_common()),
        "myelin": any(layer.get("LayerType") in ("gemm", "kgen", "Myelin") for layer in layers),
        "gemm": {
            "layers": dict(gemm_layers.most_common()),
            "work": dict(gemm_work_by.most_common()),
            "work_share": _shares(gemm_work_by),
        },
        "fused_attention": {
            "layers": dict(attention_layers.most_common()),
            "work": dict(attention_work_by.most_common()),
        },
        "matmul_work_share": _shares(all_work),  # every GEMM, the attention ones included
        "layers_with_unknown_work": unknown_work,
        "ibert_plugins": dict(sorted(plugins.items())),
        "ibert_plugin_layers": plugin_layers,
    }


def _percent(share: Mapping[str, float]) -> str:
    return ", ".join(f"{kind} {value:.1%}" for kind, value in share.items()) or "none"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "none"


def format_layer_report(report: Mapping[str, Any]) -> str:
    """The report as the lines `python -m trt_runtime inspect` prints."""
    gemm, attention = report["gemm"], report["fused_attention"]
    lines = [
        f"layers: {report['layers']} ({_counts(report['precision'])})"
        + (" [Myelin]" if report.get("myelin") else ""),
        f"GEMM layers: {_counts(gemm['layers'])}; GEMM work: {_percent(gemm['work_share'])}",
        f"fused attention layers: {_counts(attention['layers'])}",
        f"all matrix work (GEMMs and fused attention): {_percent(report['matmul_work_share'])}",
    ]
    if report.get("layers_with_unknown_work"):
        lines.append(f"  ({report['layers_with_unknown_work']} GEMM layer(s) without concrete shapes left out)")
    plugins = report.get("ibert_plugins") or {}
    lines.append(f"ibert plugins: {_counts(plugins) if plugins else 'none'}")
    return "\n".join(lines)


def layer_rows(information: str | Mapping[str, Any] | list[Any]) -> list[tuple[str, str, str, str]]:
    """(name, layer type, precision, tactic) of every layer, for `inspect --layers`."""
    return [
        (str(layer.get("Name", "")), str(layer.get("LayerType", "")), layer_precision(layer), _tactic(layer))
        for layer in _layers(information)
    ]
