"""Will TensorRT's ONNX parser take this graph? Checked on the CPU, without TensorRT, node by node.

`check_parser_support(model)` walks the graph the builder hands the parser (`builder.parser_input`, the
same function `build_engine` uses) the way the parser does (onnx/onnx-tensorrt ModelImporter.cpp,
`parseNode`, release/10.0-GA: an op type with a built-in importer first, whatever its domain; else a
model-local function of that name, whose body is imported node by node; else a plugin looked up by op
type, `plugin_version` and `plugin_namespace`) and checks every node against onnx-tensorrt's operator
support matrix, `docs/operators.md` of TensorRT 10.0, the oldest TensorRT this project supports
(`libs.MIN_TENSORRT`), kept in `data/onnx_tensorrt_operators_10.0.json` with its tag and commit:

- the op is supported ("Y");
- the node's data inputs (those of the schema's first type constraint; Where: X and Y; Constant and
  ConstantOfShape: the output) have one of the op's supported types, and a Cast's target is one;
- inputs the matrix says "must be an initializer" / "a constant tensor" (Reduce* and Squeeze `axes`,
  CumSum `axis`, ...) are initializers or Constant nodes: the parser imports those as weights, anything
  computed (a Reshape of a Constant, say) as a tensor, and the importer asserts `is_weights()`;
  zero points that "must be 0" are;
- INT8/INT4/FP8 tensors only come out of QuantizeLinear or constants and only go into Q/DQ ("treated as
  Quantized Types ... only through quantization from a floating-point type"), UINT8 only at the graph's
  inputs and outputs ("only supported as network input or output tensor types"), no tensor of a type
  TensorRT lacks (UINT16/32/64, INT16, STRING, ...);
- the only custom ops are the three ibert plugins, with their `plugin_namespace`.

Function bodies are checked per call, inlined with the call's attributes and input types
(`onnx.inliner`), and reported as "<call node> > <body node>". The report names every offending node;
`python -m trt_runtime build DIR --check` prints it and fails when it is not empty. What this cannot
see: restrictions on shapes or values known only when TensorRT builds, and bugs of a particular parser
version.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner
from onnx import AttributeProto, FunctionProto, ModelProto, NodeProto, TensorProto

from trt_runtime.backends.tensorrt.onnx_prep import STANDARD_DOMAINS, value_types
from trt_runtime.backends.tensorrt.plugins.specs import PLUGIN_NAMESPACE, PLUGINS

OPERATORS_FILE = Path(__file__).with_name("data") / "onnx_tensorrt_operators_10.0.json"

#: ONNX element types by the names the matrix uses; types missing here are not TensorRT types at all
MATRIX_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
#: the data-type list of the matrix's preamble spells three types differently from its columns
_PREAMBLE_NAMES = {"FLOAT32": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16"}
#: ops whose matrix types are those of the output (they have no data input)
_OUTPUT_TYPED = frozenset({"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform"})
#: ops whose first input is not the data the matrix types describe (Where's is the BOOL condition)
_DATA_INPUT = {"Where": 1}
_CONSTANT_RESTRICTION = re.compile(r"`(\w+)` must be (?:an initializer|a constant tensor)")
_ZERO_RESTRICTION = re.compile(r"`(\w+)` must be (?:0|zero)\b")


@dataclass(frozen=True)
class OperatorSupport:
    """One row of the matrix."""

    supported: bool
    types: frozenset[str]
    restrictions: str = ""
    #: types the table omits but the importer of the same tag takes (the data file's "errata", with evidence)
    erratum_types: frozenset[str] = frozenset()
    erratum: str = ""

    @property
    def constant_inputs(self) -> tuple[str, ...]:
        return tuple(_CONSTANT_RESTRICTION.findall(self.restrictions))

    @property
    def zero_inputs(self) -> tuple[str, ...]:
        return tuple(_ZERO_RESTRICTION.findall(self.restrictions))


@dataclass(frozen=True)
class OperatorMatrix:
    """onnx-tensorrt's docs/operators.md as data."""

    tensorrt: str
    source: str
    tag: str
    commit: str
    opset_range: tuple[int, int]
    data_types: frozenset[str]
    quantized_types: frozenset[str]
    io_only_types: frozenset[str]
    operators: dict[str, OperatorSupport]

    @property
    def citation(self) -> str:
        return f"onnx-tensorrt docs/operators.md at {self.tag} ({self.commit[:10]}), TensorRT {self.tensorrt}"


@functools.cache
def operator_matrix(path: str | Path = OPERATORS_FILE) -> OperatorMatrix:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    notes = data["notes"]
    return OperatorMatrix(
        tensorrt=data["tensorrt"],
        source=data["source"],
        tag=data["tag"],
        commit=data["commit"],
        opset_range=(int(data["opset_range"][0]), int(data["opset_range"][1])),
        data_types=frozenset(_PREAMBLE_NAMES.get(name, name) for name in data["data_types"]),
        quantized_types=frozenset(notes["quantized_types"]),
        io_only_types=frozenset(notes["io_only_types"]),
        operators={
            name: OperatorSupport(
                row["supported"],
                frozenset(row["types"]),
                row.get("restrictions", ""),
                frozenset(data.get("errata", {}).get(name, {}).get("types", ())),
                data.get("errata", {}).get(name, {}).get("evidence", ""),
            )
            for name, row in data["operators"].items()
        },
    )


def type_name(elem_type: int) -> str:
    """ONNX's name of an element type ("UINT64"), for messages."""
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


@dataclass(frozen=True)
class Problem:
    """One reason the parser would reject a node."""

    node: str  # "layer/softmax > IntSoftmax_BitShift_12" inside a function body, else the node's name
    op_type: str
    reason: str
    function: str | None = None  # "ibert::IntSoftmax" for a node of that function's body

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason, "function": self.function}


@dataclass
class SupportReport:
    """What `check_parser_support` found; `problems` empty means every node passes."""

    form: str  # what was checked: "plugins", "no-plugins", with ", fp16" where the float parts are FP16
    matrix: str
    nodes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # what may still parse: see each reason
    plugins: dict[str, str] = field(default_factory=dict)  # node name -> plugin id

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "matrix": self.matrix,
            "nodes_checked": self.nodes_checked,
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "plugins": dict(self.plugins),
        }

    def format(self) -> str:
        """The report as text: problems, then warnings, each grouped by (function body node, reason) with the
        calls it occurs in."""
        verdict = "passes" if self.ok else f"FAILS: {len(self.problems)} problem(s)"
        lines = [f"TensorRT ONNX parser check ({self.form}; {self.matrix}): {self.nodes_checked} nodes, {verdict}"]
        lines += _grouped(self.problems, "")
        lines += _grouped(self.warnings, "warning: ")
        if self.plugins:
            counts: dict[str, int] = defaultdict(int)
            for plugin in self.plugins.values():
                counts[plugin] += 1
            lines.append("  plugins: " + ", ".join(f"{p} x{n}" for p, n in sorted(counts.items())))
        return "\n".join(lines)


def _grouped(problems: list[Problem], prefix: str) -> list[str]:
    grouped: dict[tuple[str | None, str, str, str], list[str]] = defaultdict(list)
    for problem in problems:
        if problem.function is None:
            grouped[(None, problem.node, problem.op_type, problem.reason)].append(problem.node)
        else:
            call, _, body_node = problem.node.partition(" > ")
            grouped[(problem.function, body_node, problem.op_type, problem.reason)].append(call)
    lines = []
    for (function, node, op_type, reason), calls in grouped.items():
        if function is None:
            lines.append(f"  {prefix}node {node!r} ({op_type}): {reason}")
        else:
            where = ", ".join(repr(c) for c in calls[:3]) + (f" and {len(calls) - 3} more" if len(calls) > 3 else "")
            lines.append(f"  {prefix}{function} body node {node!r} ({op_type}): {reason} [{len(calls)} call(s): {where}]")
    return lines


def _attribute(node: NodeProto, name: str) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Tensors the parser imports as weights: initializers and Constant node outputs."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR), None)
            found[node.output[0]] = value if value is not None else TensorProto(name=node.output[0])
    return found


class _Scope:
    """What the checks of one graph (the main graph, or one inlined function call) need to know."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], opset: int, label: Any, function: str | None):
        self.graph = graph
        self.types = types
        self.opset = opset
        self.label = label  # node -> the name to report
        self.function = function
        self.constants = _constants(graph)
        self.producers = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.graph_io = {v.name for v in [*graph.input, *graph.output]}


class _Checker:
    def __init__(self, model: ModelProto, matrix: OperatorMatrix, report: SupportReport):
        self.model = model
        self.matrix = matrix
        self.report = report
        self.functions = {f.name: f for f in model.functions}  # the parser finds a function by name only

    def problem(self, scope: _Scope, node: NodeProto, reason: str) -> None:
        self.report.problems.append(Problem(scope.label(node), node.op_type, reason, scope.function))

    def warning(self, scope: _Scope, node: NodeProto, reason: str) -> None:
        self.report.warnings.append(Problem(scope.label(node), node.op_type, reason, scope.function))

    # -- one graph -----------------------------------------------------------------------------------------

    def check_graph(self, scope: _Scope, calls_allowed: bool = True) -> None:
        for node in scope.graph.node:
            self.report.nodes_checked += 1
            builtin = node.op_type in self.matrix.operators
            if builtin and node.domain not in STANDARD_DOMAINS:
                self.problem(scope, node, (
                    f"a {node.domain} op named like the standard {node.op_type}: TensorRT's parser ignores the "
                    f"domain and would import it as the standard op"
                ))
            elif builtin:
                self.check_builtin(scope, node)
            elif node.op_type in self.functions and calls_allowed:
                self.check_call(scope, node)
            else:
                self.check_plugin(scope, node)
            for attribute in node.attribute:  # If/Loop/Scan bodies
                for subgraph in ([attribute.g] if attribute.type == AttributeProto.GRAPH else list(attribute.graphs)):
                    self.check_graph(_Scope(subgraph, scope.types, scope.opset, scope.label, scope.function))
        self.check_quantized_tensors(scope)

    def check_builtin(self, scope: _Scope, node: NodeProto) -> None:
        support = self.matrix.operators[node.op_type]
        if not support.supported:
            self.problem(scope, node, (
                f"{node.op_type} is not supported by TensorRT's ONNX parser (operators.md: N); the parser would "
                f"look for a plugin named {node.op_type} and fail ('Plugin not found')"
            ))
            return
        wrong = [(t, kind) for t, kind in self.data_tensors(scope, node) if MATRIX_TYPE_NAMES.get(kind) not in support.types]
        if wrong and all(MATRIX_TYPE_NAMES.get(kind) in support.erratum_types for _, kind in wrong):
            kinds = ", ".join(dict.fromkeys(type_name(kind) for _, kind in wrong))
            self.warning(scope, node, (
                f"on {kinds}: operators.md lists only {', '.join(sorted(support.types))}, but {support.erratum}"
            ))
        elif wrong:
            kinds = ", ".join(dict.fromkeys(type_name(kind) for _, kind in wrong))
            self.problem(scope, node, (
                f"{node.op_type} on {kinds} ({', '.join(repr(t) for t, _ in wrong)}); the parser supports it on "
                f"{', '.join(sorted(support.types)) or 'no type'}"
            ))
        if node.op_type in ("Cast", "CastLike"):
            target = _attribute(node, "to") if node.op_type == "Cast" else scope.types.get(node.input[1])
            if target is not None and MATRIX_TYPE_NAMES.get(target) not in support.types:
                lacks = "" if target in MATRIX_TYPE_NAMES else f"TensorRT has no {type_name(target)} type; "
                self.problem(scope, node, (
                    f"{node.op_type} to {type_name(target)}: {lacks}the parser casts only to "
                    f"{', '.join(sorted(support.types))}"
                ))
        schema = self.schema(node, scope.opset)
        names = [p.name for p in schema.inputs] if schema is not None else []
        for input_name in support.constant_inputs:
            tensor = self.input_named(node, names, input_name)
            if tensor and tensor not in scope.constants:
                producer = scope.producers.get(tensor)
                source = f"the output of {producer.op_type} {producer.name!r}" if producer else "a graph input"
                self.problem(scope, node, (
                    f"input `{input_name}` ({tensor!r}) must be an initializer or a Constant (operators.md: "
                    f"{support.restrictions!r}); here it is {source}"
                ))
        for input_name in support.zero_inputs:
            tensor = self.input_named(node, names, input_name)
            if not tensor:
                continue
            constant = scope.constants.get(tensor)
            if constant is None or (constant.ByteSize() and _nonzero(constant)):
                self.problem(scope, node, f"input `{input_name}` ({tensor!r}) must be 0 (operators.md)")

    def data_tensors(self, scope: _Scope, node: NodeProto) -> Iterator[tuple[str, int]]:
        """(name, type) of the tensors whose types the matrix's column describes; unknown types are warned."""
        schema = self.schema(node, scope.opset)
        if node.op_type in _OUTPUT_TYPED or schema is None or not schema.inputs:
            names = list(node.output[:1])
        else:
            params = list(schema.inputs)
            primary = params[min(_DATA_INPUT.get(node.op_type, 0), len(params) - 1)].type_str
            names = [
                name for index, name in enumerate(node.input)
                if name and params[min(index, len(params) - 1)].type_str == primary
            ]
        for name in names:
            if name in scope.types:
                yield name, scope.types[name]
            else:
                self.warning(scope, node, f"the type of {name!r} is unknown (ONNX type inference could not tell)")

    @staticmethod
    def schema(node: NodeProto, opset: int) -> Any:
        try:
            return onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            return None

    @staticmethod
    def input_named(node: NodeProto, names: list[str], input_name: str) -> str | None:
        if input_name not in names:
            return None  # e.g. ReduceMean before opset 18, whose axes is an attribute
        index = names.index(input_name)
        return node.input[index] if index < len(node.input) and node.input[index] else None

    def check_quantized_tensors(self, scope: _Scope) -> None:
        for name, elem_type in scope.types.items():
            kind = MATRIX_TYPE_NAMES.get(elem_type)
            producer = scope.producers.get(name)
            if name not in scope.constants and producer is None and name not in scope.graph_io:
                continue  # not a tensor of this graph
            if kind is None:
                # a node's output of such a type is reported with the node (its types, a Cast's target)
                if producer is None and scope.consumers.get(name):
                    self.problem(scope, scope.consumers[name][0], (
                        f"reads {name!r}, a {type_name(elem_type)} tensor: TensorRT has no such type"
                    ))
            elif kind in self.matrix.quantized_types:
                if producer is not None and producer.op_type != "QuantizeLinear":
                    self.problem(scope, producer, (
                        f"makes {kind} tensor {name!r}: TensorRT takes {kind} only as QuantizeLinear's output "
                        f"(operators.md: quantized types)"
                    ))
                for consumer in scope.consumers.get(name, []):
                    if consumer.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                        self.problem(scope, consumer, (
                            f"reads {kind} tensor {name!r}: TensorRT takes {kind} only into DequantizeLinear "
                            f"(operators.md: quantized types)"
                        ))
            elif kind in self.matrix.io_only_types and name not in scope.graph_io:
                self.problem(scope, producer or scope.consumers[name][0], (
                    f"{kind} tensor {name!r} inside the network: TensorRT takes {kind} only as a network input or "
                    f"output (operators.md)"
                ))

    # -- plugins -------------------------------------------------------------------------------------------

    def check_plugin(self, scope: _Scope, node: NodeProto) -> None:
        spec = PLUGINS.get(node.op_type)
        if spec is None or node.domain != PLUGIN_NAMESPACE:
            self.problem(scope, node, (
                f"custom op {node.domain or '(default domain)'}::{node.op_type} has no built-in importer, no local "
                f"function and is not one of the ibert plugins ({', '.join(s.plugin_id for s in PLUGINS.values())}): "
                f"the parser would fail with 'Plugin not found'"
            ))
            return
        namespace = _attribute(node, "plugin_namespace")
        if namespace != PLUGIN_NAMESPACE:
            self.problem(scope, node, (
                f"plugin node without plugin_namespace={PLUGIN_NAMESPACE!r} (it has {namespace!r}): the parser "
                f"looks plugins up by op type and that attribute"
            ))
            return
        self.report.plugins[scope.label(node)] = spec.plugin_id
        for tensor, expected in zip(node.input, spec.input_types):
            found = scope.types.get(tensor)
            if found is not None and found != expected:
                self.problem(scope, node, (
                    f"plugin input {tensor!r} is {type_name(found)}; {spec.plugin_id} takes {type_name(expected)} there"
                ))

    # -- function calls ------------------------------------------------------------------------------------

    def check_call(self, scope: _Scope, node: NodeProto) -> None:
        function = self.functions[node.op_type]
        try:
            graph, types = _inlined_call(self.model, scope, node, function)
        except Exception as e:  # the inliner's or type inference's own error, with the call named
            self.problem(scope, node, f"its function body {function.domain}::{function.name} cannot be inlined ({e})")
            return
        call_name = node.name or node.output[0]
        call = _Scope(graph, types, scope.opset, lambda n: f"{call_name} > {_body_name(n)}",
                      f"{function.domain}::{function.name}")
        self.check_graph(call, calls_allowed=False)  # the inliner expanded nested calls already


def _body_name(node: NodeProto) -> str:
    """A body node's own name: the inliner appends "__<call number>" (always 1 here: one call per model)."""
    return re.sub(r"__\d+$", "", node.name or node.output[0])


def _nonzero(tensor: TensorProto) -> bool:
    from onnx import numpy_helper

    try:
        return bool(numpy_helper.to_array(tensor).any())
    except Exception:  # external data not loaded: cannot tell, assume the exporter's zero point
        return False


def _inlined_call(
    model: ModelProto, scope: _Scope, node: NodeProto, function: FunctionProto
) -> tuple[onnx.GraphProto, dict[str, int]]:
    """The call as a one-node model (its inputs typed as at the call site, constant inputs as initializers),
    inlined by onnx.inliner; returns the inlined graph and the types of its tensors."""
    inputs, initializers = [], []
    for name in node.input:
        if not name:
            continue
        if name in scope.constants:
            constant = TensorProto()
            constant.CopyFrom(scope.constants[name])
            constant.name = name
            initializers.append(constant)
        else:
            inputs.append(onnx.helper.make_tensor_value_info(name, scope.types.get(name, TensorProto.UNDEFINED), None))
    outputs = [onnx.helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in node.output if name]
    graph = onnx.helper.make_graph([node], f"call_{node.name}", inputs, outputs, initializers)
    call = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    call.ir_version = model.ir_version
    inlined = onnx.inliner.inline_local_functions(call)
    return inlined.graph, value_types(inlined)


def default_opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def check_parser_support(model: ModelProto, form: str = "", matrix: OperatorMatrix | None = None) -> SupportReport:
    """Check `model`, as it would be handed to TensorRT's ONNX parser (see the module docstring)."""
    matrix = matrix or operator_matrix()
    report = SupportReport(form=form, matrix=matrix.citation)
    opset = default_opset(model)
    low, high = matrix.opset_range
    if not low <= opset <= high:
        report.problems.append(Problem("(the model)", "", (
            f"opset {opset}: TensorRT {matrix.tensorrt} supports ONNX opsets {low} to {high} (operators.md)"
        )))
    checker = _Checker(model, matrix, report)
    for function in model.functions:
        if function.name in matrix.operators:
            report.warnings.append(Problem(f"{function.domain}::{function.name}", function.name, (
                "a local function named like a standard op: TensorRT's parser imports its calls as the standard "
                "op, never its body"
            )))
    checker.check_graph(_Scope(model.graph, value_types(model), opset, lambda n: n.name or n.output[0], None))
    return report


def offending_nodes(report: SupportReport) -> list[tuple[str, str]]:
    """(node, op type) of every problem, for tests and summaries."""
    return [(p.node, p.op_type) for p in report.problems]


def problems_by_op(problems: Iterable[Problem]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for problem in problems:
        counts[problem.op_type] += 1
    return dict(counts)
