"""The ibert plugins as TensorRT sees them: names, namespace, version, inputs and attributes (no TensorRT import)."""

from __future__ import annotations

from dataclasses import dataclass

from trt_runtime.contract import ibert

#: TensorRT plugin namespace of the ibert plugins; the ONNX parser finds a plugin by the node's op
#: type and its `plugin_namespace` attribute, which the builder sets to this.
PLUGIN_NAMESPACE = ibert.DOMAIN
PLUGIN_VERSION = "1"
#: ONNX element types (TensorProto.FLOAT, TensorProto.INT64) of the plugins' tensors: the node's inputs are
#: float32 (integers times their scale, DESIGN.md), the appended tables int64 and float32
FLOAT, INT64 = 1, 7


@dataclass(frozen=True)
class PluginSpec:
    """One ibert op as plugin: its inputs and its ONNX attributes (name, ONNX type) in registration order."""

    name: str
    inputs: tuple[str, ...]  # the ONNX node's
    attributes: tuple[tuple[str, str], ...]  # ("input_scale", "FLOATS"), ...
    #: whether the builder appends constant tables (int64, float32) to the node's inputs
    #: (`trt_runtime.contract.ibert`): the per-channel constants an AOT kernel can only get as inputs
    has_tables: bool = False
    #: values of attributes an exporter may leave out (the ONNX function's defaults); the builder writes
    #: them onto the node, because the parser hands the plugin only the attributes a node has
    defaults: tuple[tuple[str, int], ...] = ()

    @property
    def plugin_id(self) -> str:
        return f"{PLUGIN_NAMESPACE}::{self.name}"

    @property
    def input_types(self) -> tuple[int, ...]:
        """ONNX element types of the plugin's inputs, the appended tables included (what registration.py reads)."""
        return (FLOAT,) * len(self.inputs) + ((INT64, FLOAT) if self.has_tables else ())


#: The ibert domain's contract (DESIGN.md). Attribute order is the plugins' field order. The plugins'
#: inputs are the node's inputs followed, where has_tables, by an int64 and a float32 constant table.
PLUGINS: dict[str, PluginSpec] = {
    spec.name: spec
    for spec in (
        PluginSpec("IntGELU", ("X",), (("input_scale", "FLOATS"), ("output_scale", "FLOATS")), has_tables=True),
        PluginSpec(
            "IntSoftmax",
            ("X",),
            (
                ("axis", "INT"),
                ("output_bits", "INT"),
                ("input_scale", "FLOAT"),
                ("exp_scale", "FLOAT"),
                ("output_scale", "FLOAT"),
            ),
            defaults=(("axis", -1), ("output_bits", 8)),
        ),
        PluginSpec(
            "IntLayerNorm",
            ("X", "weight", "bias"),
            (("axis", "INT"), ("input_scale", "FLOAT"), ("shift", "INT"), ("output_scale", "FLOATS")),
            has_tables=True,
            defaults=(("axis", -1),),
        ),
    )
}
