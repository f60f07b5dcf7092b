"""TensorRT plugins for the `ibert` custom ops (IntGELU, IntSoftmax, IntLayerNorm).

The ONNX nodes `ibert::IntGELU` etc. (DESIGN.md) become TensorRT plugins of the same name in the
plugin namespace `ibert`, written with TensorRT's Python plugin API (`tensorrt.plugin`): each has a
JIT implementation (Python launches the Triton kernel) and an AOT one (the compiled kernel is put in
the engine, which then runs without Python, e.g. under trtexec).

This module is only the description (names, inputs, attributes): importing it needs neither
TensorRT nor Triton. `register_plugins()` imports `trt_runtime.plugins.registration`, which
registers the plugins with TensorRT (needs tensorrt>=10.7 and triton). The kernels are in
`trt_runtime.plugins.kernels` (Triton only), their host-side constants in
`trt_runtime.plugins.constants` (NumPy only).
"""

from __future__ import annotations

from dataclasses import dataclass

from trt_runtime.export_dir import IBERT_DOMAIN

#: TensorRT plugin namespace of the ibert plugins; the ONNX parser finds a plugin by the node's op
#: type and its `plugin_namespace` attribute, which the builder sets to this.
PLUGIN_NAMESPACE = IBERT_DOMAIN
PLUGIN_VERSION = "1"


@dataclass(frozen=True)
class PluginSpec:
    """One ibert op as plugin: its inputs and its ONNX attributes (name, ONNX type) in registration order."""

    name: str
    inputs: tuple[str, ...]  # the ONNX node's
    attributes: tuple[tuple[str, str], ...]  # ("input_scale", "FLOATS"), ...
    #: whether the builder appends constant tables (int64, float32) to the node's inputs
    #: (`trt_runtime.plugins.constants`): the per-channel constants an AOT kernel can only get as inputs
    has_tables: bool = False
    #: values of attributes an exporter may leave out (the ONNX function's defaults); the builder writes
    #: them onto the node, because the parser hands the plugin only the attributes a node has
    defaults: tuple[tuple[str, int], ...] = ()

    @property
    def plugin_id(self) -> str:
        return f"{PLUGIN_NAMESPACE}::{self.name}"


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


class PluginsUnavailable(RuntimeError):
    """The ibert plugins cannot be registered here; the message says what is missing and the way around."""


def register_plugins() -> list[str]:
    """Register the ibert plugins with TensorRT (once per process); return their ids ("ibert::IntGELU", ...)."""
    from trt_runtime.tensorrt_libs import require_tensorrt

    require_tensorrt()
    try:
        import tensorrt.plugin  # noqa: F401  (TensorRT >= 10.7)
    except ImportError as e:
        raise PluginsUnavailable(
            f"this TensorRT has no Python plugin API (tensorrt.plugin: {e}); install tensorrt>=10.7 "
            f"(>=10.12 for engines that run without Python), or build with --no-plugins"
        ) from None
    try:
        import triton  # noqa: F401
    except ImportError:
        raise PluginsUnavailable(
            "the ibert plugins' kernels need Triton: pip install triton (on the GPU machine), or build with "
            "--no-plugins to let TensorRT build the ops from standard layers"
        ) from None
    from trt_runtime.plugins import registration

    return registration.registered_plugin_ids()
