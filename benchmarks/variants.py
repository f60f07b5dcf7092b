"""What the benchmark runs: the exports (cached), the peers made from them, and one runner per variant.

Variants of one model, all on the same inputs. Peers (what a CPU user picks instead):

| name | what runs |
| --- | --- |
| `transformers` | Hugging Face transformers float32 eager (`AutoModel`, `torch.inference_mode`): the accuracy reference |
| `ort-float` | our float export on ONNX Runtime as `trt_runtime.load` runs it (`OrtRunner`, graph "auto") |
| `ort-float-o2` | the float export after the fusions of optimum's O2 (`onnxruntime.transformers.optimizer`, opt_level 2, transformers fusions, no EmbedLayerNormalization, no GELU approximation: optimum/onnxruntime/configuration.py `AutoOptimizationConfig`) |
| `quantize_dynamic` | `onnxruntime.quantization.quantize_dynamic` on our float export (after `quant_pre_process`) |
| `quantize_static` | `quantize_static` on our float export, set up as ONNX Runtime's CPU guidance says: u8 activations, s8 per-channel weights with reduce_range, MatMul only, QDQ, MinMax calibration on the shipped text |
| `openvino-float` | OpenVINO on our float export, f32 (`INFERENCE_PRECISION_HINT`) |
| `openvino-float-bf16` | OpenVINO on our float export with its own defaults: bf16 on a CPU with native bf16 |
| `openvino-nncf` | `nncf.quantize(model_type=TRANSFORMER)` post-training INT8 of our float export, calibrated on the same shipped text, run with OpenVINO's defaults (what an optimum-intel user gets) |

Ours (each of our CPU backends):

| name | what runs |
| --- | --- |
| `ort-int8` | the qdq export on ONNX Runtime: the CPU INT8 graph of `trt_runtime.backends.onnxruntime.cpu_int8` |
| `openvino-qdq` | the qdq export's own model.onnx on OpenVINO (`OpenVinoRunner`, f32) |
| `openvino-qdq-bf16` | the same with `precision="bf16"` |
| `ort-integer` | the integer export on ONNX Runtime as `trt_runtime.load` runs it: its `ibert` function bodies, on a CPU with VNNI or AMX the CPU integer graph of `trt_runtime.backends.onnxruntime.cpu_integer` (the same integers on u8 x s8 GEMM kernels) |

Also: `ort-float-fused` (the float export after the BERT fusions the CPU INT8 graph uses), `ort-qdq-export`
(the qdq export's TensorRT-style Q/DQ graph on ONNX Runtime as exported), `ort-integer-exported` (the integer
export's model.onnx as exported: its u8 x u8 GEMMs), `quantize_static-defaults`.

Exports live in exports/bench/<model>-{float,qdq,integer}; one is reused while its export.json still
describes the same checkpoint, task and recipe. Peers live in exports/bench/peers/<model>/, with a JSON
note of the float export (sha256) and the library versions they were made from.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.quantization.errors import RecipeError
from models.quantization.recipe import QuantizationRecipe

if TYPE_CHECKING:
    from trt_runtime.contract.export_dir import ExportInfo

ROOT = Path(__file__).resolve().parents[1]
TASK = "feature-extraction"
OUTPUT = "last_hidden_state"


@dataclass(frozen=True)
class ModelSpec:
    """A model the benchmark measures."""

    name: str
    checkpoint: Path
    description: str
    real_weights: bool  # accuracy means something only with real weights
    calibration_samples: int  # for the qdq export and quantize_static


@dataclass(frozen=True)
class VariantSpec:
    """How to build one variant's runner, in this process or in a child (JSON-serializable)."""

    name: str
    #: "transformers" | "runner" (OrtRunner) | "openvino" (OpenVinoRunner) | "file" (ONNX Runtime on a file)
    #: | "openvino-file" (OpenVINO on an ONNX or IR file)
    kind: str
    path: str  # checkpoint dir | export dir | model file
    graph: str = "auto"  # runner: OrtRunner's graph option
    #: openvino: OpenVinoRunner's options; openvino-file: OpenVINO properties ({}: OpenVINO's defaults)
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VariantSpec:
        return cls(**json.loads(text))


Log = Callable[[str], None]
Feeds = dict[str, np.ndarray]


# --- exports -------------------------------------------------------------------------------------------


def _recipe(spec: ModelSpec, quantization: str) -> QuantizationRecipe:
    """The project's recipe of `quantization` with the spec's calibration samples."""
    if quantization == "none":
        return QuantizationRecipe.default("none")
    return QuantizationRecipe(mode=quantization, num_samples=spec.calibration_samples)


def _resolved_for(recipe: QuantizationRecipe, checkpoint: Path) -> QuantizationRecipe:
    """`recipe` with the integer mode's "the checkpoint's default" fields (None) resolved as the integer model
    resolves them (models/ibert.py), which is how an export records them."""
    if recipe.mode != "integer" or (recipe.force_dequant is not None and recipe.wide_activations is not None):
        return recipe
    from transformers import AutoConfig

    from models.architectures import architecture_for
    from models.ibert import integer_settings_for

    config = AutoConfig.from_pretrained(checkpoint)
    force_dequant, wide_activations = integer_settings_for(
        config, architecture_for(config.model_type), recipe.force_dequant, recipe.wide_activations
    )
    return recipe.replace(force_dequant=force_dequant, wide_activations=wide_activations)


def _reusable(out_dir: Path, spec: ModelSpec, quantization: str) -> bool:
    from trt_runtime.contract.export_dir import CONFIG_JSON, ExportDirError, read_export_info

    try:
        info = read_export_info(out_dir)
        same_config = json.loads((out_dir / CONFIG_JSON).read_text()) == json.loads(
            (spec.checkpoint / CONFIG_JSON).read_text()
        )
    except (ExportDirError, OSError, json.JSONDecodeError):
        return False
    if info.task != TASK or info.quantization != quantization or not same_config:
        return False
    if quantization == "none":
        return True
    try:  # the recipe the export records (defaults resolved), against today's
        recorded = QuantizationRecipe.from_dict(info.calibration or {}, mode=info.quantization)
    except RecipeError:
        return False
    return recorded == _resolved_for(_recipe(spec, quantization), spec.checkpoint).fitted(info.max_sequence_length)


def export_path(spec: ModelSpec, quantization: str, root: Path) -> Path:
    return root / f"{spec.name}-{'float' if quantization == 'none' else quantization}"


def export(spec: ModelSpec, quantization: str, root: Path, log: Log) -> Path:
    """exports/bench/<model>-<float|qdq>, exported now unless a matching one is there."""
    out_dir = export_path(spec, quantization, root)
    if _reusable(out_dir, spec, quantization):
        log(f"  reusing {out_dir} (its export.json matches)")
        return out_dir
    import exporter

    log(f"  exporting {spec.checkpoint} ({quantization}) to {out_dir} ...")
    # validation (ONNX Runtime against PyTorch) is the exporter's test suite's job; here it would only
    # double the time of a first run
    exporter.export(
        spec.checkpoint, out_dir, task=TASK, recipe=_recipe(spec, quantization), validate=False,
        log=lambda m: log(f"    {m}"),
    )
    return out_dir


# --- peers: onnxruntime.quantization on our float export ----------------------------------------------


class _CalibrationReader:
    """quantize_static's CalibrationDataReader over the shipped calibration text."""

    def __init__(self, batches: list[Feeds]):
        self._batches = iter(batches)

    def get_next(self) -> Feeds | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # not used by MinMax, part of the protocol
        pass


def calibration_feeds(spec: ModelSpec, input_names: list[str], max_length: int) -> list[Feeds]:
    from models.data import calibration_batches, load_texts

    batches = calibration_batches(
        load_texts(), spec.checkpoint, batch_size=16, max_length=min(128, max_length),
        num_samples=spec.calibration_samples,
    )
    return [{k: v.numpy() for k, v in batch.items() if k in input_names} for batch in batches]


#: peers made from the float export: ONNX files run by ONNX Runtime, and OpenVINO IR
ORT_PEERS = ("quantize_dynamic", "quantize_static", "quantize_static-defaults", "ort-float-o2")
OPENVINO_PEERS = ("openvino-nncf",)
PEERS = ORT_PEERS + OPENVINO_PEERS


def _optimum_o2(source: Path, target: Path, config: dict[str, Any]) -> None:
    """What optimum's ORTOptimizer does with AutoOptimizationConfig.O2() for a BERT on the CPU: the
    transformers fusions of onnxruntime.transformers with EmbedLayerNormalization off (optimum's default,
    disable_embed_layer_norm_fusion=True), no GELU approximation, and ONNX Runtime's level-2 ("extended")
    graph optimizations (optimum/onnxruntime/configuration.py, `AutoOptimizationConfig._LEVELS["O2"]`)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from trt_runtime.contract.files import save_onnx_atomic

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False
    options.enable_gelu_approximation = False
    model = optimizer.optimize_model(
        str(source), model_type="bert", num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)), optimization_options=options, opt_level=2, use_gpu=False,
    )
    save_onnx_atomic(model.model, target)


def _make_peer(name: str, source: Path, target: Path, spec: ModelSpec, info: ExportInfo) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if name == "quantize_dynamic":  # ONNX Runtime's recipe for transformers on CPU
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return
    if name == "ort-float-o2":
        _optimum_o2(source, target, json.loads((spec.checkpoint / "config.json").read_text()))
        return
    reader = _CalibrationReader(calibration_feeds(spec, info.input_names, info.max_sequence_length))
    if name == "quantize_static":
        quantize_static(
            source, target, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    elif name == "quantize_static-defaults":
        quantize_static(source, target, reader)
    else:
        raise ValueError(f"unknown peer {name!r}")


def _peer_note(name: str, info: ExportInfo) -> dict[str, Any]:
    """What a peer is made from: the float export and the versions of the libraries that make it."""
    import onnxruntime

    note: dict[str, Any] = {"float_export_sha256": info.onnx_sha256, "onnxruntime": onnxruntime.__version__}
    if name in OPENVINO_PEERS:
        import nncf
        import openvino

        note.update(openvino=openvino.get_version(), nncf=nncf.__version__)
    return note


def peer(name: str, float_dir: Path, spec: ModelSpec, root: Path, log: Log) -> Path:
    """exports/bench/peers/<model>/<name>.onnx (or <name>/model.xml for OpenVINO's), made from the float
    export unless already made from it."""
    from trt_runtime.contract.export_dir import MODEL_ONNX, read_export_info
    from trt_runtime.contract.files import reserved_path, write_json_atomic

    info = read_export_info(float_dir)
    directory = root / "peers" / spec.name
    target = directory / (f"{name}/model.xml" if name in OPENVINO_PEERS else f"{name}.onnx")
    note = directory / f"{name}.json"
    made_from = _peer_note(name, info)
    if target.exists() and note.exists() and json.loads(note.read_text()) == made_from:
        return target
    log(f"  making {name} from {float_dir / MODEL_ONNX} ...")
    directory.mkdir(parents=True, exist_ok=True)
    if name in OPENVINO_PEERS:
        _nncf_peer(float_dir / MODEL_ONNX, target.parent, spec, info)
    elif name == "ort-float-o2":
        with reserved_path(target) as tmp:
            _make_peer(name, float_dir / MODEL_ONNX, tmp, spec, info)
    else:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(prefix=f".{name}-pre-", dir=directory) as scratch, reserved_path(target) as tmp:
            pre = Path(scratch) / "pre.onnx"
            quant_pre_process(str(float_dir / MODEL_ONNX), str(pre), skip_symbolic_shape=True)
            _make_peer(name, pre, tmp, spec, info)
    write_json_atomic(note, made_from)
    return target


def _nncf_peer(source: Path, target_dir: Path, spec: ModelSpec, info: ExportInfo) -> None:
    """NNCF's post-training INT8 of the float export (`nncf.quantize(..., model_type=TRANSFORMER)`, as
    optimum-intel's OVQuantizer calls it for a transformer), calibrated on all of the shipped samples that
    the qdq export calibrates on, saved as OpenVINO IR into `target_dir` (staged, then swapped in whole)."""
    import nncf
    import openvino

    from trt_runtime.contract.files import atomic_directory

    batches = calibration_feeds(spec, info.input_names, info.max_sequence_length)
    model = openvino.Core().read_model(str(source))
    quantized = nncf.quantize(
        model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )
    with atomic_directory(target_dir) as staging:
        # save_model writes model.xml and model.bin by name itself: into the fresh staging directory
        openvino.save_model(quantized, str(staging / "model.xml"))


def variant_specs(spec: ModelSpec, wanted: list[str], exports: Path, log: Log) -> list[VariantSpec]:
    """The variants `wanted` of one model, its exports and peers made (or reused) under `exports`."""
    float_dir = export(spec, "none", exports, log)
    needs_qdq = {"ort-int8", "ort-qdq-export", "openvino-qdq", "openvino-qdq-bf16"} & set(wanted)
    qdq_dir = export(spec, "qdq", exports, log) if needs_qdq else None
    needs_integer = {"ort-integer", "ort-integer-exported"} & set(wanted)
    integer_dir = export(spec, "integer", exports, log) if needs_integer else None
    variants = []
    for name in wanted:
        if name == "transformers":
            variants.append(VariantSpec(name, "transformers", str(spec.checkpoint)))
        elif name == "ort-float":
            variants.append(VariantSpec(name, "runner", str(float_dir)))
        elif name == "ort-float-fused":
            variants.append(
                VariantSpec(name, "file", str(fused_float(float_dir, exports / "peers" / spec.name)))
            )
        elif name == "ort-int8":
            variants.append(VariantSpec(name, "runner", str(qdq_dir), "cpu-int8"))
        elif name == "ort-qdq-export":
            variants.append(VariantSpec(name, "runner", str(qdq_dir), "exported"))
        elif name == "ort-integer":
            variants.append(VariantSpec(name, "runner", str(integer_dir), "auto"))
        elif name == "ort-integer-exported":
            variants.append(VariantSpec(name, "runner", str(integer_dir), "exported"))
        elif name in ("openvino-qdq", "openvino-qdq-bf16"):
            precision = "bf16" if name.endswith("bf16") else "f32"
            variants.append(VariantSpec(name, "openvino", str(qdq_dir), options={"precision": precision}))
        elif name == "openvino-float":
            path = str(float_dir / "model.onnx")
            variants.append(VariantSpec(name, "openvino-file", path, options={"INFERENCE_PRECISION_HINT": "f32"}))
        elif name == "openvino-float-bf16":  # OpenVINO's own default precision (bf16 where the CPU has it)
            variants.append(VariantSpec(name, "openvino-file", str(float_dir / "model.onnx")))
        elif name == "openvino-nncf":  # run as optimum-intel would: OpenVINO's defaults
            variants.append(VariantSpec(name, "openvino-file", str(peer(name, float_dir, spec, exports, log))))
        elif name in PEERS:
            variants.append(VariantSpec(name, "file", str(peer(name, float_dir, spec, exports, log))))
        else:
            raise ValueError(f"unknown variant {name!r}")
    return variants


def fused_float(float_dir: Path, directory: Path) -> Path:
    """The float export after onnxruntime.transformers' BERT fusions (the same ones the CPU INT8 graph uses)."""
    import onnx

    from trt_runtime.backends.onnxruntime import cpu_int8
    from trt_runtime.contract.export_dir import MODEL_ONNX, read_export_info
    from trt_runtime.contract.files import save_onnx_atomic

    info = read_export_info(float_dir)
    target = directory / f"float-fused-{(info.onnx_sha256 or '')[:16]}.onnx"
    if target.exists():
        return target
    config = cpu_int8.read_config(float_dir)
    model = onnx.load(str(float_dir / MODEL_ONNX))
    if info.architecture in cpu_int8.FUSABLE_ARCHITECTURES:
        model = cpu_int8.fuse_transformer(
            model, int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
        )
    save_onnx_atomic(model, target)
    return target


# --- runners -----------------------------------------------------------------------------------------


class Runner:
    """feeds -> last_hidden_state, plus what was loaded (for the model size)."""

    def __init__(
        self, call: Callable[[Feeds], np.ndarray], files: list[Path], input_names: list[str], graph: str | None = None
    ):
        self.call = call
        self.files = files
        self.input_names = input_names
        self.graph = graph  # OrtRunner variants: the graph it chose and why (e.g. cpu-integer only on VNNI / AMX)

    def __call__(self, feeds: Feeds) -> np.ndarray:
        return self.call({k: v for k, v in feeds.items() if k in self.input_names})


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _openvino_file_runner(variant: VariantSpec, threads: int) -> Runner:
    import openvino

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **variant.options}
    compiled = openvino.Core().compile_model(variant.path, "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(OUTPUT)
    names = [name for port in compiled.inputs for name in port.get_names()]
    path = Path(variant.path)
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return Runner(lambda feeds: request.infer(feeds)[output], files, names)


def build_runner(variant: VariantSpec, threads: int) -> Runner:
    """The runner of one variant (imports torch only for the transformers variant)."""
    if variant.kind == "transformers":
        import torch
        from transformers import AutoModel

        torch.set_num_threads(threads)
        model = AutoModel.from_pretrained(variant.path, dtype=torch.float32).eval()

        def run_torch(feeds: Feeds) -> np.ndarray:
            with torch.inference_mode():
                out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            return out.last_hidden_state.numpy()

        names = ["input_ids", "attention_mask", "token_type_ids"]
        files = sorted(Path(variant.path).glob("*.safetensors")) + sorted(Path(variant.path).glob("*.bin"))
        return Runner(run_torch, files, names)
    if variant.kind == "runner":
        from trt_runtime.backends.onnxruntime.runner import OrtRunner

        runner = OrtRunner(variant.path, intra_op_num_threads=threads, inter_op_num_threads=1, graph=variant.graph)
        session = runner.session
        # the graph it runs: for the CPU INT8 graph the derived file (.cache/cpu-int8-*.onnx), not model.onnx; one
        # derived in memory (nothing writable) has no file, and model.onnx stands for its size
        files = [Path(runner.graph_path) if runner.graph_path is not None else Path(variant.path) / "model.onnx"]
        graph = f"{runner.choice.graph}: {runner.choice.graph_reason}"
        return Runner(lambda feeds: session.run([OUTPUT], feeds)[0], files, runner.info.input_names, graph)
    if variant.kind == "openvino":
        from trt_runtime.backends.openvino.runner import OpenVinoRunner

        ov_runner = OpenVinoRunner(variant.path, intra_op_num_threads=threads, **variant.options)
        return Runner(
            lambda feeds: ov_runner(feeds)[OUTPUT], [ov_runner.model_path], ov_runner.info.input_names
        )
    if variant.kind == "openvino-file":
        return _openvino_file_runner(variant, threads)
    if variant.kind == "file":
        import onnxruntime as ort

        session = ort.InferenceSession(variant.path, session_options(threads), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return Runner(lambda feeds: session.run([OUTPUT], feeds)[0], [Path(variant.path)], names)
    raise ValueError(f"unknown variant kind {variant.kind!r}")


def model_size_mb(files: list[Path]) -> float:
    """Bytes on disk of the files a variant loads (with ONNX external data next to them)."""
    total = 0
    for path in files:
        total += path.stat().st_size
        total += sum(p.stat().st_size for p in path.parent.glob(path.name + ".*") if p.is_file())
    return total / 2**20


def random_feeds(batch: int, sequence: int, vocab_size: int, seed: int = 0) -> Feeds:
    """Token ids of a full (unpadded) batch: every variant sees exactly these."""
    rng = np.random.default_rng(seed)
    low = 1000 if vocab_size > 2000 else 1  # past the special and unused tokens of real vocabularies
    ids = rng.integers(low, vocab_size, size=(batch, sequence), dtype=np.int64)
    if vocab_size > 2000:
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP] of the BERT uncased vocabulary
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, sequence), np.int64),
        "token_type_ids": np.zeros((batch, sequence), np.int64),
    }


def python_executable() -> str:
    return sys.executable
