"""TensorRT plugins for the `ibert` custom ops (IntGELU, IntSoftmax, IntLayerNorm).

The ONNX nodes `ibert::IntGELU` etc. (DESIGN.md) become TensorRT plugins of the same name in the
plugin namespace `ibert`, written with TensorRT's Python plugin API (`tensorrt.plugin`): each has a
JIT implementation (Python launches the Triton kernel) and an AOT one (the compiled kernel is put in
the engine, which then runs without Python, e.g. under trtexec).

This module is only the description (names, inputs, attributes): importing it needs neither
TensorRT nor Triton. `register_plugins()` imports `trt_runtime.backends.tensorrt.plugins.registration`, which
registers the plugins with TensorRT (needs tensorrt>=10.6, whose `tensorrt.plugin` added Python plugins,
and triton; AOT implementations from 10.9). The kernels are in
`trt_runtime.backends.tensorrt.plugins.kernels` (Triton only), their host-side constants in
`trt_runtime.contract.ibert` (NumPy only).
"""

from __future__ import annotations

from trt_runtime.backends.tensorrt.plugins.specs import PLUGIN_NAMESPACE, PLUGIN_VERSION, PLUGINS, PluginSpec
from trt_runtime.contract.errors import QbertError

__all__ = ["PLUGINS", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "PluginSpec", "PluginsUnavailable", "register_plugins"]


class PluginsUnavailable(QbertError, RuntimeError):
    """The ibert plugins cannot be registered here; the message says what is missing and the way around."""

    code = "plugins-unavailable"


def register_plugins() -> list[str]:
    """Register the ibert plugins with TensorRT (once per process); return their ids ("ibert::IntGELU", ...)."""
    from trt_runtime.backends.tensorrt.libs import require_tensorrt

    require_tensorrt()
    try:
        import tensorrt.plugin  # noqa: F401  (TensorRT >= 10.6)
    except ImportError as e:
        raise PluginsUnavailable(
            f"this TensorRT has no Python plugin API (tensorrt.plugin: {e}); install tensorrt>=10.6 "
            f"(>=10.9 for engines that run without Python), or build with --no-plugins"
        ) from None
    try:
        import triton  # noqa: F401
    except ImportError:
        raise PluginsUnavailable(
            "the ibert plugins' kernels need Triton: pip install triton (on the GPU machine), or build with "
            "--no-plugins to let TensorRT build the ops from standard layers"
        ) from None
    from trt_runtime.backends.tensorrt.plugins import registration

    return registration.registered_plugin_ids()
