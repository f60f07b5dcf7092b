"""Ahead-of-time compilation of the ibert kernels to PTX, for TensorRT's AOT Python plugins.

An AOT plugin hands TensorRT a kernel name, its PTX and launch parameters; TensorRT puts them into
the engine and launches the kernel itself with the arguments (input pointers, int32 scalars, output
pointers) -- no Python at run time. Triton (3.3+) appends two pointer parameters of its own to every
kernel (global and profile scratch, null when the kernel needs no scratch), which TensorRT does not
pass; `drop_scratch_params` removes them from the PTX after checking the kernel never reads them.

PTX version. The PTX is JIT-compiled by the CUDA driver when TensorRT builds the engine and whenever it
loads it, and a driver refuses PTX newer than itself (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). Triton 3.6
writes the `.version` of its bundled ptxas (12.8: PTX ISA 8.7, which needs an R570 driver) unless
`CUDAOptions.ptx_version` says otherwise (triton/backends/nvidia/compiler.py: `ptx_get_version`,
`get_ptx_version_from_options`, `make_ptx` rewriting `.version`). So the builder compiles for
`ptx_version_for_driver(the build machine's driver)` and records in engine.json the oldest CUDA driver
that takes it (`min_cuda_driver_for_ptx`), which the runner checks on the machine that loads the engine.

Needs Triton only, not a GPU: the PTX can be generated for any target (the tests do it on the CPU).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from trt_runtime.backends.tensorrt.plugins import kernels
from trt_runtime.contract import ibert as constants
from trt_runtime.contract.errors import VALIDATION_FAILED, QbertError


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    block_threads: int  # threads per block: num_warps * warp size
    shared_mem: int  # dynamic shared memory bytes per block
    block: int  # elements (IntGELU) or row chunk (IntSoftmax, IntLayerNorm) per program


class AotCompileError(QbertError, RuntimeError):
    """The kernel could not be compiled into a form TensorRT can launch."""

    code = "aot-compile-failed"
    exit_code = VALIDATION_FAILED


def drop_scratch_params(ptx: str, kernel_name: str, num_params: int) -> str:
    """PTX whose entry `kernel_name` declares exactly `num_params` parameters.

    Parameters past `num_params` (Triton's scratch pointers) are removed if nothing in the PTX reads
    them; otherwise AotCompileError.
    """
    entry = re.search(rf"\.entry\s+{re.escape(kernel_name)}\s*\((?P<params>[^)]*)\)", ptx)
    if entry is None:
        raise AotCompileError(f"no .entry {kernel_name} in the PTX")
    params = [p.strip() for p in entry.group("params").split(",") if p.strip()]
    if len(params) < num_params:
        raise AotCompileError(f"{kernel_name} has {len(params)} parameters, fewer than the {num_params} expected")
    extra = params[num_params:]
    for param in extra:
        param_name = param.split()[-1]
        if re.search(rf"\[{re.escape(param_name)}(\+\d+)?\]", ptx):
            raise AotCompileError(
                f"{kernel_name} reads its parameter {param_name} (Triton scratch memory), which TensorRT's AOT "
                f"launch does not pass"
            )
    if not extra:
        return ptx
    kept = ",\n".join(f"\t{p}" for p in params[:num_params])
    return ptx[: entry.start("params")] + "\n" + kept + "\n" + ptx[entry.end("params") :]


def _target(target: tuple[str, int, int] | None) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget

    if target is None:
        return triton.runtime.driver.active.get_current_target()
    return GPUTarget(*target)


def ptx_version_for_driver(driver: tuple[int, int], capability: int = 90) -> int:
    """The PTX ISA version to compile for (87 = 8.7): the newest both Triton's ptxas and the driver take."""
    from triton.backends.nvidia.compiler import get_ptxas, ptx_get_version

    return min(ptx_get_version(get_ptxas(capability).version), ptx_get_version(f"{driver[0]}.{driver[1]}"))


def min_cuda_driver_for_ptx(ptx_version: int) -> tuple[int, int]:
    """The oldest CUDA driver version whose JIT takes PTX ISA `ptx_version` (Triton's own mapping, inverted)."""
    from triton.backends.nvidia.compiler import ptx_get_version

    for version in [(11, minor) for minor in range(9)] + [(12, minor) for minor in range(10)] + [(13, m) for m in range(10)]:
        if ptx_get_version(f"{version[0]}.{version[1]}") >= ptx_version:
            return version
    raise AotCompileError(f"no CUDA driver version known to take PTX ISA {ptx_version // 10}.{ptx_version % 10}")


@functools.cache
def _compile(
    kernel_name: str,
    signature: tuple[tuple[str, str], ...],
    constexprs: tuple[tuple[str, Any], ...],
    block: int,
    target: tuple[str, int, int] | None,
    ptx_version: int | None = None,
) -> CompiledKernel:
    import triton

    fn = getattr(kernels, kernel_name)
    full_signature = dict(signature)
    full_signature.update({name: "constexpr" for name, _ in constexprs})
    source = triton.compiler.ASTSource(fn=fn, signature=full_signature, constexprs=dict(constexprs))
    gpu = _target(target)
    options: dict[str, Any] = {"num_warps": kernels.NUM_WARPS}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(source, target=gpu, options=options)
    metadata = compiled.metadata
    if getattr(metadata, "global_scratch_size", 0) or getattr(metadata, "profile_scratch_size", 0):
        raise AotCompileError(f"{kernel_name} needs Triton scratch memory, which an AOT plugin cannot provide")
    ptx = drop_scratch_params(compiled.asm["ptx"], metadata.name, len(signature))
    return CompiledKernel(metadata.name, ptx, metadata.num_warps * gpu.warp_size, metadata.shared, block)


def _f32(value: float) -> float:
    """The float32 value as a Python float (what the kernel's constexpr holds)."""
    import numpy as np

    return float(np.float32(value))


def int_gelu(
    per_channel: bool, target: tuple[str, int, int] | None = None, ptx_version: int | None = None
) -> CompiledKernel:
    signature = (
        ("x_ptr", "*fp32"),
        ("int_constants_ptr", "*i64"),
        ("float_constants_ptr", "*fp32"),
        ("n_elements", "i32"),
        ("row_length", "i32"),
        ("y_ptr", "*fp32"),
    )
    constexprs = (("PER_CHANNEL", bool(per_channel)), ("BLOCK", kernels.GELU_BLOCK))
    return _compile("int_gelu_kernel", signature, constexprs, kernels.GELU_BLOCK, target, ptx_version)


def softmax_constexprs(input_scale: float, exp_scale: float, output_bits: int) -> tuple[tuple[str, Any], ...]:
    """IntSoftmax's scalar constants as the kernel's constexprs (shared by the AOT and JIT paths)."""
    c = constants.softmax_constants(input_scale, exp_scale)
    return (
        ("INPUT_SCALE", _f32(input_scale)),
        ("X0_INT", c.x0_int),
        ("B_INT", c.b_int),
        ("C_INT", c.c_int),
        ("EXP_MANTISSA", c.exp_mantissa),
        ("EXP_EXPONENT", c.exp_exponent),
        ("OUTPUT_BITS", int(output_bits)),
        ("BLOCK", kernels.SOFTMAX_BLOCK),
    )


def int_softmax(
    input_scale: float,
    exp_scale: float,
    output_bits: int,
    target: tuple[str, int, int] | None = None,
    ptx_version: int | None = None,
) -> CompiledKernel:
    signature = (("x_ptr", "*fp32"), ("n_rows", "i32"), ("row_length", "i32"), ("y_ptr", "*fp32"))
    constexprs = softmax_constexprs(input_scale, exp_scale, output_bits)
    return _compile("int_softmax_kernel", signature, constexprs, kernels.SOFTMAX_BLOCK, target, ptx_version)


def layernorm_constexprs(input_scale: float, shift: int) -> tuple[tuple[str, Any], ...]:
    if shift < 0:
        raise ValueError(f"IntLayerNorm shift must be >= 0, got {shift}")
    return (("INPUT_SCALE", _f32(input_scale)), ("SHIFT", int(shift)), ("BLOCK", kernels.LAYERNORM_BLOCK))


def int_layernorm(
    input_scale: float, shift: int, target: tuple[str, int, int] | None = None, ptx_version: int | None = None
) -> CompiledKernel:
    signature = (
        ("x_ptr", "*fp32"),
        ("weight_ptr", "*fp32"),
        ("bias_ptr", "*fp32"),
        ("int_constants_ptr", "*i64"),
        ("float_constants_ptr", "*fp32"),
        ("n_rows", "i32"),
        ("channels", "i32"),
        ("y_ptr", "*fp32"),
    )
    constexprs = layernorm_constexprs(input_scale, shift)
    return _compile("int_layernorm_kernel", signature, constexprs, kernels.LAYERNORM_BLOCK, target, ptx_version)
