"""The CPU integer graph of an integer export: the same integers, its GEMMs on the CPU's u8 x s8 kernels.

An integer export's `IntMatMul` / `IntMatMulWide` bodies (exporter/ibert_functions.py) compute every GEMM as
u8 x u8 `MatMulInteger`s, B moved onto uint8 by +128 with zero point 128: exact on every x86 CPU, because
MLAS's u8 x u8 kernels widen both operands to int16 and add pairs in int32, where its u8 x s8 kernels on
AVX2 add pairs of products in a saturating int16 (vpmaddubsw; see cpu_int8's module doc). Those u8 x u8
kernels are the slow ones: on a VNNI / AMX CPU a fifth of the rate of its u8 x s8 kernels (docs/integer.md,
"The CPU integer graph", with the measurements).

Where this onnxruntime's u8 x s8 `MatMulInteger` adds in int32 on this CPU (AVX512-VNNI / AVX-VNNI vpdpbusd(s),
AMX tdpbusd; measured once per process on operands that a saturating int16 pair sum would clip,
`recipes.u8s8_gemms_are_exact`: the flags say what the CPU can do, not which kernel MLAS picks), B can be the
int8 it is, with no zero point: the products are the same integers (MLAS's VNNI kernels saturate only the int32
sum, far from reach: |sum| <= K * 255 * 128 < 2**31 for K < 65,000), so every integer after them is too. This
derivation replaces the two function bodies with that form and leaves the rest of model.onnx as it is; where
those GEMMs do not add in int32 it does not apply (`CpuIntegerError`), and the runner keeps the exported graph.
The tests check the derived graph against NumPy int64 and the exported graph bit for bit, with operands at the
ends of their ranges, on the CPU they run on.

Kept and checked like the other CPU graphs (`graphs`): `python -m trt_runtime build DIR --target cpu-integer`,
or derived on first load into the cache, with a record of what it was made from (the CPU's dot products
included).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_runtime.backends.onnxruntime.cpu_int8 import load_exported_model
from trt_runtime.backends.onnxruntime.recipes import (  # noqa: F401  (CpuIntegerError: re-exported)
    INTEGER_RECIPE_VERSION,
    CpuIntegerError,
    check_integer_applies,
)
from trt_runtime.contract import ibert
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportInfo

logger = logging.getLogger(__name__)

#: the ops whose bodies this derivation replaces
GEMM_OPS = ("IntMatMul", "IntMatMulWide")


class _Body:
    def __init__(self, op_type: str):
        self.op_type = op_type
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        output = f"{self.op_type}_u8s8_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output

    def const(self, value: int, dtype: type) -> str:
        return self.op("Constant", value=helper.make_tensor("value", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [], [value]))

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)


def _int_matmul_u8s8(body: _Body) -> str:
    """A @ B, A in [-128, 127] as the uint8 A + 128 with zero point 128, B int8 with none."""
    a = body.cast(body.op("Add", body.cast("A", TensorProto.INT32), body.const(128, np.int32)), TensorProto.UINT8)
    return body.op("MatMulInteger", a, body.cast("B", TensorProto.INT8), body.const(128, np.uint8))


def _int_matmul_wide_u8s8(body: _Body) -> str:
    """A @ B, A in [-2**15, 2**15 - 1]: A + 2**15 = 256 hi + lo, so A = 256 (hi - 128) + lo, two u8 x s8 GEMMs
    added in int64 (|A @ B| reaches 2**15 * 128 * K, past int32)."""
    shifted = body.op("Add", body.cast("A", TensorProto.INT32), body.const(2**15, np.int32))  # >= 0: Div floors
    high = body.cast(body.op("Div", shifted, body.const(256, np.int32)), TensorProto.UINT8)
    low = body.cast(shifted, TensorProto.UINT8)  # the cast keeps the low 8 bits
    b = body.cast("B", TensorProto.INT8)
    high_product = body.op("MatMulInteger", high, b, body.const(128, np.uint8))
    low_product = body.op("MatMulInteger", low, b)
    scaled = body.op("Mul", body.cast(high_product, TensorProto.INT64), body.const(256, np.int64))
    return body.op("Add", scaled, body.cast(low_product, TensorProto.INT64))


_BUILDERS = {"IntMatMul": _int_matmul_u8s8, "IntMatMulWide": _int_matmul_wide_u8s8}


def u8s8_function(exported: onnx.FunctionProto) -> onnx.FunctionProto:
    """`exported` (an IntMatMul / IntMatMulWide function) with its body in u8 x s8 form: same name, inputs,
    outputs, attributes and output type."""
    if list(exported.input) != ["A", "B"] or len(exported.output) != 1:
        raise CpuIntegerError(
            f"the {exported.name} function of {MODEL_ONNX} takes ({', '.join(exported.input)}), not (A, B); "
            f"re-export the model with this version of the exporter"
        )
    body = _Body(exported.name)
    result = _BUILDERS[exported.name](body)
    # int32 (IntMatMul) and int64 (IntMatMulWide), as ibert.INTEGER_OUTPUT_TYPES has them
    body.nodes.append(helper.make_node("Identity", [result], [exported.output[0]], name=f"{exported.name}_output"))
    function = onnx.FunctionProto()
    function.CopyFrom(exported)
    del function.node[:]
    function.node.extend(body.nodes)
    function.doc_string = (
        f"{exported.name} in u8 x s8 form (trt_runtime.backends.onnxruntime.cpu_integer): the same integers "
        f"where u8 x s8 dot products add in int32"
    )
    return function


def derive(export_dir: str | os.PathLike, info: ExportInfo, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The CPU integer graph of the integer export in `export_dir` (in memory); `model`: its model.onnx, if
    loaded. CpuIntegerError where it does not apply (not an integer export, or this CPU's u8 x s8 dot products
    saturate)."""
    export_dir = Path(export_dir)
    check_integer_applies(export_dir, info)
    derived = model if model is not None else load_exported_model(export_dir)
    replaced = []
    for index, function in enumerate(derived.functions):
        if function.domain == ibert.DOMAIN and function.name in GEMM_OPS:
            derived.functions[index].CopyFrom(u8s8_function(function))
            replaced.append(function.name)
    if not replaced:
        raise CpuIntegerError(
            f"{export_dir / MODEL_ONNX} has no {ibert.DOMAIN} {' or '.join(GEMM_OPS)} function; an integer export "
            f"carries them, re-export the model"
        )
    gemms = sum(1 for node in derived.graph.node if node.domain == ibert.DOMAIN and node.op_type in GEMM_OPS)
    logger.info("CPU integer graph of %s: %d GEMMs (%s) on u8 x s8 kernels", export_dir, gemms, ", ".join(replaced))
    derived.doc_string = (
        f"CPU integer graph (v{INTEGER_RECIPE_VERSION}) derived by trt_runtime.backends.onnxruntime.cpu_integer "
        f"from {MODEL_ONNX} sha256 {info.onnx_sha256}"
    )
    return derived
