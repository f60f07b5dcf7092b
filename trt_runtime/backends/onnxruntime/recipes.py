"""How the CPU graphs are derived (their recipes) and what of the CPU they depend on, without `onnx`.

The derivations themselves (`cpu_int8`, `cpu_float`) need the onnx package; checking whether a graph built
earlier (`python -m trt_runtime build DIR --target ...`) or cached still fits this machine needs only this
module, so a runtime-only install without onnx still uses prebuilt graphs.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ExportInfo

logger = logging.getLogger(__name__)

#: bumped when the CPU INT8 derivation changes, so that older graphs are not reused
RECIPE_VERSION = 3  # 2: SkipLayerNormalization split back (cpu_int8 step 4); 3: smoothing divisions folded (1b)
#: bumped when the fused float derivation changes
FLOAT_RECIPE_VERSION = 1
#: bumped when the CPU integer derivation changes
INTEGER_RECIPE_VERSION = 1
#: architectures whose float graph onnxruntime.transformers' "bert" optimizer knows how to fuse
FUSABLE_ARCHITECTURES = ("bert",)
#: CPU features with an int32-accumulating u8 x s8 dot product (see `int8_dot_products_are_exact`)
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")



class CpuInt8Error(QbertError, ValueError):
    """The export cannot be turned into the CPU INT8 graph (not a qdq export, unexpected Q/DQ layout)."""

    code = "cpu-int8-not-applicable"


class CpuFloatError(QbertError, ValueError):
    """The fused float graph cannot be derived from this export (not a float export of a BERT-style encoder)."""

    code = "cpu-float-not-applicable"


class CpuIntegerError(QbertError, ValueError):
    """The CPU integer graph cannot be derived from this export here (not an integer export, or this CPU's
    u8 x s8 dot products add pairs in a saturating int16)."""

    code = "cpu-integer-not-applicable"


def check_int8_applies(export_dir: str | os.PathLike, info: ExportInfo) -> None:
    """Raise CpuInt8Error unless the CPU INT8 graph can be derived from this export (a qdq export)."""
    if info.quantization != "qdq":
        raise CpuInt8Error(
            f"{export_dir} is a {info.quantization!r} export; the CPU INT8 graph is derived from qdq exports"
        )


def check_float_applies(export_dir: str | os.PathLike, info: ExportInfo) -> None:
    """Raise CpuFloatError unless the fused float graph can be derived from this export."""
    if info.quantization != "none":
        raise CpuFloatError(
            f"{export_dir} is a {info.quantization!r} export; the fused float graph is derived from float "
            f"(quantization='none') exports"
        )
    if info.architecture not in FUSABLE_ARCHITECTURES:
        raise CpuFloatError(
            f"{export_dir} is a {info.architecture} export; ONNX Runtime's transformer fusions know the "
            f"attention of {', '.join(FUSABLE_ARCHITECTURES)}-family encoders only; use graph='exported'"
        )


def check_integer_applies(export_dir: str | os.PathLike, info: ExportInfo) -> None:
    """Raise CpuIntegerError unless the CPU integer graph (cpu_integer) can be derived from this export and
    computes the same integers on this CPU."""
    if info.quantization != "integer":
        raise CpuIntegerError(
            f"{export_dir} is a {info.quantization!r} export; the CPU integer graph is derived from integer exports"
        )
    if not u8s8_gemms_are_exact():
        flags = sorted(cpu_flags() & set(INT8_DOT_PRODUCT_FLAGS))
        raise CpuIntegerError(
            f"this onnxruntime's u8 x s8 MatMulInteger does not add in int32 on this CPU (measured; its int8 "
            f"dot-product flags: {', '.join(flags) or 'none'}): without VNNI it adds pairs of products in a "
            f"saturating int16, so the CPU integer graph would not compute the export's integers; the exported "
            f"graph (graph='exported') is the exact one here"
        )


def integer_recipe_record() -> dict[str, Any]:
    """The CPU integer graph's recipe: the IntMatMul / IntMatMulWide bodies on u8 x s8 kernels."""
    return {"version": INTEGER_RECIPE_VERSION, "tag": f"v{INTEGER_RECIPE_VERSION}-u8s8", "gemms": "u8s8"}


ACTIVATION_MODES = ("static", "dynamic", "row")
FLOAT_INPUT_MODES = ("row", "dynamic", "float")
ATTENTION_MODES = ("mha", "qattention")


@dataclass(frozen=True)
class Recipe:
    """How the CPU INT8 graph is made; `tag` names it in the cache key and its record.

    activations: how the input of a linear layer that the export quantized is quantized: "static"
        (the export's calibrated per-tensor scale), "dynamic" (per tensor, the range of each call) or
        "row" (per row, i.e. per token, each call; QAttention takes per-tensor "dynamic").
    float_inputs: linear layers whose weights the export quantized but whose input it kept float (the
        FFN output projection by default): "row", "dynamic" (as above) or "float" (a float GEMM).
    weight_bits: 8 or 7; None: 8 where the CPU has VNNI (or is not x86), else 7 (see cpu_int8's module doc).
    fuse: onnxruntime.transformers' fusions (Attention, SkipLayerNormalization, BiasGelu).
    attention: what a fused Attention becomes: "qattention" (QAttention: the Q, K and V projections in
        one u8 x s8 kernel with one per-tensor input scale per call, then the attention core) or "mha"
        (the projections as one int8 GEMM like any other linear layer, per-row inputs included, then a
        float MultiHeadAttention). QAttention is faster at BERT-base; its price is that its one scale
        per call makes a row depend slightly on its batch companions, as with ONNX Runtime's
        quantize_dynamic, while "mha" answers every row alike alone or in any batch, bit for bit, at the
        same accuracy (the measurements: docs/benchmarks.md, "The CPU INT8 path").
    """

    activations: str = "row"
    float_inputs: str = "row"
    weight_bits: int | None = None
    fuse: bool = True
    attention: str = "qattention"

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_MODES:
            raise ValueError(f"activations={self.activations!r}; choose one of {', '.join(ACTIVATION_MODES)}")
        if self.float_inputs not in FLOAT_INPUT_MODES:
            raise ValueError(
                f"float_inputs={self.float_inputs!r}; choose one of {', '.join(FLOAT_INPUT_MODES)}"
            )
        if self.weight_bits not in (None, 7, 8):
            raise ValueError(f"weight_bits={self.weight_bits!r}; choose 7, 8 or None (by the CPU)")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention={self.attention!r}; choose one of {', '.join(ATTENTION_MODES)}")

    def resolved(self) -> Recipe:
        """This recipe with weight_bits chosen for this CPU where it was None."""
        if self.weight_bits is not None:
            return self
        bits = 8 if int8_dot_products_are_exact() else 7
        return Recipe(self.activations, self.float_inputs, bits, self.fuse, self.attention)

    @property
    def tag(self) -> str:
        bits = self.resolved().weight_bits
        # QAttention is the default: its tag keeps the form that version 1 had
        fused = (
            ("-fused" if self.attention == "qattention" else f"-fused-{self.attention}") if self.fuse else ""
        )
        return f"v{RECIPE_VERSION}-{self.activations}-{self.float_inputs}-w{bits}{fused}"


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def int8_dot_products_are_exact() -> bool:
    """Whether MLAS's u8 x s8 kernel adds in int32 here (VNNI, or not x86); False on AVX2-only x86."""
    if platform.machine().lower() not in X86_MACHINES:
        return True
    return bool(cpu_flags() & set(INT8_DOT_PRODUCT_FLAGS))


@functools.cache
def u8s8_gemms_are_exact() -> bool:
    """Whether this onnxruntime's u8 x s8 `MatMulInteger` adds in int32 on this CPU, measured once per process:
    the CPU integer graph's condition. The flags (`int8_dot_products_are_exact`) say what the CPU can do, not
    which kernel MLAS picks (it depends on the build, the dispatch order and, for AMX, a permission the OS may
    refuse), so the kernels are run: A at 255 against B columns at -128 and 127 (every pair of products beyond
    a saturating int16: vpmaddubsw's 2 x 255 x -128) and random, with and without A's zero point 128, B a
    constant (MLAS's packed weights) and an input, one row (its GEMV kernel) and eight, against NumPy int64.
    Without onnx (a runtime-only install) the flags decide."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return int8_dot_products_are_exact()
    depth, columns = 64, 8
    rng = np.random.default_rng(0)
    b = rng.integers(-128, 128, (depth, columns)).astype(np.int8)
    b[:, 0], b[:, 1] = -128, 127
    feeds: dict[str, Any] = {"B_input": b}
    nodes: list[Any] = []
    outputs: list[Any] = []
    expected: list[Any] = []
    for rows in (1, 8):
        a = rng.integers(0, 256, (rows, depth)).astype(np.uint8)
        a[0] = 255
        feeds[f"A{rows}"] = a
        for b_name in ("B_constant", "B_input"):
            for zero_point in ("", "zero_point"):
                name = f"Y{len(nodes)}"
                operands = [f"A{rows}", b_name, zero_point] if zero_point else [f"A{rows}", b_name]
                nodes.append(helper.make_node("MatMulInteger", operands, [name]))
                outputs.append(helper.make_tensor_value_info(name, TensorProto.INT32, [rows, columns]))
                expected.append((a.astype(np.int64) - (128 if zero_point else 0)) @ b.astype(np.int64))
    inputs = [helper.make_tensor_value_info(f"A{rows}", TensorProto.UINT8, [rows, depth]) for rows in (1, 8)]
    inputs.append(helper.make_tensor_value_info("B_input", TensorProto.INT8, [depth, columns]))
    graph = helper.make_graph(
        nodes, "u8s8_probe", inputs, outputs,
        [numpy_helper.from_array(b, "B_constant"), numpy_helper.from_array(np.array(128, np.uint8), "zero_point")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    exact = all(np.array_equal(g, e) for g, e in zip(got, expected))
    logger.debug("u8 x s8 MatMulInteger on this CPU: %s", "exact" if exact else "not exact (saturating)")
    return exact


def cpu_int8_features() -> dict[str, Any]:
    """What of this CPU the CPU INT8 graph depends on, as its record stores it: the machine, the int8 dot-product
    flags it has, and the consequence (whether u8 x s8 pairs add in int32, which picks 8- over 7-bit weights)."""
    return {
        "machine": platform.machine().lower(),
        "int8_dot_product_flags": sorted(cpu_flags() & set(INT8_DOT_PRODUCT_FLAGS)),
        "int8_dot_products_exact": int8_dot_products_are_exact(),
    }


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a derived graph's record stores it (resolved for this CPU, with its version and tag)."""
    resolved = recipe.resolved()
    return {"version": RECIPE_VERSION, "tag": resolved.tag, **asdict(resolved)}


def float_recipe_record() -> dict[str, Any]:
    """The fused float graph's recipe: onnxruntime.transformers' BERT fusions, SkipLayerNormalization split."""
    return {"version": FLOAT_RECIPE_VERSION, "tag": f"v{FLOAT_RECIPE_VERSION}-fused", "fuse": "bert", "split_skip_layer_norm": True}
