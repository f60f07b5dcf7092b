"""`exporter.export`: a Hugging Face checkpoint directory -> the export directory of DESIGN.md.

Steps: load (models.load) -> calibrate (quantized modes) -> trace to ONNX (TorchScript exporter) ->
clean up (constant folding, Q/DQ laid out for TensorRT, `ibert` function bodies, names) -> shape
inference and onnx.checker -> export.json, metadata, checkpoint files -> validation in ONNX Runtime
against the PyTorch module -> the staged directory replaces the output.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

import models
from exporter import graph as graph_ops
from exporter import qdq
from exporter.directory import check_output_dir, copy_checkpoint_files, staged_directory
from exporter.errors import ExportError
from exporter.ibert_functions import add_ibert_functions
from exporter.integer_graph import name_integer_values
from exporter.sample_inputs import (
    Shape,
    Text,
    generated_feeds,
    load_tokenizer,
    tokenized_feeds,
    trace_shape,
    validation_shapes,
)
from exporter.signature import Signature, signature_of
from exporter.torch_export import MAX_OPSET, MIN_OPSET, WRAPPED, torchscript_export
from exporter.validation import TOLERANCES, compare, compare_integer, integer_validation_shapes, ort_runner
from models.architectures import Architecture, max_positions
from models.loading import task_from_config
from trt_runtime.contract.export_dir import CALIBRATION_JSON, EXPORT_JSON, ONNX_METADATA_KEY, ExportInfo
from trt_runtime.contract.files import sha256_file, write_json_atomic

Log = Callable[[str], None]
#: export.json's calibration "data" when no file was given / when the checkpoint has no tokenizer
SHIPPED_DATA = "calibration_data/calibration.txt (shipped)"
GENERATED_DATA = "generated token ids (the checkpoint has no tokenizer)"
#: qdq quantizer sites kept in float unless told otherwise (models.quantization.SENSITIVE_SITES): with
#: every site quantized, all-MiniLM-L6-v2's outlier features (FFN outputs up to ~200 where most values
#: are below 1) share one int8 scale per residual add, and sentence embeddings fall to ~0.83 cosine of
#: float for every calibrator; with these two kept float they reach 0.99 (docs/qdq.md).
DEFAULT_KEEP_FLOAT = ("residual-adds", "ffn-output-input")
#: the percentile that measured best on real text with DEFAULT_KEEP_FLOAT (docs/qdq.md)
DEFAULT_PERCENTILE = 99.999


@dataclass(frozen=True)
class CalibrationSettings:
    data: Path | None  # None: the shipped calibration_data/
    method: str
    percentile: float | None
    keep_float: tuple[str, ...]  # qdq: quantizer sites/patterns left in float
    num_samples: int
    batch_size: int
    max_length: int


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str | None = None,
    quantization: str = "none",
    calibration_data: str | os.PathLike | None = None,
    calibration_method: str | None = None,
    percentile: float | None = DEFAULT_PERCENTILE,
    keep_float: tuple[str, ...] | list[str] = DEFAULT_KEEP_FLOAT,
    opset: int = MIN_OPSET,
    num_calibration_samples: int = 512,
    calibration_batch_size: int = 16,
    calibration_max_length: int = 128,
    force_dequant: str | None = None,
    wide_activations: tuple[str, ...] | list[str] | None = None,
    validate: bool = True,
    log: Log | None = _stderr,
) -> Path:
    """Export the checkpoint in `model_dir` as `task` with `quantization` into `out_dir`; returns `out_dir`.

    calibration_method: qdq: max | percentile (default) | mse | entropy, or "percentile-99.9" to give the
        percentile in the name; integer: minmax (default) | ema (I-BERT's training rule). percentile: for
        "percentile".
    keep_float: qdq only: quantizer sites left in float, as names of models.quantization.SENSITIVE_SITES
        ("residual-adds", "ffn-output-input", "softmax-output"), fnmatch patterns or "re:" regexes;
        () quantizes every site (QDQBERT's full placement, best for TensorRT speed, worst for accuracy).
    force_dequant: integer mode only (I-BERT's none | gelu | softmax | layernorm | nonlinear).
    wide_activations: integer mode only: activation sites requantized to 16 instead of 8 bits,
        "ffn-output-input" and "hidden-states" (models.ibert.WIDE_ACTIVATION_SITES); () is I-BERT's 8 bits
        everywhere; None: the checkpoint's default (both; () for an I-BERT checkpoint with quant_mode=true).
    validate: compare ONNX Runtime with PyTorch at two batch sizes x two sequence lengths (raises
        ExportValidationError over tolerance; see exporter.validation).
    log: where step lines go (None: silent).
    """
    say = log or (lambda message: None)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config, arch = _load_config(model_dir)
    task = task or task_from_config(config)
    _check_choices(arch, task, quantization, force_dequant, opset)
    wide_activations = _check_wide_activations(quantization, wide_activations)
    calibration = None
    if quantization != "none":
        calibration = _calibration_settings(
            quantization, calibration_data, calibration_method, percentile, num_calibration_samples,
            calibration_batch_size, calibration_max_length, tuple(keep_float) if quantization == "qdq" else (),
        )
    check_output_dir(out_dir, model_dir)
    step = _Steps(say, 4 + (calibration is not None) + validate)

    step(f"loading {model_dir} as {arch.model_type} {task}, quantization={quantization}")
    model = models.load(
        model_dir, task=task, quantization=quantization, force_dequant=force_dequant, wide_activations=wide_activations
    )
    if quantization == "integer":
        wide = model.config.wide_activations
        say(f"  16-bit activations at: {', '.join(wide)}" if wide else "  8-bit activations everywhere (I-BERT's)")
    signature = signature_of(model)
    limit = max_positions(config, arch)
    tokenizer = load_tokenizer(model_dir)

    with staged_directory(out_dir) as staging, tempfile.TemporaryDirectory(prefix="onnx-raw-", dir=staging) as scratch:
        calibration_record = None
        if calibration is not None:
            step(f"calibrating ({_describe_method(calibration)})")
            calibration_record = _calibrate(model, signature, limit, tokenizer, calibration, staging, say)

        step(f"exporting to ONNX (opset {opset}, TorchScript exporter)")
        example = generated_feeds(signature, trace_shape(signature, limit), config.vocab_size, _pad_id(config))
        raw = torchscript_export(model, signature, example, Path(scratch) / "raw.onnx", opset)

        step("cleaning up the graph" + (" and laying out Q/DQ for TensorRT" if quantization == "qdq" else ""))
        onnx_model = _clean_up(raw, model, say)
        del raw

        info = _export_info(model, arch, signature, limit, calibration_record, onnx_model, opset)
        step("checking the graph and writing the directory")
        _set_metadata(onnx_model, info)
        onnx_path = graph_ops.save_model(onnx_model, staging)
        del onnx_model
        graph_ops.infer_shapes_and_check(onnx_path)
        _check_interface(onnx_path, signature)
        info.onnx_sha256 = sha256_file(onnx_path)
        write_json_atomic(staging / EXPORT_JSON, info.to_dict())
        copy_checkpoint_files(model_dir, staging)

        if validate:
            rule = "bit for bit" if quantization == "integer" else TOLERANCES[quantization].describe()
            step(f"validating in ONNX Runtime against PyTorch ({rule})")
            _validate(onnx_path, model, model_dir, signature, limit, tokenizer, calibration, say)
        say(f"wrote {out_dir}")
    return out_dir


def _export_info(
    model: models.TaskModel,
    arch: Architecture,
    signature: Signature,
    limit: int,
    calibration: dict[str, Any] | None,
    onnx_model: onnx.ModelProto,
    opset: int,
) -> ExportInfo:
    config, task, quantization = model.config, model.task, model.quantization
    return ExportInfo(
        architecture=arch.family,
        model_type=arch.model_type,
        task=task,
        quantization=quantization,
        force_dequant=config.force_dequant if quantization == "integer" else None,
        opset=opset,
        inputs=list(signature.inputs),
        outputs=list(signature.outputs),
        max_sequence_length=limit,
        vocab_size=int(config.vocab_size),
        type_vocab_size=int(config.type_vocab_size),
        pad_token_id=_pad_id(config),
        id2label=_labels(config, task),
        problem_type=getattr(config, "problem_type", None) if task == "text-classification" else None,
        calibration=calibration,
        custom_ops=graph_ops.custom_ops(onnx_model),
        tool_versions=_tool_versions(),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def _validate(
    onnx_path: Path,
    model: models.TaskModel,
    model_dir: Path,
    signature: Signature,
    limit: int,
    tokenizer: Any | None,
    calibration: CalibrationSettings | None,
    say: Log,
) -> None:
    """ONNX Runtime against `model` (raises ExportValidationError); quantized modes also log the runtime default."""
    if model.quantization == "integer":
        batches = _validation_batches(signature, limit, model.config, tokenizer, calibration, integer_validation_shapes)
        float_sites = model.config.force_dequant != "none"
        float_model = models.load(model_dir, task=model.task, quantization="none") if float_sites else None
        compare_integer(onnx_path, model, signature, batches, float_model, log=say)
        return
    batches = _validation_batches(signature, limit, model.config, tokenizer, calibration)
    quantized = model.quantization != "none"
    float_model = models.load(model_dir, task=model.task, quantization="none") if quantized else None
    compare(ort_runner(onnx_path), model, signature, batches, TOLERANCES[model.quantization], float_model, log=say)
    if quantized:
        say("  for information, with the runtime's default ONNX Runtime optimizations (int8 kernels, fusions):")
        diffs = compare(ort_runner(onnx_path, runtime_default=True), model, signature, batches, None, log=lambda _: None)
        for name in signature.output_names:
            worst = max(d.relative_l2 for d in diffs if d.output == name)
            say(f"  {name}: relative L2 error up to {worst:.3g}")


class _Steps:
    def __init__(self, say: Log, total: int):
        self.say, self.total, self.done, self.started = say, total, 0, time.monotonic()

    def __call__(self, text: str) -> None:
        self.done += 1
        self.say(f"[{self.done}/{self.total}, {time.monotonic() - self.started:.1f}s] {text}")


# --- arguments -------------------------------------------------------------------------------------------


def _load_config(model_dir: Path) -> tuple[Any, Architecture]:
    try:
        return models.load_config(model_dir)
    except models.CheckpointError as e:
        raise ExportError(f"--model: {e}") from None


def _check_choices(arch: Architecture, task: str, quantization: str, force_dequant: str | None, opset: int) -> None:
    if task not in models.TASKS:
        raise ExportError(f"unknown task {task!r}; choose one of: {', '.join(models.TASKS)}")
    task_cls = models.TASKS[task]
    if task_cls.model_types is not None and arch.model_type not in task_cls.model_types:
        raise ExportError(
            f"task {task!r} is not available for model_type {arch.model_type!r} "
            f"(it exists for {', '.join(task_cls.model_types)}); choose another task"
        )
    if quantization not in models.QUANTIZATION_MODES:
        raise ExportError(
            f"unknown quantization {quantization!r}; choose one of: {', '.join(models.QUANTIZATION_MODES)}"
        )
    if quantization not in arch.quantization_modes:
        raise ExportError(
            f"quantization {quantization!r} is not available for {arch.model_type}; "
            f"choose one of: {', '.join(arch.quantization_modes)}"
        )
    if force_dequant is not None:
        if quantization != "integer":
            raise ExportError("--force-dequant applies to --quantization integer only; drop it or use integer")
        if force_dequant not in models.FORCE_DEQUANT_VALUES:
            raise ExportError(
                f"unknown force_dequant {force_dequant!r}; choose one of: {', '.join(models.FORCE_DEQUANT_VALUES)}"
            )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")


def _check_wide_activations(
    quantization: str, wide_activations: tuple[str, ...] | list[str] | None
) -> tuple[str, ...] | None:
    if wide_activations is None:
        return None
    if quantization != "integer":
        raise ExportError("--wide-activations applies to --quantization integer only; drop it or use integer")
    from models.ibert import check_wide_activations

    try:
        return check_wide_activations(wide_activations)
    except ValueError as e:
        raise ExportError(str(e)) from None


def calibration_methods(quantization: str) -> tuple[str, ...]:
    """The calibration methods of a quantized mode, the default first."""
    if quantization == "integer":
        from models.quantization.integer.calibration import DEFAULT_METHOD as INTEGER_DEFAULT
        from models.quantization.integer.calibration import METHODS as INTEGER_METHODS

        return tuple(sorted(INTEGER_METHODS, key=lambda m: m != INTEGER_DEFAULT))
    from models.quantization.qdq.calibrate import METHODS

    return tuple(sorted(METHODS, key=lambda m: m != "percentile"))


def parse_calibration_method(quantization: str, method: str | None, percentile: float | None) -> tuple[str, float | None]:
    """"percentile-99.9" -> ("percentile", 99.9); None -> the mode's default; checked against the mode's methods."""
    methods = calibration_methods(quantization)
    name, dash, number = (method or methods[0]).partition("-")
    if name == "percentile" and dash:
        try:
            percentile = float(number)
        except ValueError:
            raise ExportError(f"calibration method {method!r}: expected percentile-<number>, e.g. percentile-99.99") from None
    if name not in methods or (dash and name != "percentile"):
        raise ExportError(
            f"calibration method {method!r} is not one of {quantization}'s: {', '.join(methods)}"
            + (" (or percentile-<number>)" if "percentile" in methods else "")
        )
    if name == "percentile" and (percentile is None or not (0.0 < percentile <= 100.0) or math.isnan(percentile)):
        raise ExportError(f"percentile must be in (0, 100], got {percentile!r}")
    return name, (percentile if name == "percentile" else None)


def _calibration_settings(
    quantization: str,
    data: str | os.PathLike | None,
    method: str | None,
    percentile: float | None,
    num_samples: int,
    batch_size: int,
    max_length: int,
    keep_float: tuple[str, ...],
) -> CalibrationSettings:
    method, percentile = parse_calibration_method(quantization, method, percentile)
    if data is not None and not Path(data).exists():
        raise ExportError(
            f"--calibration-data {data} does not exist; pass a .txt or .jsonl file or a directory of them "
            "(or leave it out to use the shipped calibration_data/)"
        )
    if num_samples < 1 or batch_size < 1 or max_length < 2:
        raise ExportError(
            f"calibration needs num_samples >= 1, batch_size >= 1 and max_length >= 2 "
            f"(got {num_samples}, {batch_size}, {max_length})"
        )
    return CalibrationSettings(
        Path(data) if data is not None else None, method, percentile, keep_float, num_samples, batch_size, max_length
    )


def _describe_method(settings: CalibrationSettings) -> str:
    if settings.percentile is not None:
        return f"{settings.method} {settings.percentile:g}, {settings.num_samples} samples"
    return f"{settings.method}, {settings.num_samples} samples"


# --- calibration -----------------------------------------------------------------------------------------


def _calibrate(
    model: models.TaskModel,
    signature: Signature,
    limit: int,
    tokenizer: Any | None,
    settings: CalibrationSettings,
    staging: Path,
    say: Log,
) -> dict[str, Any]:
    """Calibrate `model` in place, write calibration.json into `staging`; returns export.json's record."""
    from models.quantization import calibrate, save_calibration

    max_length = min(settings.max_length, limit)
    if tokenizer is None:
        if settings.data is not None:
            raise ExportError(
                f"--calibration-data needs the checkpoint's tokenizer, but {model.source_dir} has no tokenizer "
                "files (tokenizer.json, vocab.txt, ...); add them to the checkpoint"
            )
        say("  note: the checkpoint has no tokenizer: calibrating on generated token ids, which suits tests, "
            "not accuracy; add tokenizer files to calibrate on text")
        label = GENERATED_DATA
        batches = _generated_batches(signature, model.config, settings, max_length)
    else:
        from models.data import DataError, calibration_batches, load_texts

        try:
            texts = load_texts(settings.data)
        except DataError as e:
            raise ExportError(f"--calibration-data: {e}") from None
        label = str(settings.data) if settings.data is not None else SHIPPED_DATA
        batches = calibration_batches(
            texts, tokenizer, batch_size=settings.batch_size, max_length=max_length, num_samples=settings.num_samples
        )
    if model.quantization == "integer":
        _calibrate_integer(model, batches, settings, label, staging / CALIBRATION_JSON)
    else:
        if signature.has_choices:  # the multiple-choice head takes [batch, choices, sequence]: one choice each
            batches = [{k: v[:, None, :] for k, v in batch.items()} for batch in batches]
        kept = _keep_float(model, settings.keep_float)
        if kept:
            say(f"  {len(kept)} quantizers kept in float ({', '.join(settings.keep_float)})")
        calibrate(model, batches, method=settings.method, percentile=settings.percentile or DEFAULT_PERCENTILE, data=label)
        save_calibration(model, staging / CALIBRATION_JSON)
    num_samples = sum(int(batch["input_ids"].shape[0]) for batch in batches)
    record: dict[str, Any] = {"method": settings.method, "percentile": settings.percentile, "data": label}
    if model.quantization == "qdq":
        record["keep_float"] = list(settings.keep_float)
    else:
        record["wide_activations"] = list(model.config.wide_activations)
    record.update(num_samples=num_samples, max_length=max_length)
    return record


def _keep_float(model: models.TaskModel, patterns: tuple[str, ...]) -> list[str]:
    from models.quantization import keep_float

    if not patterns:
        return []
    try:
        return keep_float(model, patterns)
    except ValueError as e:
        raise ExportError(f"--keep-float: {e}") from None


def _calibrate_integer(
    model: models.TaskModel, batches: list[dict[str, torch.Tensor]], settings: CalibrationSettings, label: str, path: Path
) -> None:
    """I-BERT's activation ranges and LayerNorm shifts, saved as an integer calibration.json
    (`models.load(..., quantization="integer", calibration=path)` takes them back)."""
    from models.quantization import calibrate_integer, save_integer_calibration

    calibrate_integer(model, batches, method=settings.method, data=label, progress=True)
    save_integer_calibration(model, path)


def _generated_batches(
    signature: Signature, config: Any, settings: CalibrationSettings, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """[batch, sequence] batches of generated ids (multiple choice too: the caller adds the choices axis)."""
    count = -(-settings.num_samples // settings.batch_size)
    batches = []
    for index in range(count):
        rows = min(settings.batch_size, settings.num_samples - index * settings.batch_size)
        feeds = generated_feeds(signature, Shape(rows, max_length), config.vocab_size, _pad_id(config), seed=100 + index)
        batches.append({name: torch.from_numpy(value) for name, value in feeds.items()})
    return batches


# --- graph -----------------------------------------------------------------------------------------------


def _clean_up(raw: onnx.ModelProto, model: models.TaskModel, say: Log) -> onnx.ModelProto:
    graph = gs.import_onnx(graph_ops.with_types(raw))
    graph_ops.strip_wrapper_prefix(graph, WRAPPED)
    graph_ops.fold_and_prune(graph)
    if model.quantization == "qdq":
        summary = qdq.layout_for_tensorrt(graph)
        say(
            f"  Q/DQ: {summary.weights} weights stored as int8 + DequantizeLinear "
            f"({summary.transposes_folded} MatMul transposes folded in), {summary.activation_pairs} activation "
            f"Q/DQ pairs ({summary.merged_pairs} duplicates merged)"
        )
        qdq.check_counts(summary, *_enabled_quantizers(model))
        if summary.unfused:
            say(f"  note: TensorRT cannot fuse these DequantizeLinear into a consumer: {', '.join(summary.unfused)}")
    graph_ops.name_anonymous_tensors(graph)
    graph_ops.name_nodes(graph)
    onnx_model = gs.export_onnx(graph)
    used = add_ibert_functions(onnx_model)
    if model.quantization == "integer":
        from models.quantization.integer.modules import integer_module_names

        named = name_integer_values(onnx_model, integer_module_names(model))
        counts = {op: sum(n.op_type == op for n in onnx_model.graph.node) for op in used}
        say(f"  integer graph: {', '.join(f'{n} {op}' for op, n in counts.items())}; {len(named)} integer values "
            "named after their modules")
    onnx_model.producer_name = "qbert-deploy exporter"
    onnx_model.producer_version = _version("qbert-deploy")
    return onnx_model


def _enabled_quantizers(model: models.TaskModel) -> tuple[int, int]:
    """(weight, activation) quantizers that fake-quantize in `model` (qdq mode)."""
    from models.quantization import named_quantizers
    from models.quantization.qdq.quantized_model import weight_of

    enabled = [name for name, q in named_quantizers(model).items() if q.is_quant_enabled]
    weights = sum(weight_of(model, name) is not None for name in enabled)
    return weights, len(enabled) - weights


def _set_metadata(model: onnx.ModelProto, info: ExportInfo) -> None:
    data = info.to_dict()
    data.pop("onnx_sha256")
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(data, sort_keys=False)})


def _check_interface(path: Path, signature: Signature) -> None:
    """The saved graph's inputs and outputs are the signature: names, order, dtypes, named dynamic dims."""
    model = onnx.load(str(path), load_external_data=False)
    for kind, values, specs in (
        ("input", model.graph.input, signature.inputs),
        ("output", model.graph.output, signature.outputs),
    ):
        got = [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name, _dims(v)) for v in values]
        expected = [(s.name, s.dtype, tuple(s.shape)) for s in specs]
        if got != expected:
            raise RuntimeError(f"exported graph {kind}s {got} differ from the signature {expected}: a bug in the exporter")


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim)


# --- validation inputs -----------------------------------------------------------------------------------


def _validation_batches(
    signature: Signature, limit: int, config: Any, tokenizer: Any | None, calibration: CalibrationSettings | None,
    shapes: Callable[[Signature, int], list[Shape]] = validation_shapes,
) -> list[tuple[Shape, dict[str, np.ndarray]]]:
    texts = _validation_texts(calibration) if tokenizer is not None else None
    batches = []
    for index, shape in enumerate(shapes(signature, limit)):
        if texts and shape.sequence == 1:  # text needs [CLS] [SEP]: its first token alone is the 1-token input
            longer = tokenized_feeds(tokenizer, texts[index:] + texts[:index], signature, replace(shape, sequence=2))
            feeds = {name: np.ascontiguousarray(value[..., :1]) for name, value in longer.items()}
        elif texts:
            feeds = tokenized_feeds(tokenizer, texts[index:] + texts[:index], signature, shape)
        else:
            feeds = generated_feeds(signature, shape, config.vocab_size, _pad_id(config), seed=index + 1)
        batches.append((shape, feeds))
    return batches


def _validation_texts(calibration: CalibrationSettings | None) -> list[Text] | None:
    """Calibration text (the shipped corpus for float exports); None (generated ids) when there is none."""
    from models.data import DataError, load_texts

    try:
        return list(load_texts(calibration.data if calibration else None))
    except DataError:
        return None


# --- export.json fields ----------------------------------------------------------------------------------


def _pad_id(config: Any) -> int:
    return int(config.pad_token_id) if getattr(config, "pad_token_id", None) is not None else 0


def _labels(config: Any, task: str) -> dict[str, str] | None:
    if task not in ("text-classification", "token-classification"):
        return None
    return {str(k): str(v) for k, v in sorted(config.id2label.items(), key=lambda kv: int(kv[0]))}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "qbert-deploy": _version("qbert-deploy")}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy"):
        versions[name] = _version(name)
    return versions
