"""The stages of `make eval`, each cached under the output root and reused when its key matches.

    float checkpoint  -> dev analysis (calibrator choice, per-layer sensitivity; PyTorch)
                      -> QAT checkpoint (qdq, from the chosen calibrator) and integer QAT checkpoint
                      -> exports (exporter.export) -> test predictions (trt_runtime.pipeline on ONNX
                         Runtime with its defaults, and the same model in PyTorch)

A stage writes its result (a checkpoint directory, an export directory, a predictions file) atomically
and records the key it was made with in a small JSON file; a later run reuses it only when the key is
the same, so a changed recipe, base checkpoint or library version of the exporter's output is never
mixed with an old result.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.eval.metrics import METRICS, bootstrap_indices, paired_bootstrap
from benchmarks.eval.recipe import (
    CALIBRATION_FIELDS,
    CALIBRATORS,
    FLOAT_FIELDS,
    INTEGER_QAT_FIELDS,
    QAT_FIELDS,
    Recipe,
    Variant,
    calibration_recipe,
    digest,
    integer_variants,
    ptq_variants,
)
from benchmarks.eval.tasks import Examples, Task, examples, inference_batches, training_batches
from models.data import MODEL_INPUTS
from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.files import sha256_file, write_bytes_atomic, write_json_atomic

Say = Callable[[str], None]
STAGE_JSON = "eval-stage.json"
LAYER_PATTERN = re.compile(r"\.layers?\.(\d+)\.")


class EvalError(QbertError, RuntimeError):
    """A stage of the evaluation cannot run; the message says what to do."""

    code = "eval-failed"


# --- small helpers ---------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def checkpoint_identity(directory: Path) -> str:
    """sha256 over the checkpoint's config and weight files (what every later stage depends on)."""
    h = hashlib.sha256()
    names = ("config.json", "model.safetensors", "pytorch_model.bin")
    found = [directory / name for name in names if (directory / name).exists()]
    if not found:
        raise EvalError(f"{directory} holds no config.json / model weights: not a checkpoint directory")
    for path in found:
        h.update(path.name.encode())
        h.update(sha256_file(path).encode())
    return h.hexdigest()[:16]


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def eval_max_length(checkpoint: Path) -> int:
    """The longest input the pipeline takes for this model (every test sentence fits whole in MiniLM's 512)."""
    from models.architectures import max_positions
    from models.loading import load_config

    config, arch = load_config(checkpoint)
    limit = max_positions(config, arch)
    model_max = getattr(load_tokenizer(checkpoint), "model_max_length", None) or limit
    return int(min(limit, model_max, 512))


@dataclass
class Workspace:
    """Where one task's stages live, and what they share."""

    root: Path  # <output root>/<task>
    task: Task
    recipe: Recipe
    base: Path  # the pretrained checkpoint (all-MiniLM-L6-v2)
    say: Say
    progress: bool = True
    threads: int = 2  # ONNX Runtime's intra-op threads (torch's are set once, in __main__)
    #: stage -> {"seconds": wall time when it was made, "reused": whether this run took it from the cache}
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.base)
        return self._tokenizer

    def record(self, name: str, seconds: float | None, *, reused: bool) -> None:
        """A stage's wall time; for a reused stage, the time it took when it was made (the cold-run cost)."""
        self.timings[name] = {
            "seconds": None if seconds is None else round(float(seconds), 1),
            "reused": reused,
        }


def _reusable_stage(directory: Path, key: str) -> dict[str, Any] | None:
    record = read_json(directory / STAGE_JSON)
    return record if isinstance(record, dict) and record.get("key") == key else None


# --- model inputs --------------------------------------------------------------------------------------


def calibration_set(ws: Workspace) -> list[dict[str, torch.Tensor]]:
    """The batches the exporter calibrates on: the shipped calibration split, same sizes."""
    from models.quantization import recipe_batches

    return recipe_batches(calibration_recipe(ws.recipe, "qdq"), ws.tokenizer)


def torch_logits(
    model: torch.nn.Module,
    texts: Sequence[str],
    tokenizer: Any,
    batch_size: int,
    max_length: int,
    desc: str,
    progress: bool = True,
) -> np.ndarray:
    """[len(texts), labels] float32 logits, run in batches of similar length (eval mode, no gradients)."""
    model.eval()
    out: np.ndarray | None = None
    batches = inference_batches(texts, tokenizer, batch_size, max_length)
    with torch.inference_mode():
        for positions, batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})["logits"].float().numpy()
            if out is None:
                out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
            out[positions] = logits
    assert out is not None
    return out


def scores_from_logits(task: Task, logits: np.ndarray) -> np.ndarray:
    """Binary: the positive-class probability (softmax, as the pipeline computes it); regression: the score."""
    if task.regression:
        return logits[:, 0].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return probabilities[:, 1].astype(np.float64)


def predictions(task: Task, scores: np.ndarray) -> np.ndarray:
    """What the metrics take: predicted labels (positive when its probability is over 0.5) or the scores."""
    return scores if task.regression else (scores > 0.5).astype(np.int64)


# --- fine-tuning ---------------------------------------------------------------------------------------


def _freeze(model: torch.nn.Module, recipe: Recipe) -> None:
    """Leave the word embeddings as pretrained (they are most of the parameters and of the optimizer's work)."""
    if recipe.freeze_word_embeddings:
        for name, parameter in model.named_parameters():
            if name.endswith("word_embeddings.weight"):
                parameter.requires_grad_(False)


def _finetune_config(epochs: int, learning_rate: float, seed: int) -> Any:
    from models.qat import FinetuneConfig

    return FinetuneConfig(epochs=epochs, learning_rate=learning_rate, seed=seed)


def float_checkpoint(ws: Workspace) -> tuple[Path, str]:
    """all-MiniLM-L6-v2 with a new head, fine-tuned in float on a seeded sample of the train split."""
    from models.data import SPLIT_SALT
    from models.qat import new_task_model

    r = ws.recipe
    key = r.key(
        *FLOAT_FIELDS, extra={"task": ws.task.name, "base": checkpoint_identity(ws.base), "split": SPLIT_SALT}
    )
    directory = ws.root / f"float-{key}"
    if record := _reusable_stage(directory, key):
        ws.say(f"  reusing the fine-tuned float checkpoint {directory}")
        ws.record("fine-tune float", record.get("seconds"), reused=True)
        return directory, key
    started = time.monotonic()
    train = examples(ws.task, "train", limit=r.train_samples, seed=r.seed)
    ws.say(
        f"  fine-tuning {ws.base.name} + a new {ws.task.name} head in float: {len(train)} train sentences, "
        f"{r.epochs} epoch(s), lr {r.learning_rate:g}, batch {r.batch_size}, max_length {r.max_length}"
    )
    model = new_task_model(ws.base, "text-classification", labels=ws.task.labels)
    if ws.task.regression:
        model.config.problem_type = "regression"
    seconds = _train_and_save(
        ws, model, train, r.batch_size, r.epochs, r.learning_rate, directory, key, "float", started
    )
    ws.record("fine-tune float", seconds, reused=False)
    return directory, key


def qat_checkpoint(ws: Workspace, float_dir: Path, float_key: str, best: str) -> tuple[Path, str]:
    """The float checkpoint in qdq mode, calibrated as the exporter does with `best`, then QAT."""
    import models
    from models.quantization import calibrate_model

    r = ws.recipe
    recipe = ptq_variants([best])[0].quantization_recipe(r)
    key = r.key(*QAT_FIELDS, *CALIBRATION_FIELDS, extra={"float": float_key, "recipe": recipe.to_dict()})
    directory = ws.root / f"qat-{best}-{key}"
    if record := _reusable_stage(directory, key):
        ws.say(f"  reusing the QAT checkpoint {directory}")
        ws.record("QAT", record.get("seconds"), reused=True)
        return directory, key
    started = time.monotonic()
    model = models.load(float_dir, task="text-classification", quantization="qdq")
    calibrate_model(model, calibration_set(ws), recipe, progress=ws.progress)
    train = examples(ws.task, "train", limit=r.qat_samples, seed=r.seed)
    ws.say(
        f"  QAT ({best} start): {len(train)} train sentences, {r.qat_epochs} epoch(s), lr {r.qat_learning_rate:g}"
    )
    seconds = _train_and_save(
        ws, model, train, r.batch_size, r.qat_epochs, r.qat_learning_rate, directory, key, "qat", started
    )
    ws.record("QAT", seconds, reused=False)
    return directory, key


def integer_qat_checkpoint(ws: Workspace, float_dir: Path, float_key: str) -> tuple[Path, str]:
    """The float checkpoint in I-BERT integer mode, calibrated as the exporter does, then fine-tuned in
    integer mode (straight-through gradients; activation ranges follow I-BERT's training-mode EMA)."""
    import models
    from models.quantization import calibrate_model

    r = ws.recipe
    recipe = integer_variants()[0].quantization_recipe(r)
    key = r.key(*INTEGER_QAT_FIELDS, *CALIBRATION_FIELDS, extra={"float": float_key, "recipe": recipe.to_dict()})
    directory = ws.root / f"integer-qat-{key}"
    if record := _reusable_stage(directory, key):
        ws.say(f"  reusing the integer QAT checkpoint {directory}")
        ws.record("integer QAT", record.get("seconds"), reused=True)
        return directory, key
    started = time.monotonic()
    model = models.load(float_dir, task="text-classification", quantization="integer")
    calibrate_model(model, calibration_set(ws), recipe, progress=ws.progress)
    train = examples(ws.task, "train", limit=r.integer_qat_samples, seed=r.seed)
    ws.say(
        f"  integer-mode QAT: {len(train)} train sentences, {r.integer_qat_epochs} epoch(s), "
        f"lr {r.integer_qat_learning_rate:g}, batch {r.integer_qat_batch_size}"
    )
    seconds = _train_and_save(
        ws,
        model,
        train,
        r.integer_qat_batch_size,
        r.integer_qat_epochs,
        r.integer_qat_learning_rate,
        directory,
        key,
        "integer-qat",
        started,
    )
    ws.record("integer QAT", seconds, reused=False)
    return directory, key


def _train_and_save(
    ws: Workspace,
    model: torch.nn.Module,
    train: Examples,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    directory: Path,
    key: str,
    stage: str,
    started: float,
) -> float:
    """The common tail of the three training stages: fine-tune, save the checkpoint, then its stage record
    (last, so that an interrupted stage is never taken for a finished one)."""
    from models.qat import finetune, save_checkpoint

    r = ws.recipe
    batches = training_batches(ws.task, train, ws.tokenizer, batch_size, r.max_length)
    _freeze(model, r)
    history = finetune(
        model, batches, config=_finetune_config(epochs, learning_rate, r.seed), progress=ws.progress
    )
    save_checkpoint(model, ws.base, directory)
    seconds = _since(started)
    write_json_atomic(directory / STAGE_JSON, {"key": key, "stage": stage, "history": history, "seconds": seconds})
    return seconds


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


# --- dev analysis: calibrator choice and per-layer sensitivity (PyTorch fake quantization) -------------


def layer_of(quantizer_name: str) -> str:
    match = LAYER_PATTERN.search(quantizer_name)
    return f"layer {match.group(1)}" if match else "outside the encoder layers"


def _set_enabled(quantizers: Mapping[str, Any], enabled: Iterable[str]) -> None:
    chosen = set(enabled)
    for name, quantizer in quantizers.items():
        if name in chosen:
            quantizer.enable()
        else:
            quantizer.disable()


def _fidelity(task: Task, logits: np.ndarray, float_logits: np.ndarray) -> dict[str, float]:
    """How far the outputs moved from float's: RMS change of the output (binary: the logit margin),
    and the share of sentences whose predicted label flipped (binary)."""
    if task.regression:
        change = logits[:, 0] - float_logits[:, 0]
        return {"rms_change": float(np.sqrt(np.mean(change.astype(np.float64) ** 2)))}
    margin = logits[:, 1] - logits[:, 0]
    float_margin = float_logits[:, 1] - float_logits[:, 0]
    change = (margin - float_margin).astype(np.float64)
    flips = float(np.mean((margin > 0) != (float_margin > 0)))
    return {"rms_change": float(np.sqrt(np.mean(change**2))), "flip_rate": flips}


def dev_analysis(
    ws: Workspace, float_dir: Path, float_key: str, calibrators: Sequence[str], *, sensitivity: bool = True
) -> dict[str, Any]:
    """On a seeded dev sample, in PyTorch fake quantization with the exporter's calibration data:

    - every calibrator with the exporter's default float sites and smoothing: the task metric and how far the outputs
      move from float's; the best calibrator is the one whose outputs move least (RMS change), which does
      not depend on label noise and uses no test data;
    - per-layer sensitivity with the best calibrator: one encoder layer quantized at a time (the rest
      float), once with the exporter's default sites and once with every site of that layer.
    """
    import models
    from models.quantization import collect_stats, compute_amax, finish_calibration, named_quantizers
    from models.quantization.qdq.quantized_model import select_quantizers
    from models.quantization.recipe import DEFAULT_PERCENTILE

    r = ws.recipe
    default_recipe = calibration_recipe(r, "qdq")
    default_float_sites = default_recipe.keep_float or ()
    key = r.key(
        *CALIBRATION_FIELDS,
        "dev_samples",
        "eval_batch_size",
        "bootstrap_resamples",
        "bootstrap_seed",
        "confidence",
        extra={
            "float": float_key,
            "sensitivity": sensitivity,
            "keep_float": list(default_float_sites),
            "smoothing": default_recipe.smoothing,
            "calibrators": list(calibrators),
        },
    )
    path = ws.root / f"dev-analysis-{key}.json"
    cached = read_json(path)
    if isinstance(cached, dict) and cached.get("key") == key:
        ws.say(f"  reusing the dev analysis {path}")
        ws.record("dev analysis", cached.get("seconds"), reused=True)
        return cached
    started = time.monotonic()
    dev = examples(ws.task, "dev", limit=r.dev_samples, seed=r.seed)
    max_length = eval_max_length(float_dir)
    indices = bootstrap_indices(len(dev), r.bootstrap_resamples, r.bootstrap_seed)

    def run(model: torch.nn.Module, desc: str) -> np.ndarray:
        return torch_logits(model, dev.texts, ws.tokenizer, r.eval_batch_size, max_length, desc, ws.progress)

    float_model = models.load(float_dir, task="text-classification", quantization="none")
    float_logits = run(float_model, "dev: float")
    del float_model
    float_scores = scores_from_logits(ws.task, float_logits)

    def summary(logits: np.ndarray) -> dict[str, Any]:
        scores = scores_from_logits(ws.task, logits)
        record: dict[str, Any] = {
            m: float(METRICS[m](dev.targets, predictions(ws.task, scores))) for m in ws.task.metrics
        }
        change = paired_bootstrap(
            ws.task.headline,
            dev.targets,
            predictions(ws.task, float_scores),
            predictions(ws.task, scores),
            indices,
            r.confidence,
        )
        record["change"] = change.to_dict()
        record.update(_fidelity(ws.task, logits, float_logits))
        return record

    model = models.load(float_dir, task="text-classification", quantization="qdq")
    quantizers = named_quantizers(model)
    default_sites = set(quantizers) - set(select_quantizers(model, list(default_float_sites)))
    batches = calibration_set(ws)
    if default_recipe.smoothing != "none":  # as calibrate_model does: the float sites first, then smoothing
        from models.quantization.smoothing import smooth

        _set_enabled(quantizers, default_sites)  # a site kept float is not smoothed
        smooth(model, batches, str(default_recipe.smoothing), progress=ws.progress)
    chosen = [c for c in CALIBRATORS if c[0] in calibrators]
    if not chosen:
        raise EvalError(
            f"no known calibrator among {list(calibrators)}; calibrators: {', '.join(c[0] for c in CALIBRATORS)}"
        )
    results: dict[str, Any] = {}
    amax: dict[str, dict[str, torch.Tensor]] = {}
    # one max pass and one histogram pass serve every calibrator (calibration runs the float model, so
    # each quantizer's statistics do not depend on which other sites are quantized)
    _set_enabled(quantizers, quantizers)
    try:
        if any(method == "max" for _, method, _ in chosen):
            collect_stats(model, batches, "max", progress=ws.progress)
            compute_amax(model, "max", progress=False)
            amax["max"] = {name: q.amax.detach().clone() for name, q in quantizers.items()}
        if any(method != "max" for _, method, _ in chosen):
            collect_stats(model, batches, "histogram", progress=ws.progress)
            for name, method, percentile in chosen:
                if method != "max":
                    compute_amax(model, method, percentile or DEFAULT_PERCENTILE, progress=False)
                    amax[name] = {q_name: q.amax.detach().clone() for q_name, q in quantizers.items()}
    finally:
        finish_calibration(model)

    def use(name: str, enabled: Iterable[str]) -> None:
        _set_enabled(quantizers, quantizers)
        for q_name, quantizer in quantizers.items():
            quantizer.amax = amax[name][q_name]
        _set_enabled(quantizers, enabled)

    for name, _, _ in chosen:
        use(name, default_sites)
        results[name] = summary(run(model, f"dev: {name}"))
    best = min(results, key=lambda name: results[name]["rms_change"])
    ws.say(
        "  calibrators on dev (RMS output change vs float): "
        + ", ".join(f"{name} {results[name]['rms_change']:.4f}" for name in results)
        + f"; best: {best}"
    )
    result: dict[str, Any] = {
        "key": key,
        "split": "dev",
        "num_examples": len(dev),
        "float": {
            m: float(METRICS[m](dev.targets, predictions(ws.task, float_scores))) for m in ws.task.metrics
        },
        "calibrators": results,
        "best_calibrator": best,
        "selection": "the calibrator whose dev outputs move least from float's (RMS change), default float sites",
    }
    if sensitivity:
        layers = sorted({layer_of(name) for name in quantizers}, key=_layer_sort_key)
        per_layer = []
        for layer in layers:
            in_layer = {name for name in quantizers if layer_of(name) == layer}
            row: dict[str, Any] = {"layer": layer}
            for sites, enabled in (("default sites", in_layer & default_sites), ("every site", in_layer)):
                if not enabled:
                    continue
                use(best, enabled)
                row[sites] = summary(run(model, f"dev: {layer}, {sites}"))
                row[sites]["quantizers"] = len(enabled)
            per_layer.append(row)
        result["sensitivity"] = {"calibrator": best, "layers": per_layer}
    result["seconds"] = _since(started)
    write_json_atomic(path, result)
    ws.record("dev analysis", result["seconds"], reused=False)
    return result


def _layer_sort_key(layer: str) -> tuple[int, int]:
    match = re.fullmatch(r"layer (\d+)", layer)
    return (0, int(match.group(1))) if match else (1, 0)


# --- exports -------------------------------------------------------------------------------------------


def export_variant(
    ws: Workspace, variant: Variant, checkpoint: Path, checkpoint_key: str, *, validate: bool = False
) -> tuple[Path, bool]:
    """exporter.export of `checkpoint` as `variant` into <root>/exports/<name>; (directory, reused)."""
    import exporter
    from trt_runtime.contract.export_dir import ExportDirError, read_export_info

    recipe = variant.quantization_recipe(ws.recipe)
    key = digest({"checkpoint": checkpoint_key, "recipe": recipe.to_dict(), "validate": validate})
    out = ws.root / "exports" / variant.name
    sidecar = ws.root / "exports" / f"{variant.name}.eval.json"
    record = read_json(sidecar)
    if isinstance(record, dict) and record.get("key") == key and (out / "export.json").exists():
        try:
            info = read_export_info(out)  # checks model.onnx against its sha256
        except ExportDirError:
            info = None
        if info is not None and info.onnx_sha256 == record.get("onnx_sha256"):
            ws.say(f"  reusing the export {out}")
            ws.record(f"export {variant.name}", record.get("seconds"), reused=True)
            return out, True
    started = time.monotonic()
    ws.say(f"  exporting {variant.name}: {recipe.mode}, {recipe.describe()}")
    exporter.export(
        checkpoint, out, task="text-classification", recipe=recipe, validate=validate,
        log=lambda message: ws.say(f"    {message}"),
    )
    info = read_export_info(out)
    seconds = _since(started)
    write_json_atomic(
        sidecar,
        {"key": key, "variant": variant.name, "onnx_sha256": info.onnx_sha256, "seconds": seconds},
    )
    ws.record(f"export {variant.name}", seconds, reused=False)
    return out, False


# --- test predictions ----------------------------------------------------------------------------------


@dataclass
class Predictions:
    scores: np.ndarray  # binary: positive-class probability; regression: the predicted score
    runtime: dict[str, Any]  # how they were made (backend, graph, ...)


def _cached_scores(path: Path, key: str) -> Predictions | None:
    meta = read_json(path.with_suffix(".json"))
    if not (isinstance(meta, dict) and meta.get("key") == key and path.exists()):
        return None
    try:
        with np.load(path) as data:
            return Predictions(np.asarray(data["scores"], dtype=np.float64), meta.get("runtime", {}))
    except (OSError, ValueError, KeyError):
        return None


def _save_scores(path: Path, key: str, found: Predictions) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, scores=found.scores)
    write_bytes_atomic(path, buffer.getvalue())
    write_json_atomic(path.with_suffix(".json"), {"key": key, "runtime": found.runtime})


def runtime_predictions(
    ws: Workspace, export_dir: Path, data: Examples, name: str, graph: str = "auto"
) -> Predictions:
    """`trt_runtime.pipeline("text-classification", dir, backend="onnxruntime", graph=graph)`.

    graph="auto" is what a user gets on the CPU (a qdq export runs as the derived CPU INT8 graph);
    graph="exported" runs model.onnx's Q/DQ graph as exported, i.e. the numerics TensorRT is given.
    """
    import trt_runtime
    from trt_runtime.backends.onnxruntime import cpu_int8
    from trt_runtime.contract.export_dir import read_export_info

    info = read_export_info(export_dir, verify_sha256=False)
    import onnxruntime

    key = digest(
        {
            "onnx": info.onnx_sha256,
            "examples": data.digest(),
            "ort": onnxruntime.__version__,
            "graph": graph,
            "runtime": 3,  # 3: the runtime record names the graph's kind (graph_kind)
            # the derived CPU INT8 graph's recipe: a new default recipe means new predictions
            "cpu_int8": cpu_int8.Recipe().tag if graph == "auto" and info.quantization == "qdq" else None,
        }
    )
    runtime_name = "onnxruntime" if graph == "auto" else f"onnxruntime-{graph}"
    path = ws.root / "predictions" / f"{name}.{runtime_name}.{data.split}.npz"
    cached = _cached_scores(path, key)
    if cached is not None:
        ws.record(f"test {name} ({runtime_name})", cached.runtime.get("seconds"), reused=True)
        return cached
    started = time.monotonic()
    pipe = trt_runtime.pipeline(
        "text-classification",
        export_dir,
        backend="onnxruntime",
        batch_size=ws.recipe.eval_batch_size,
        top_k=None,
        graph=graph,
        intra_op_num_threads=ws.threads,
    )
    runner = pipe.runner
    runtime = {
        "backend": runner.backend,
        "graph_option": graph,
        "graph_kind": runner.choice.graph,  # "exported", "cpu-int8", "cpu-integer", "cpu-float": the table's label
        "graph": runner.graph_path.name if runner.graph_path is not None else f"{runner.choice.graph} (in memory)",
        "graph_reason": runner.choice.graph_reason,
        "providers": list(getattr(runner, "providers", [])),
        "graph_optimization_level": getattr(runner, "graph_optimization_level", None),
        "onnxruntime": onnxruntime.__version__,
    }
    label = ws.task.labels[-1]  # binary: "positive"; regression: the one output
    order = sorted(range(len(data)), key=lambda i: len(data.texts[i]))  # chunks of similar length
    scores = np.zeros(len(data), dtype=np.float64)
    chunk = 256
    with tqdm(
        total=len(data),
        desc=f"test: {name} (ONNX Runtime)",
        unit="text",
        disable=not ws.progress,
        leave=False,
    ) as bar:
        for start in range(0, len(order), chunk):
            positions = order[start : start + chunk]
            results = pipe([data.texts[i] for i in positions])
            for position, ranked in zip(positions, results):
                scores[position] = next(item["score"] for item in ranked if item["label"] == label)
            bar.update(len(positions))
    runtime["seconds"] = _since(started)
    found = Predictions(scores, runtime)
    _save_scores(path, key, found)
    ws.record(f"test {name} ({runtime_name})", runtime["seconds"], reused=False)
    return found


def pytorch_predictions(
    ws: Workspace, variant: Variant, checkpoint: Path, export_dir: Path, data: Examples, name: str
) -> Predictions:
    """The exported model in PyTorch: the checkpoint with the export's calibration.json (fake quantization
    for qdq, eager integer arithmetic for integer), i.e. the numerics the ONNX graph was traced from."""
    import models
    from trt_runtime.contract.export_dir import read_export_info

    info = read_export_info(export_dir, verify_sha256=False)
    key = digest(
        {"onnx": info.onnx_sha256, "examples": data.digest(), "torch": torch.__version__, "runtime": 1}
    )
    path = ws.root / "predictions" / f"{name}.pytorch.{data.split}.npz"
    cached = _cached_scores(path, key)
    if cached is not None:
        ws.record(f"test {name} (pytorch)", cached.runtime.get("seconds"), reused=True)
        return cached
    started = time.monotonic()
    calibration = export_dir / "calibration.json"
    kwargs: dict[str, Any] = {}
    if variant.quantization != "none":
        if not calibration.exists():
            raise EvalError(f"{export_dir} has no calibration.json; re-export it (delete the directory)")
        kwargs["calibration"] = calibration
    if variant.quantization == "integer":
        wide = (info.calibration or {}).get("wide_activations")
        if wide is not None:
            kwargs["wide_activations"] = tuple(wide)
    model = models.load(checkpoint, task="text-classification", quantization=variant.quantization, **kwargs)
    logits = torch_logits(
        model,
        data.texts,
        ws.tokenizer,
        ws.recipe.eval_batch_size,
        eval_max_length(checkpoint),
        f"test: {name} (PyTorch)",
        ws.progress,
    )
    runtime = {
        "backend": "pytorch",
        "torch": torch.__version__,
        "calibration": "export's calibration.json",
        "seconds": _since(started),
    }
    found = Predictions(scores_from_logits(ws.task, logits), runtime)
    _save_scores(path, key, found)
    ws.record(f"test {name} (pytorch)", runtime["seconds"], reused=False)
    return found


def checkpoint_predictions(
    ws: Workspace, checkpoint: Path, quantization: str, data: Examples, name: str, checkpoint_key: str
) -> Predictions:
    """A (QAT) checkpoint in PyTorch as trained: its own amax / ranges, before the exporter recalibrates."""
    import models

    key = digest({"checkpoint": checkpoint_key, "examples": data.digest(), "torch": torch.__version__})
    path = ws.root / "predictions" / f"{name}.as-trained.{data.split}.npz"
    cached = _cached_scores(path, key)
    if cached is not None:
        ws.record(f"test {name} as trained (pytorch)", cached.runtime.get("seconds"), reused=True)
        return cached
    started = time.monotonic()
    model = models.load(checkpoint, task="text-classification", quantization=quantization)
    if quantization == "qdq":
        from models.quantization import named_quantizers, uncalibrated_quantizers

        # sites kept float during QAT were saved without amax: they stay float
        quantizers = named_quantizers(model)
        for quantizer_name in uncalibrated_quantizers(model):
            quantizers[quantizer_name].disable()
    logits = torch_logits(
        model,
        data.texts,
        ws.tokenizer,
        ws.recipe.eval_batch_size,
        eval_max_length(checkpoint),
        f"test: {name} as trained (PyTorch)",
        ws.progress,
    )
    found = Predictions(
        scores_from_logits(ws.task, logits),
        {
            "backend": "pytorch",
            "calibration": "the checkpoint's own (as trained)",
            "seconds": _since(started),
        },
    )
    _save_scores(path, key, found)
    ws.record(f"test {name} as trained (pytorch)", found.runtime["seconds"], reused=False)
    return found
