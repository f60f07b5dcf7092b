"""The export's model.onnx as the TensorRT ONNX parser should see it (pure onnx + NumPy; tested on the CPU).

Each `ibert` node ships with a model-local ONNX function of the same domain and name whose body
computes the op from standard ONNX ops (DESIGN.md). The parser expands a node that has a local
function into the function's body, so to make it use the `ibert` TensorRT plugins instead, the
builder (`strip_plugin_functions`):
 - removes those functions, local functions only they called, and opset imports no node uses any more;
 - sets `plugin_namespace` / `plugin_version` on the nodes: the parser looks a plugin up by op type
   and these attributes, not by the ONNX domain;
 - appends the per-channel constant tables of IntGELU and IntLayerNorm as initializer inputs
   (`trt_runtime.contract.ibert`), computed on the host exactly as the NumPy reference does;
 - writes out attributes left at their defaults (the parser passes only those a node has) and checks
   the ones the plugins read (types, derived scales), so a bad export fails here, with the node's
   name, rather than inside TensorRT;
 - on TensorRT 10.9+, sets the node attribute `aot` (1: the AOT implementation, 0: JIT), the strict
   per-node request of NVIDIA's sample that overrides the network flags (`AOT_ATTRIBUTE`).
With `--no-plugins` the model stays as exported and TensorRT builds the bodies from standard layers.
`value_types` gives the element type of every tensor (ONNX type inference; plugin outputs like their
first input), what the parser check (parser_support.py) and the FP16 pass (fp16.py) read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, numpy_helper

from trt_runtime.backends.tensorrt.integer_form import tensorrt_form
from trt_runtime.backends.tensorrt.plugins.specs import PLUGIN_NAMESPACE, PLUGIN_VERSION, PLUGINS
from trt_runtime.contract import ibert
from trt_runtime.contract.errors import QbertError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: the node attribute by which TensorRT's ONNX parser (10.9+) picks a Python plugin's implementation:
#: 1 = kSTRICT_AOT, 0 = kSTRICT_JIT, overriding the network's PREFER_*_PYTHON_PLUGINS flags
#: (onnx/onnx-tensorrt importerUtils.cpp `createPlugin`, "Node-level specifications override network-level
#: preferences"; NVIDIA/TensorRT v10.13.0 samples/python/quickly_deployable_plugins/README.md:239-259 and
#: qdp_runner.py:222 write it as a bool, which ONNX stores as an INT attribute)
AOT_ATTRIBUTE = "aot"
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
_ATTRIBUTE_TYPES = {"FLOAT": AttributeProto.FLOAT, "FLOATS": AttributeProto.FLOATS, "INT": AttributeProto.INT}


class OnnxForTensorRTError(QbertError, ValueError):
    """The ONNX file cannot be turned into what the TensorRT builder needs; the message says the fix."""

    code = "onnx-for-tensorrt"


@dataclass
class PreparedOnnx:
    """The model to hand to the parser, and what the builder must know about it."""

    model: ModelProto
    plugins: list[str]  # plugin ids used ("ibert::IntGELU", ...), sorted; empty when bodies are kept
    ibert_ops: list[str]  # ibert op types in the graph, sorted
    has_qdq: bool

    def plugin_nodes(self) -> dict[str, str]:
        """Node name -> plugin id of the ibert nodes the parser maps to plugins (empty with the bodies kept)."""
        if not self.plugins:
            return {}
        return {
            node.name or node.output[0]: f"{PLUGIN_NAMESPACE}::{node.op_type}"
            for node in iter_nodes(self.model.graph)
            if node.domain == ibert.DOMAIN
        }

    def set_plugin_implementation(self, aot: bool | None) -> None:
        """Write (or, with None, remove) the `aot` attribute of every plugin node (see `strip_plugin_functions`)."""
        for node in iter_nodes(self.model.graph):
            if node.domain == ibert.DOMAIN and self.plugins:
                kept = [a for a in node.attribute if a.name != AOT_ATTRIBUTE]
                del node.attribute[:]
                node.attribute.extend(kept)
                if aot is not None:
                    node.attribute.append(onnx.helper.make_attribute(AOT_ATTRIBUTE, int(aot)))

    def model_with_weights(self, base_dir: str | os.PathLike) -> ModelProto:
        """The model with any weights stored as external data read in, to be saved somewhere else."""
        if not any(t.data_location == TensorProto.EXTERNAL for t in self.model.graph.initializer):
            return self.model
        copy = ModelProto()
        copy.CopyFrom(self.model)
        onnx.external_data_helper.load_external_data_for_model(copy, str(base_dir))
        return copy


def iter_nodes(graph: GraphProto) -> Iterator[NodeProto]:
    """Every node of `graph`, including those in subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from iter_nodes(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from iter_nodes(subgraph)


def iter_all_nodes(model: ModelProto) -> Iterator[NodeProto]:
    """Nodes of the main graph and of every local function."""
    yield from iter_nodes(model.graph)
    for function in model.functions:
        yield from function.node


def has_qdq(model: ModelProto) -> bool:
    """True when the model has QuantizeLinear/DequantizeLinear nodes (explicit quantization)."""
    return any(node.op_type in QDQ_OPS and node.domain in STANDARD_DOMAINS for node in iter_all_nodes(model))


#: initializers above this many bytes lose their data in `_types_only` (type inference reads dims, not values)
_TYPE_INFERENCE_DATA_LIMIT = 1 << 12


def _types_only(model: ModelProto) -> ModelProto:
    """A copy of `model` whose large initializers keep name, type and dims but no data (cheap to infer on)."""
    light = ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, field).extend(getattr(model.graph, field))
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= _TYPE_INFERENCE_DATA_LIMIT:
            graph.initializer.append(tensor)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="(not loaded)")
    return light


def _custom_nodes_without_function(model: ModelProto) -> list[NodeProto]:
    functions = {(f.domain, f.name) for f in model.functions}
    return [
        node for node in model.graph.node
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in functions
    ]


def value_types(model: ModelProto) -> dict[str, int]:
    """The ONNX element type (TensorProto.FLOAT, ...) of every tensor of the main graph that type inference
    can tell: graph inputs, initializers, node outputs.

    ONNX knows nothing of a plugin node (a custom op without a function body); its outputs get the type
    of its first input, which is what the ibert plugins declare (`x.like()` in plugins/registration.py).
    """
    light = _types_only(model)
    plugin_nodes = _custom_nodes_without_function(light)
    for _ in range(len(plugin_nodes) + 1):  # each round types the plugins whose inputs became known
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
        types = {t.name: t.data_type for t in inferred.graph.initializer}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
        new = [
            (output, types[node.input[0]])
            for node in plugin_nodes
            if node.input and node.input[0] in types
            for output in node.output
            if output and output not in types
        ]
        if not new:
            return types
        light.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, kind, None) for name, kind in new)
    return types


def _defines_plugin_op(function: FunctionProto) -> bool:
    return function.domain == ibert.DOMAIN and function.name in PLUGINS


def ibert_op_types(model: ModelProto) -> list[str]:
    """Sorted op types of the `ibert` nodes (main graph and functions other than the ibert ops' bodies)."""
    ops = {node.op_type for node in iter_nodes(model.graph) if node.domain == ibert.DOMAIN}
    for function in model.functions:
        if not _defines_plugin_op(function):
            ops.update(node.op_type for node in function.node if node.domain == ibert.DOMAIN)
    return sorted(ops)


def _describe(node: NodeProto) -> str:
    return f"node {node.name!r} ({node.domain}::{node.op_type})" if node.name else f"a {node.domain}::{node.op_type} node"


def _attributes(node: NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _check_plugin_node(node: NodeProto) -> None:
    """Check the node against its plugin's spec, writing out attributes left at their defaults."""
    spec = PLUGINS.get(node.op_type)
    if spec is None:
        raise OnnxForTensorRTError(
            f"{_describe(node)} has no TensorRT plugin (there are plugins for {', '.join(PLUGINS)}); build with "
            f"--no-plugins to let TensorRT build it from its ONNX function body"
        )
    if len(node.input) != len(spec.inputs) or len(node.output) != 1:
        raise OnnxForTensorRTError(
            f"{_describe(node)} has {len(node.input)} inputs and {len(node.output)} outputs; the plugin takes "
            f"{len(spec.inputs)} ({', '.join(spec.inputs)}) and gives 1. Re-export the model"
        )
    attributes = {a.name: a for a in node.attribute}
    for name, value in spec.defaults:
        if name not in attributes:
            node.attribute.append(onnx.helper.make_attribute(name, value))
            attributes[name] = node.attribute[-1]
    for name, kind in spec.attributes:
        if name not in attributes:
            raise OnnxForTensorRTError(f"{_describe(node)} lacks the attribute {name!r} ({kind}); re-export the model")
        if attributes[name].type != _ATTRIBUTE_TYPES[kind]:
            found = AttributeProto.AttributeType.Name(attributes[name].type)
            raise OnnxForTensorRTError(
                f"{_describe(node)}: attribute {name!r} is {found}, the plugin needs {kind}; re-export the model"
            )


def _set_attribute(node: NodeProto, name: str, value: str | int) -> None:
    """Add attribute `name` = value; one already there must have that value."""
    for attribute in node.attribute:
        if attribute.name == name:
            current = onnx.helper.get_attribute_value(attribute)
            if isinstance(current, bytes):
                current = current.decode(errors="replace")
            if current != value:
                raise OnnxForTensorRTError(
                    f"{_describe(node)} already has {name}={current!r}, not {value!r}; re-export the model"
                )
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


class _Constants:
    """Values of the graph's constant tensors (initializers and Constant nodes), read on demand."""

    def __init__(self, graph: GraphProto, base_dir: str | os.PathLike | None) -> None:
        self.base_dir = str(base_dir) if base_dir is not None else ""
        self.tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.type == AttributeProto.TENSOR:
                        self.tensors[node.output[0]] = attribute.t
        self.names = set(self.tensors) | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}

    def value(self, name: str, node: NodeProto) -> np.ndarray:
        if name not in self.tensors:
            raise OnnxForTensorRTError(
                f"{_describe(node)}: input {name!r} must be a constant (initializer) for the plugin, whose "
                f"constants are computed when the engine is built; build with --no-plugins"
            )
        return numpy_helper.to_array(self.tensors[name], base_dir=self.base_dir)

    def fresh_name(self, stem: str) -> str:
        name, index = stem, 1
        while name in self.names:
            index += 1
            name = f"{stem}_{index}"
        self.names.add(name)
        return name


def _check_derived(node: NodeProto, name: str, given: Any, derived: np.ndarray) -> None:
    given_array = np.atleast_1d(np.asarray(given, dtype=np.float32))
    if given_array.shape != np.atleast_1d(derived).shape or not np.array_equal(given_array, derived.astype(np.float32)):
        raise OnnxForTensorRTError(
            f"{_describe(node)}: attribute {name} does not match the value derived from its other attributes "
            f"(integer_reference); the export is inconsistent, re-export the model"
        )


def _tables(node: NodeProto, consts: _Constants) -> tuple[np.ndarray, np.ndarray] | None:
    """The node's constant tables (int64, float32), after checking its attributes; None for IntSoftmax."""
    attrs = _attributes(node)
    try:
        if node.op_type == "IntGELU":
            ints, floats = ibert.gelu_tables(attrs["input_scale"])
            _check_derived(node, "output_scale", attrs["output_scale"], floats[1])
            return ints, floats
        if node.op_type == "IntSoftmax":
            if not 1 <= attrs["output_bits"] <= 16:
                raise ValueError(f"output_bits must be in 1..16, got {attrs['output_bits']}")
            ibert.softmax_constants(attrs["input_scale"], attrs["exp_scale"])
            _check_derived(node, "output_scale", attrs["output_scale"], np.array([2.0 ** -attrs["output_bits"]], np.float32))
            return None
        if node.op_type == "IntLayerNorm":
            if attrs["shift"] < 0:
                raise ValueError(f"shift must be >= 0, got {attrs['shift']}")
            ibert.scalar_scale(attrs["input_scale"], "IntLayerNorm input_scale")
            weight, bias = (consts.value(name, node) for name in node.input[1:3])
            ints, floats = ibert.layernorm_tables(weight, bias)
            _check_derived(node, "output_scale", attrs["output_scale"], floats[0])
            return ints, floats
    except ValueError as e:
        if isinstance(e, OnnxForTensorRTError):
            raise
        raise OnnxForTensorRTError(f"{_describe(node)}: {e}") from None
    raise OnnxForTensorRTError(f"{_describe(node)}: no plugin")


def _append_tables(graph: GraphProto, node: NodeProto, tables: tuple[np.ndarray, np.ndarray], consts: _Constants) -> None:
    stem = (node.name or node.output[0]).replace("/", "_").strip("_") or node.op_type
    for suffix, table in zip(("ibert_int_constants", "ibert_float_constants"), tables):
        name = consts.fresh_name(f"{stem}.{suffix}")
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table), name))
        node.input.append(name)


def _reachable_functions(graph: GraphProto, functions: list[FunctionProto]) -> list[FunctionProto]:
    """The functions that the graph calls, directly or through other functions (helpers of removed bodies go)."""
    by_id = {(f.domain, f.name): f for f in functions}
    reached: set[tuple[str, str]] = set()
    pending = [(node.domain, node.op_type) for node in iter_nodes(graph)]
    while pending:
        key = pending.pop()
        if key in by_id and key not in reached:
            reached.add(key)
            pending.extend((node.domain, node.op_type) for node in by_id[key].node)
    return [f for f in functions if (f.domain, f.name) in reached]


def strip_plugin_functions(
    model: ModelProto, base_dir: str | os.PathLike | None = None, aot: bool | None = None
) -> PreparedOnnx:
    """A copy of `model` whose ibert nodes the TensorRT parser maps to the ibert plugins (see module doc).

    base_dir: the model's directory, to read weights stored as external data. aot: write the node
    attribute `aot` (1: the AOT implementation, 0: JIT; None: none, for TensorRT 10.6-10.8, which has
    JIT only). Raises OnnxForTensorRTError for an ibert node that no plugin implements or whose
    attributes are wrong.
    """
    for function in model.functions:
        if not _defines_plugin_op(function) and any(n.domain == ibert.DOMAIN for n in function.node):
            raise OnnxForTensorRTError(
                f"local function {function.domain}::{function.name} contains ibert nodes; the plugin path handles "
                f"ibert nodes of the main graph only. Build with --no-plugins"
            )
    stripped = ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    consts = _Constants(graph, base_dir)
    nodes = [node for node in iter_nodes(graph) if node.domain == ibert.DOMAIN]
    for node in nodes:
        _check_plugin_node(node)
        tables = _tables(node, consts)
        if tables is not None:
            _append_tables(graph, node, tables, consts)
        _set_attribute(node, "plugin_namespace", PLUGIN_NAMESPACE)
        _set_attribute(node, "plugin_version", PLUGIN_VERSION)
        if aot is not None:
            _set_attribute(node, AOT_ATTRIBUTE, int(aot))

    kept = _reachable_functions(graph, [f for f in stripped.functions if not _defines_plugin_op(f)])
    del stripped.functions[:]
    stripped.functions.extend(kept)

    used = {node.domain for node in iter_all_nodes(stripped)}
    imports = [op for op in stripped.opset_import if op.domain in STANDARD_DOMAINS or op.domain in used]
    del stripped.opset_import[:]
    stripped.opset_import.extend(imports)

    ops = sorted({node.op_type for node in nodes})
    return PreparedOnnx(stripped, [f"{PLUGIN_NAMESPACE}::{op}" for op in ops], ops, has_qdq(stripped))


def keep_function_bodies(model: ModelProto) -> PreparedOnnx:
    """`model` unchanged, after checking every ibert node has the local function TensorRT will expand."""
    functions = {(f.domain, f.name) for f in model.functions}
    ops = ibert_op_types(model)
    missing = [op for op in ops if (ibert.DOMAIN, op) not in functions]
    if missing:
        raise OnnxForTensorRTError(
            f"--no-plugins needs the ONNX function bodies of the ibert ops, but this model has none for "
            f"{', '.join(missing)}; re-export the model, or build with the plugins"
        )
    return PreparedOnnx(model, [], ops, has_qdq(model))


def prepare_for_tensorrt(
    model: ModelProto, use_plugins: bool = True, base_dir: str | os.PathLike | None = None, aot: bool | None = True
) -> PreparedOnnx:
    """The model the builder parses: with plugins when the graph has ibert nodes and use_plugins is set
    (aot: see `strip_plugin_functions`)."""
    model = tensorrt_form(model, use_plugins)  # an integer export's TensorRT form (the same model otherwise)
    if use_plugins and ibert_op_types(model):
        return strip_plugin_functions(model, base_dir, aot)
    return keep_function_bodies(model)
