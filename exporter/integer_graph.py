"""Integer exports: the graph's integer values named after the modules that produce them.

The TorchScript exporter names a node after its module scope (`/bert/encoder/layer.0/attention/self/
query_activation/Requantize`) and its output after the node (`..._output_0`). Here the integer value a
module hands on (the one produced inside its scope and read outside it) takes the module's name,
`bert.encoder.layer.0.attention.self.query_activation`, the name `models` gives the module (a second
call of the same module is `..._1`, as the scope has it). The exporter's exact validation then
compares PyTorch's module outputs with ONNX Runtime's values by name and names the first that differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto

INTEGER_TYPES = (TensorProto.INT32, TensorProto.INT64, TensorProto.INT8)


def _scope(node: onnx.NodeProto) -> str:
    return node.name.rpartition("/")[0].strip("/").replace("/", ".")


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _is_module_scope(scope: str, modules: set[str]) -> bool:
    base, _, call = scope.rpartition("_")
    return scope in modules or (call.isdigit() and base in modules)


def name_integer_values(model: onnx.ModelProto, modules: Iterable[str]) -> dict[str, str]:
    """Rename, in place, the integer output of each of `modules` (the integer modules' names, from
    models.quantization.integer.modules.integer_module_names) to the module's name; returns
    {value name: producing op type}.

    A value is a module's output when a node of that scope produces it and a node outside the scope (or
    the graph's output) reads it; where a scope hands on several integer values the last one is its
    output. Graph inputs, outputs and names already taken are left alone.
    """
    modules = set(modules)
    graph = model.graph
    types = _element_types(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    taken = {v for node in graph.node for v in node.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    leaving: dict[str, tuple[str, onnx.NodeProto]] = {}
    for node in graph.node:  # topological: a later value of a scope replaces an earlier one
        scope = _scope(node)
        if not _is_module_scope(scope, modules):
            continue
        for value in node.output:
            if types.get(value) not in INTEGER_TYPES or value in graph_outputs:
                continue
            if any(_scope(c) != scope for c in consumers.get(value, [])):
                leaving[scope] = (value, node)
    renames = {value: scope for scope, (value, _) in leaving.items() if scope not in taken}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)
    return {scope: node.op_type for scope, (value, node) in leaving.items() if value in renames}
