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
derivation rewrites the two function bodies' `MatMulInteger`s to take B so (the rest of each body, A's offset and
the wide GEMM's digit split, stays the exporter's) and leaves the rest of model.onnx as it is; where
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trt_runtime.backends.onnxruntime.cpu_int8 import load_exported_model
from trt_runtime.backends.onnxruntime.recipes import (  # noqa: F401  (CpuIntegerError: re-exported)
    INTEGER_RECIPE_VERSION,
    CpuIntegerError,
    check_integer_applies,
)
from trt_runtime.contract import ibert
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportInfo

logger = logging.getLogger(__name__)

#: the ops whose bodies this derivation rewrites
GEMM_OPS = ("IntMatMul", "IntMatMulWide")


def _constant_value(node: onnx.NodeProto | None) -> np.ndarray | None:
    if node is None or node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
        return None
    return numpy_helper.to_array(node.attribute[0].t)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "to"), None)


def _is_uint8_b(name: str, producer: dict[str, onnx.NodeProto]) -> bool:
    """Whether `name` is the exporter's B + 128 as uint8: Cast(uint8) of Add(Cast(B, int32), Constant 128)."""
    cast = producer.get(name)
    if cast is None or cast.op_type != "Cast" or _cast_to(cast) != TensorProto.UINT8:
        return False
    add = producer.get(cast.input[0])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return False
    widened, offset = producer.get(add.input[0]), _constant_value(producer.get(add.input[1]))
    return (
        widened is not None and widened.op_type == "Cast" and list(widened.input) == ["B"]
        and offset is not None and offset.shape == () and int(offset) == 128
    )


def u8s8_function(exported: onnx.FunctionProto) -> onnx.FunctionProto:
    """`exported` (an IntMatMul / IntMatMulWide function) with its `MatMulInteger`s taking B as the int8 it
    is, with no zero point, in place of the exporter's B + 128 with zero point 128: the rest of the body (A's
    offset, the wide GEMM's digit split) stays the exporter's. A body of another shape (another exporter) is
    refused with the fix."""

    def refuse(what: str) -> CpuIntegerError:
        return CpuIntegerError(
            f"the {exported.name} function of {MODEL_ONNX} is not the body this runtime knows ({what}); "
            f"re-export the model with this version of the exporter"
        )

    if list(exported.input) != ["A", "B"] or len(exported.output) != 1:
        raise refuse(f"it takes ({', '.join(exported.input)}), not (A, B)")
    producer = {output: node for node in exported.node for output in node.output}
    gemms = [node for node in exported.node if node.op_type == "MatMulInteger"]
    if not gemms:
        raise refuse("no MatMulInteger")
    b_int8 = f"{exported.name}_B_int8"
    rewritten = []
    for node in exported.node:
        if node.op_type == "MatMulInteger":
            b_zero_point = _constant_value(producer.get(node.input[3])) if len(node.input) == 4 else None
            if (
                not _is_uint8_b(node.input[1], producer)
                or b_zero_point is None
                or b_zero_point.shape != ()  # one zero point for all of B, as the exporter writes it
                or b_zero_point.dtype != np.uint8
                or int(b_zero_point) != 128
            ):
                raise refuse("a MatMulInteger whose B is not B + 128 with zero point 128")
            node = helper.make_node("MatMulInteger", [node.input[0], b_int8, node.input[2]], list(node.output), name=node.name)
        rewritten.append(node)
    rewritten.insert(0, helper.make_node("Cast", ["B"], [b_int8], name=b_int8, to=TensorProto.INT8))
    function = onnx.FunctionProto()
    function.CopyFrom(exported)
    del function.node[:]
    function.node.extend(_without_dead_nodes(rewritten, set(exported.output)))
    function.doc_string = (
        f"{exported.name} in u8 x s8 form (trt_runtime.backends.onnxruntime.cpu_integer): the same integers "
        f"where u8 x s8 dot products add in int32"
    )
    return function


def _without_dead_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` less those none of whose outputs reach `outputs` (here: B's old uint8 form and its constants)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed & set(node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


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
