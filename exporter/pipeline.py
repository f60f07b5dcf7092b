"""`exporter.export`: a Hugging Face checkpoint directory -> the export directory of DESIGN.md.

Steps: load (models.load) -> calibrate (quantized modes) -> trace to ONNX (TorchScript exporter) ->
clean up (constant folding, Q/DQ laid out for TensorRT, `ibert` function bodies, names) -> shape
inference and onnx.checker -> export.json, metadata, checkpoint files -> validation in ONNX Runtime
against the PyTorch module -> the staged directory replaces the output.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
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
from exporter.options import MIN_OPSET, check_opset, resolve_task
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
from exporter.torch_export import WRAPPED, torchscript_export
from exporter.validation import TOLERANCES, compare, compare_integer, integer_validation_shapes, ort_runner
from models.architectures import Architecture, max_positions
from models.loading import task_from_config
from models.quantization import Calibrated, QuantizationRecipe, RecipeError
from models.quantization.recipe import DEFAULT_KEEP_FLOAT, DEFAULT_PERCENTILE, GENERATED_DATA_LABEL
from trt_runtime.contract.export_dir import CALIBRATION_JSON, EXPORT_JSON, ONNX_METADATA_KEY, ExportInfo
from trt_runtime.contract.files import sha256_file, write_json_atomic
from trt_runtime.contract.int8_share import int8_share, summary_line

Log = Callable[[str], None]
#: export()'s keyword arguments before the recipe -> the recipe field each one sets. The first three are
#: DESIGN.md's documented call and stay as shorthand; the others still work, with a DeprecationWarning
#: (one way to say the rest: recipe=QuantizationRecipe(...))
RECIPE_KEYWORDS = {
    "calibration_data": "calibration_data",
    "calibration_method": "calibration_method",
    "percentile": "percentile",
    "keep_float": "keep_float",
    "num_calibration_samples": "num_samples",
    "calibration_batch_size": "batch_size",
    "calibration_max_length": "max_length",
    "force_dequant": "force_dequant",
    "wide_activations": "wide_activations",
}
SHORTHAND_KEYWORDS = ("calibration_data", "calibration_method")
#: deprecated names, kept importable for one release: the recipe owns these defaults now
__all__ = ["DEFAULT_KEEP_FLOAT", "DEFAULT_PERCENTILE", "export"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str | None = None,
    recipe: QuantizationRecipe | str | None = None,
    opset: int = MIN_OPSET,
    validate: bool = True,
    log: Log | None = _stderr,
    *,
    quantization: str | None = None,
    **recipe_keywords: Any,
) -> Path:
    """Export the checkpoint in `model_dir` as `task`, quantized as `recipe` says, into `out_dir`; returns `out_dir`.

    task: one of trt_runtime.contract.export_dir.TASKS, a synonym of optimum's or transformers' ("sequence-
        classification", "sentiment-analysis", "masked-lm", ...: trt_runtime.contract.tasks), or None / "auto":
        from config.json's architectures, else feature-extraction.
    recipe: a models.quantization.QuantizationRecipe (mode, calibration method and data, kept-float sites,
        integer options; every default is its), or a mode name ("none", "qdq", "integer") for that mode's
        default recipe; None: float.
    quantization, calibration_data, calibration_method: DESIGN.md's shorthand for a recipe of that mode with
        those fields (`exporter.export(ckpt, out, quantization="qdq", calibration_method="percentile")`).
        The other keyword arguments of 0.1 (percentile, keep_float, num_calibration_samples,
        calibration_batch_size, calibration_max_length, force_dequant, wide_activations) still build the
        recipe, with a DeprecationWarning; none of them can be combined with `recipe=`.
    opset: ONNX opset, exporter.options.MIN_OPSET to MAX_OPSET.
    validate: compare ONNX Runtime with PyTorch at two batch sizes x two sequence lengths (raises
        ExportValidationError over tolerance; see exporter.validation).
    log: where step lines go (None: silent).
    """
    say = log or (lambda message: None)
    recipe = _recipe_of(recipe, quantization, recipe_keywords)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config, arch = _load_config(model_dir)
    task = resolve_task(task) or task_from_config(config)
    _check_choices(arch, task, recipe.mode, opset)
    try:
        recipe.check_calibration_data()
    except RecipeError as e:
        raise ExportError(str(e)) from None
    quantization = recipe.mode
    check_output_dir(out_dir, model_dir, recipe.calibration_data)
    calibrating = quantization != "none"
    step = _Steps(say, 4 + calibrating + validate)

    step(f"loading {model_dir} as {arch.model_type} {task}, quantization={quantization}")
    try:
        model = models.load(
            model_dir, task=task, quantization=quantization, force_dequant=recipe.force_dequant,
            wide_activations=recipe.wide_activations,
        )
    except models.CheckpointError as e:
        if not e.head_missing:
            raise
        # models.load's fix (init_missing_head=True) would export a random head: the exporter offers none
        raise models.CheckpointError(
            e.problem,
            fix=f"the checkpoint has no trained {task} head: export the task it was trained for (--task auto "
            f"reads it from config.json's architectures: {task_from_config(config)}), or fine-tune the head "
            f"first and export that checkpoint",
        ) from None
    if quantization == "integer":
        wide = model.config.wide_activations
        say(f"  widened activations at: {', '.join(wide)} (16 bits; softmax-output 14)" if wide else "  8-bit activations everywhere (I-BERT's)")
    signature = signature_of(model)
    limit = max_positions(config, arch)
    tokenizer = load_tokenizer(model_dir)

    with staged_directory(out_dir) as staging, tempfile.TemporaryDirectory(prefix="onnx-raw-", dir=staging) as scratch:
        calibration_record = None
        if calibrating:
            recipe = recipe.fitted(limit)
            step(f"calibrating ({recipe.describe()})")
            calibration_record = _calibrate(model, signature, tokenizer, recipe, staging, say).record()

        step(f"exporting to ONNX (opset {opset}, TorchScript exporter)")
        example = generated_feeds(signature, trace_shape(signature, limit), config.vocab_size, _pad_id(config))
        raw = torchscript_export(model, signature, example, Path(scratch) / "raw.onnx", opset)

        step("cleaning up the graph" + (" and laying out Q/DQ for TensorRT" if quantization == "qdq" else ""))
        onnx_model = _clean_up(raw, model, say)
        del raw

        info = _export_info(model, arch, signature, limit, calibration_record, onnx_model, opset)
        info.int8_share = int8_share(onnx_model).to_dict()
        say(f"  {summary_line(info.int8_share)}")
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
            _validate(onnx_path, model, model_dir, signature, limit, tokenizer, recipe, say)
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
    recipe: QuantizationRecipe,
    say: Log,
) -> None:
    """ONNX Runtime against `model` (raises ExportValidationError); quantized modes also log the runtime default."""
    if model.quantization == "integer":
        batches = _validation_batches(signature, limit, model.config, tokenizer, recipe, integer_validation_shapes)
        float_sites = model.config.force_dequant != "none"
        float_model = models.load(model_dir, task=model.task, quantization="none") if float_sites else None
        compare_integer(onnx_path, model, signature, batches, float_model, log=say)
        return
    batches = _validation_batches(signature, limit, model.config, tokenizer, recipe)
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


def _check_choices(arch: Architecture, task: str, quantization: str, opset: int) -> None:
    if task not in models.TASKS:
        raise ExportError(f"unknown task {task!r}; choose one of: {', '.join(models.TASKS)}")
    task_cls = models.TASKS[task]
    if task_cls.model_types is not None and arch.model_type not in task_cls.model_types:
        raise ExportError(
            f"task {task!r} is not available for model_type {arch.model_type!r} "
            f"(it exists for {', '.join(task_cls.model_types)}); choose another task"
        )
    if quantization not in arch.quantization_modes:
        raise ExportError(
            f"quantization {quantization!r} is not available for {arch.model_type}; "
            f"choose one of: {', '.join(arch.quantization_modes)}"
        )
    check_opset(opset)


def _recipe_of(
    recipe: QuantizationRecipe | str | None, quantization: str | None, keywords: dict[str, Any]
) -> QuantizationRecipe:
    """The recipe export() was given, or the one its 0.1 keyword arguments describe."""
    unknown = sorted(set(keywords) - set(RECIPE_KEYWORDS))
    if unknown:
        raise TypeError(
            f"export() got unexpected keyword argument(s) {', '.join(unknown)}; it takes task, recipe, opset, "
            f"validate, log, quantization and (0.1's) {', '.join(RECIPE_KEYWORDS)}"
        )
    if isinstance(recipe, QuantizationRecipe):
        if quantization is not None or keywords:
            given = ", ".join(["quantization"] * (quantization is not None) + sorted(keywords))
            raise ExportError(
                f"pass the quantization settings either as recipe= or as keyword arguments, not both (got recipe= "
                f"and {given}); put them in the recipe: recipe.replace(...)"
            )
        return recipe
    if recipe is not None and not isinstance(recipe, str):
        raise ExportError(f"recipe must be a QuantizationRecipe or a mode name, got {type(recipe).__name__}")
    if recipe is not None and quantization is not None and recipe != quantization:
        raise ExportError(f"recipe={recipe!r} and quantization={quantization!r} disagree; give one mode")
    mode = recipe or quantization or "none"
    deprecated = sorted(k for k in keywords if k not in SHORTHAND_KEYWORDS)
    if deprecated:
        warnings.warn(
            f"exporter.export's keyword argument(s) {', '.join(deprecated)} are deprecated: pass "
            "recipe=models.quantization.QuantizationRecipe(mode=..., ...) instead (docs/export.md)",
            DeprecationWarning,
            stacklevel=3,
        )
    try:
        return QuantizationRecipe(mode=mode, **_fields_0_1_meant(mode, keywords))
    except RecipeError as e:
        raise ExportError(str(e)) from None


def _fields_0_1_meant(mode: str, keywords: dict[str, Any]) -> dict[str, Any]:
    """Recipe fields from 0.1's keyword arguments, leaving out those 0.1 ignored: calibration settings of a
    float export, qdq's percentile and keep_float in integer mode, a percentile for a method that has none
    or that names its own ("percentile-99.9"). force_dequant and wide_activations outside integer mode were
    errors then and are now."""
    fields = {RECIPE_KEYWORDS[k]: v for k, v in keywords.items() if v is not None}
    ignored: set[str] = set()
    if mode == "none":
        ignored = set(RECIPE_KEYWORDS.values()) - {"force_dequant", "wide_activations"}
    elif mode == "integer":
        ignored = {"percentile", "keep_float"}
    elif fields.get("calibration_method") not in (None, "percentile"):
        ignored = {"percentile"}
    return {k: v for k, v in fields.items() if k not in ignored}


# --- calibration -----------------------------------------------------------------------------------------


def _calibrate(
    model: models.TaskModel,
    signature: Signature,
    tokenizer: Any | None,
    recipe: QuantizationRecipe,
    staging: Path,
    say: Log,
) -> Calibrated:
    """Calibrate `model` in place as `recipe` says and write calibration.json into `staging`."""
    from models.data import DataError
    from models.quantization import calibrate_model, recipe_batches, save_model_calibration

    data = None
    if tokenizer is None:
        if recipe.calibration_data is not None:
            raise ExportError(
                f"--calibration-data needs the checkpoint's tokenizer, but {model.source_dir} has no tokenizer "
                "files (tokenizer.json, vocab.txt, ...); add them to the checkpoint"
            )
        say("  note: the checkpoint has no tokenizer: calibrating on generated token ids, which suits tests, "
            "not accuracy; add tokenizer files to calibrate on text")
        data = GENERATED_DATA_LABEL
        batches = _generated_batches(signature, model.config, recipe)
    else:
        try:
            batches = recipe_batches(recipe, tokenizer)
        except DataError as e:
            raise ExportError(f"--calibration-data: {e}") from None
    try:
        done = calibrate_model(model, batches, recipe, data=data)
    except RecipeError as e:  # a --keep-float pattern that matches no quantizer of this model
        raise ExportError(str(e)) from None
    if done.kept_float:
        say(f"  {len(done.kept_float)} quantizers kept in float ({', '.join(recipe.keep_float or ())})")
    save_model_calibration(model, staging / CALIBRATION_JSON, done)
    return done


def _generated_batches(signature: Signature, config: Any, recipe: QuantizationRecipe) -> list[dict[str, torch.Tensor]]:
    """[batch, sequence] batches of generated ids (multiple choice too: calibrate_model adds the choices axis)."""
    num_samples, batch_size, max_length = int(recipe.num_samples or 1), int(recipe.batch_size or 1), int(recipe.max_length or 2)
    batches = []
    for index in range(-(-num_samples // batch_size)):
        rows = min(batch_size, num_samples - index * batch_size)
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
        from models.quantization import quantizer_counts

        counts = quantizer_counts(model)
        qdq.check_counts(summary, counts.weights, counts.activations)
        if summary.unfused:
            say(f"  note: TensorRT cannot fuse these DequantizeLinear into a consumer: {', '.join(summary.unfused)}")
    graph_ops.name_anonymous_tensors(graph)
    graph_ops.name_nodes(graph)
    onnx_model = gs.export_onnx(graph)
    used = add_ibert_functions(onnx_model)
    if model.quantization == "integer":
        from models.quantization.integer.modules import integer_module_names

        named = name_integer_values(onnx_model, integer_module_names(model))
        op_counts = {op: sum(n.op_type == op for n in onnx_model.graph.node) for op in used}
        say(f"  integer graph: {', '.join(f'{n} {op}' for op, n in op_counts.items())}; {len(named)} integer values "
            "named after their modules")
    # As torch's exporter writes them (it made this graph; our passes keep its op-by-op structure), because
    # onnxruntime.transformers' optimizer (optimum's ORTOptimizer) checks the producer against its model
    # type's, "pytorch" for bert/roberta (onnxruntime/transformers/optimizer.py MODEL_TYPES). Who exported it
    # with what is in the export.json copy in metadata_props (`_set_metadata`: tool_versions).
    onnx_model.producer_name = "pytorch"
    onnx_model.producer_version = torch.__version__
    return onnx_model


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
    signature: Signature, limit: int, config: Any, tokenizer: Any | None, recipe: QuantizationRecipe,
    shapes: Callable[[Signature, int], list[Shape]] = validation_shapes,
) -> list[tuple[Shape, dict[str, np.ndarray]]]:
    texts = _validation_texts(recipe) if tokenizer is not None else None
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


def _validation_texts(recipe: QuantizationRecipe) -> list[Text] | None:
    """Calibration text (the shipped corpus for float exports); None (generated ids) when there is none."""
    from models.data import DataError, load_texts

    try:
        return list(load_texts(recipe.calibration_data))
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
