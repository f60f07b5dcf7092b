"""Registers the ibert plugins with TensorRT's Python plugin API; importing this module does it (once).

Use `trt_runtime.backends.tensorrt.plugins.register_plugins()`, which checks the requirements first. Needs tensorrt
(>= 10.6, which added `tensorrt.plugin`; AOT implementations from 10.9, which added `aot_impl`,
`KernelLaunchParams` and `QuickPluginCreationRequest`: NVIDIA/TensorRT python/packaging/bindings_wheel/
tensorrt/plugin/_lib.py at v10.6.0 and v10.9.0) and triton; the JIT implementations also need torch.

Each plugin is `ibert::<Op>` with the ONNX node's inputs, then the constant tables the builder
appends (`trt_runtime.contract.ibert`), and the ONNX attributes as plugin fields. The ONNX parser
converts each attribute to the field type declared here: every field is a NumPy array (float32 or
int32; a scalar attribute arrives as a 1-element array), the types TensorRT's plugin sample uses.

No `from __future__ import annotations` here: tensorrt.plugin reads the annotations at run time.
"""

import collections
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorrt.plugin as trtp

from trt_runtime.backends.tensorrt.plugins import aot
from trt_runtime.backends.tensorrt.plugins.specs import PLUGINS

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int32]
#: TensorRT >= 10.9 can embed compiled kernels in the engine (AOT plugins)
HAS_AOT = hasattr(trtp, "aot_impl")
#: (plugin id, "aot" | "jit") -> how often TensorRT called that implementation in this process: the AOT one
#: when it builds (for the kernel), the JIT one whenever it runs the plugin. The builder compares the counts
#: before and after a build to record which implementation the engine really has.
CALLS: collections.Counter[tuple[str, str]] = collections.Counter()


def registered_plugin_ids() -> list[str]:
    return [spec.plugin_id for spec in PLUGINS.values()]


def _scalar(values: np.ndarray) -> Any:
    return np.asarray(values).reshape(-1)[0].item()


def _check_last_axis(op: str, axis: np.ndarray, ndim: int) -> None:
    value = int(_scalar(axis))
    if value not in (-1, ndim - 1):
        raise ValueError(f"the {op} plugin works on the last axis only, this node has axis={value} (rank {ndim})")


# --------------------------------------------------------------------------------------------------
# shapes and types: each output is like the first input (float32)


@trtp.register("ibert::IntGELU")
def int_gelu_description(
    x: trtp.TensorDesc,
    int_constants: trtp.TensorDesc,
    float_constants: trtp.TensorDesc,
    input_scale: Floats,
    output_scale: Floats,
) -> trtp.TensorDesc:
    channels = x.shape_expr[-1]
    scales = np.asarray(input_scale).size
    if scales > 1 and not channels.is_fake and channels.is_constant and channels.constant_value() != scales:
        raise ValueError(f"IntGELU has {scales} per-channel scales but its input has {channels.constant_value()} channels")
    return x.like()


@trtp.register("ibert::IntSoftmax")
def int_softmax_description(
    x: trtp.TensorDesc, axis: Ints, output_bits: Ints, input_scale: Floats, exp_scale: Floats, output_scale: Floats
) -> trtp.TensorDesc:
    _check_last_axis("IntSoftmax", axis, x.ndim)
    return x.like()


@trtp.register("ibert::IntLayerNorm")
def int_layernorm_description(
    x: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    int_constants: trtp.TensorDesc,
    float_constants: trtp.TensorDesc,
    axis: Ints,
    input_scale: Floats,
    shift: Ints,
    output_scale: Floats,
) -> trtp.TensorDesc:
    _check_last_axis("IntLayerNorm", axis, x.ndim)
    return x.like()


# --------------------------------------------------------------------------------------------------
# JIT: Python launches the Triton kernel on TensorRT's stream at every enqueue


@contextlib.contextmanager
def _on_stream(stream: int) -> Iterator[None]:
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        yield


def _torch(tensor: trtp.Tensor) -> Any:
    import torch

    return torch.as_tensor(tensor, device="cuda")


@trtp.impl("ibert::IntGELU")
def int_gelu_jit(
    x: trtp.Tensor,
    int_constants: trtp.Tensor,
    float_constants: trtp.Tensor,
    outputs: tuple[trtp.Tensor],
    stream: int,
) -> None:
    from trt_runtime.backends.tensorrt.plugins import launchers

    CALLS["ibert::IntGELU", "jit"] += 1
    with _on_stream(stream):
        launchers.int_gelu(_torch(x), _torch(int_constants), _torch(float_constants), out=_torch(outputs[0]))


@trtp.impl("ibert::IntSoftmax")
def int_softmax_jit(
    x: trtp.Tensor,
    output_bits: Ints,
    input_scale: Floats,
    exp_scale: Floats,
    outputs: tuple[trtp.Tensor],
    stream: int,
) -> None:
    from trt_runtime.backends.tensorrt.plugins import launchers

    CALLS["ibert::IntSoftmax", "jit"] += 1
    with _on_stream(stream):
        launchers.int_softmax(
            _torch(x), _scalar(input_scale), _scalar(exp_scale), int(_scalar(output_bits)), out=_torch(outputs[0])
        )


@trtp.impl("ibert::IntLayerNorm")
def int_layernorm_jit(
    x: trtp.Tensor,
    weight: trtp.Tensor,
    bias: trtp.Tensor,
    int_constants: trtp.Tensor,
    float_constants: trtp.Tensor,
    input_scale: Floats,
    shift: Ints,
    outputs: tuple[trtp.Tensor],
    stream: int,
) -> None:
    from trt_runtime.backends.tensorrt.plugins import launchers

    CALLS["ibert::IntLayerNorm", "jit"] += 1
    with _on_stream(stream):
        launchers.int_layernorm(
            _torch(x), _torch(weight), _torch(bias), _torch(int_constants), _torch(float_constants),
            _scalar(input_scale), int(_scalar(shift)), out=_torch(outputs[0]),
        )


# --------------------------------------------------------------------------------------------------
# AOT: at build time, compile the kernel to PTX for this GPU; TensorRT launches it with
# (input pointers, int32 sizes, output pointer). TensorRT passes every attribute, in field order.

AotResult = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]


@functools.cache
def _target() -> tuple[str, int, int]:
    from trt_runtime.backends.tensorrt.libs import gpu_properties

    _, capability = gpu_properties()
    major, minor = capability.split(".")
    return ("cuda", int(major) * 10 + int(minor), 32)


@functools.cache
def ptx_version() -> int:
    """The PTX ISA the AOT kernels are compiled for: the newest this machine's CUDA driver takes (aot.py)."""
    from trt_runtime.backends.tensorrt.libs import cuda_driver_version

    return aot.ptx_version_for_driver(cuda_driver_version(), _target()[1])


def _launch(kernel: aot.CompiledKernel, grid_x: trtp.ShapeExpr, sizes: list[trtp.ShapeExpr]) -> AotResult:
    params = trtp.KernelLaunchParams()
    params.grid_x = grid_x
    params.block_x = kernel.block_threads
    params.shared_mem = kernel.shared_mem
    extra = trtp.SymIntExprs(len(sizes))
    for index, size in enumerate(sizes):
        extra[index] = trtp.SymInt32(size)
    return kernel.name, kernel.ptx, params, extra


if HAS_AOT:

    @trtp.aot_impl("ibert::IntGELU")
    def int_gelu_aot(
        x: trtp.TensorDesc,
        int_constants: trtp.TensorDesc,
        float_constants: trtp.TensorDesc,
        input_scale: Floats,
        output_scale: Floats,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> AotResult:
        CALLS["ibert::IntGELU", "aot"] += 1
        kernel = aot.int_gelu(np.asarray(input_scale).size > 1, _target(), ptx_version())
        n = x.shape_expr.numel()
        return _launch(kernel, trtp.cdiv(n, kernel.block), [n, x.shape_expr[-1]])

    @trtp.aot_impl("ibert::IntSoftmax")
    def int_softmax_aot(
        x: trtp.TensorDesc,
        axis: Ints,
        output_bits: Ints,
        input_scale: Floats,
        exp_scale: Floats,
        output_scale: Floats,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> AotResult:
        CALLS["ibert::IntSoftmax", "aot"] += 1
        kernel = aot.int_softmax(
            _scalar(input_scale), _scalar(exp_scale), int(_scalar(output_bits)), _target(), ptx_version()
        )
        rows = x.shape_expr.numel() // x.shape_expr[-1]
        return _launch(kernel, rows, [rows, x.shape_expr[-1]])

    @trtp.aot_impl("ibert::IntLayerNorm")
    def int_layernorm_aot(
        x: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        int_constants: trtp.TensorDesc,
        float_constants: trtp.TensorDesc,
        axis: Ints,
        input_scale: Floats,
        shift: Ints,
        output_scale: Floats,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> AotResult:
        CALLS["ibert::IntLayerNorm", "aot"] += 1
        kernel = aot.int_layernorm(_scalar(input_scale), int(_scalar(shift)), _target(), ptx_version())
        rows = x.shape_expr.numel() // x.shape_expr[-1]
        return _launch(kernel, rows, [rows, x.shape_expr[-1]])
