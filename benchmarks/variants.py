"""What the benchmark runs: the exports (cached), the peers made from them, and one runner per variant.

Variants of one model, all on the same inputs:

| name | what runs |
| --- | --- |
| `pytorch` | PyTorch float eager (`models.load`, `torch.inference_mode`) |
| `ort-float` | our float export on ONNX Runtime (`OrtRunner`: model.onnx, ORT's own graph optimizations) |
| `ort-float-fused` | the float export after onnxruntime.transformers' BERT fusions (reference: what fusions alone give) |
| `ort-int8` | our INT8 export on ONNX Runtime (`OrtRunner`: the CPU INT8 graph of `trt_runtime.backends.onnxruntime.cpu_int8`) |
| `ort-qdq-export` | the same INT8 export's TensorRT-style Q/DQ graph as exported (`graph="exported"`) |
| `quantize_dynamic` | `onnxruntime.quantization.quantize_dynamic` on our float export (after `quant_pre_process`) |
| `quantize_static` | `quantize_static` on our float export, set up as ONNX Runtime's CPU guidance says: u8 activations, s8 per-channel weights with reduce_range, MatMul only, QDQ, MinMax calibration on the shipped text |
| `quantize_static-defaults` | `quantize_static` with its defaults (s8 activations and weights on every op, QDQ) |

Exports live in exports/bench/<model>-{float,qdq}; one is reused while its export.json still describes
the same checkpoint, task and recipe. Peers live in exports/bench/peers/<model>/, with a JSON note of
the float export (sha256) and the onnxruntime version they were made from.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
    kind: str  # "torch" | "runner" | "file"
    path: str  # checkpoint dir | export dir | ONNX file
    graph: str = "auto"  # runner: OrtRunner's graph option

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
    return recorded == _recipe(spec, quantization).fitted(info.max_sequence_length)


def export(spec: ModelSpec, quantization: str, root: Path, log: Log) -> Path:
    """exports/bench/<model>-<float|qdq>, exported now unless a matching one is there."""
    out_dir = root / f"{spec.name}-{'float' if quantization == 'none' else quantization}"
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


PEERS = ("quantize_dynamic", "quantize_static", "quantize_static-defaults")


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


def peer(name: str, float_dir: Path, spec: ModelSpec, root: Path, log: Log) -> Path:
    """exports/bench/peers/<model>/<name>.onnx, made from the float export unless already made from it."""
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from trt_runtime.contract.export_dir import MODEL_ONNX, read_export_info
    from trt_runtime.contract.files import reserved_path, write_json_atomic

    info = read_export_info(float_dir)
    directory = root / "peers" / spec.name
    target, note = directory / f"{name}.onnx", directory / f"{name}.json"
    made_from = {"float_export_sha256": info.onnx_sha256, "onnxruntime": onnxruntime.__version__}
    if target.exists() and note.exists() and json.loads(note.read_text()) == made_from:
        return target
    log(f"  making {name} from {float_dir / MODEL_ONNX} ...")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-pre-", dir=directory) as scratch, reserved_path(target) as tmp:
        pre = Path(scratch) / "pre.onnx"
        quant_pre_process(str(float_dir / MODEL_ONNX), str(pre), skip_symbolic_shape=True)
        _make_peer(name, pre, tmp, spec, info)
    write_json_atomic(note, made_from)
    return target


# --- runners -----------------------------------------------------------------------------------------


class Runner:
    """feeds -> last_hidden_state, plus what was loaded (for the model size)."""

    def __init__(self, call: Callable[[Feeds], np.ndarray], files: list[Path], input_names: list[str]):
        self.call = call
        self.files = files
        self.input_names = input_names

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


def build_runner(variant: VariantSpec, threads: int) -> Runner:
    """The runner of one variant (imports torch only for the PyTorch variant)."""
    if variant.kind == "torch":
        import torch

        import models

        torch.set_num_threads(threads)
        model = models.load(variant.path, task=TASK, quantization="none").eval()

        def run_torch(feeds: Feeds) -> np.ndarray:
            with torch.inference_mode():
                out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            return out[OUTPUT].numpy()

        names = ["input_ids", "attention_mask", "token_type_ids"]
        files = sorted(Path(variant.path).glob("*.safetensors")) + sorted(Path(variant.path).glob("*.bin"))
        return Runner(run_torch, files, names)
    if variant.kind == "runner":
        from trt_runtime.backends.onnxruntime.runner import OrtRunner

        runner = OrtRunner(variant.path, intra_op_num_threads=threads, inter_op_num_threads=1, graph=variant.graph)
        session = runner.session
        # the graph it runs: for the CPU INT8 graph the derived file (.cache/cpu-int8-*.onnx), not model.onnx
        files = [Path(runner.graph_path)]
        return Runner(lambda feeds: session.run([OUTPUT], feeds)[0], files, runner.info.input_names)
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
