"""`models.load`: a Hugging Face checkpoint directory -> one of our task models, weights loaded and checked."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from models.architectures import FORCE_DEQUANT_VALUES, QUANTIZATION_MODES, Architecture, architecture_for
from models.errors import CheckpointError
from models.tasks import TASKS, TaskModel, task_class

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

# State that calibration produces or that is derived from the weights: absent from float checkpoints,
# so never "missing". (pytorch-quantization/QDQBERT `_amax`; SmoothQuant's per-channel divisors, which a
# smoothed checkpoint's weights carry; I-BERT's integer weights, scales and ranges.)
CALIBRATION_STATE_SUFFIXES = (
    "_amax",
    "_smoothing_scale",
    "weight_integer",
    "bias_integer",
    "fc_scaling_factor",
    "weight_scaling_factor",
    "act_scaling_factor",
    "x_min",
    "x_max",
    "shift",
)
# Non-persistent buffers that older transformers versions saved.
STALE_BUFFER_SUFFIXES = ("position_ids", "embeddings.token_type_ids")

# Hugging Face class name suffix -> task, to pick the task from config.json's `architectures`.
_CLASS_SUFFIX_TO_TASK = {
    "ForMaskedLM": "fill-mask",
    "LMHeadModel": "text-generation",
    "ForCausalLM": "text-generation",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMultipleChoice": "multiple-choice",
    "ForNextSentencePrediction": "next-sentence-prediction",
}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: a checkpoint directory needs config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-save the checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e}); re-save the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; re-save the checkpoint")
    return data


def load_config(path: str | os.PathLike) -> tuple[PretrainedConfig, Architecture]:
    """Read `config.json` and pick the architecture from its `model_type`."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass a Hugging Face checkpoint directory")
    config_path = directory / "config.json"
    raw = _read_json(config_path)
    if "model_type" not in raw:
        raise CheckpointError(f"{config_path} has no model_type; add one of bert, roberta, ibert, qdqbert, squeezebert")
    if not isinstance(raw["model_type"], str):
        raise CheckpointError(f"{config_path}: model_type must be a string, got {raw['model_type']!r}")
    try:
        arch = architecture_for(raw["model_type"], where=str(config_path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        config = arch.config_class.from_dict(fields)
    except Exception as e:  # transformers' config validation: a field of the wrong type or value
        raise CheckpointError(
            f"{config_path} has a value {arch.config_class.__name__} refuses ({type(e).__name__}: "
            f"{' '.join(str(e).split())}); fix config.json or re-save the checkpoint"
        ) from None
    activation = getattr(config, "hidden_act", None)
    if isinstance(activation, str) and activation not in ACT2FN:
        # transformers builds the layers with ACT2FN[config.hidden_act] (a bare KeyError for an unknown name)
        raise CheckpointError(
            f"{config_path}: hidden_act {activation!r} is not an activation transformers has; choose one of "
            f"{', '.join(sorted(ACT2FN))} (BERT checkpoints use 'gelu')"
        )
    # The tokenizer, not the model, decides the padding id in a few old configs; keep what the file says.
    return config, arch


def task_from_config(config: PretrainedConfig) -> str:
    for name in getattr(config, "architectures", None) or []:
        for suffix, task in _CLASS_SUFFIX_TO_TASK.items():
            if name.endswith(suffix):
                return task
    return "feature-extraction"


def default_quantization(config: PretrainedConfig, arch: Architecture) -> str:
    if arch.model_type == "qdqbert":
        return "qdq"
    if arch.model_type == "ibert" and getattr(config, "quant_mode", False):
        return "integer"
    return "none"


def read_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Weights of a checkpoint; safetensors preferred, pickles only through `torch.load(weights_only=True)`.

    pytorch_model.bin is read only when no safetensors file exists, and never unpickled in full: a file
    that needs anything but tensors and plain containers (a malicious `__reduce__`, a pickled module) is
    refused with CheckpointError, before any of its code runs.
    """
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name == "model.safetensors":
            return _load_safetensors(path), path
        if name == "model.safetensors.index.json":
            index = _read_json(path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{path} has no weight_map object of shard file names; re-save the checkpoint")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = directory / shard
                if Path(shard).name != shard or not shard_path.is_file():
                    raise CheckpointError(
                        f"{path} names the shard {shard!r}, which is not a file in {directory}; download the "
                        f"missing shard or re-save the checkpoint"
                    )
                state.update(_load_safetensors(shard_path))
            return state, path
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unpickling error names the offending global
            raise CheckpointError(
                f"{path}: cannot be loaded safely with torch.load(weights_only=True) ({_unpickling_reason(e)}). "
                f"Nothing in it was run: a pickle can execute code when loaded, so only tensors are read. "
                f"If you trust its source, convert it to model.safetensors"
            ) from None
        if not isinstance(loaded, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise CheckpointError(
                f"{path} holds a {type(loaded).__name__}, not a state dict of named tensors; save the model's "
                f"state_dict() (or model.safetensors) instead"
            )
        return dict(loaded), path
    raise CheckpointError(f"{directory} has no weights; expected one of: {', '.join(WEIGHT_FILES)}")


def _unpickling_reason(error: Exception) -> str:
    """The one line of torch's weights_only error that says what was refused (not its advice to unpickle)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    match = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", text)
    reason = match.group(1) if match else text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return reason.strip().rstrip(".")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError: truncated, not a safetensors file, bad header
        raise CheckpointError(
            f"{path} cannot be read as safetensors ({e}); the file is damaged or incomplete: download or "
            f"save the checkpoint again"
        ) from None


def _normalize_keys(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Checkpoints of a bare base model (`BertModel.save_pretrained`) have no `bert.` prefix; add it."""
    backbone_parts = ("embeddings.", "encoder.", "pooler.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(backbone_parts):
            key = f"{prefix}.{key}"
        out[key] = value
    return out


def _is_optional(key: str, suffixes: Iterable[str]) -> bool:
    return any(key == s or key.endswith("." + s) for s in suffixes)


def _summarize(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: TaskModel, state: Mapping[str, torch.Tensor], source: Path, init_missing_head: bool = False
) -> None:
    prefix = model.arch.prefix
    state = _normalize_keys(state, prefix)
    own = model.state_dict()
    top_level = {name for name, _ in model.named_children()}
    state = dict(state)
    for group in _tie_groups(model):  # a tied weight may be saved under any one of its names
        present = [k for k in group if k in state]
        for key in group:
            if present and key not in state:
                state[key] = state[present[0]]

    unexpected = []
    for key in state:
        if key in own or _is_optional(key, CALIBRATION_STATE_SUFFIXES + STALE_BUFFER_SUFFIXES):
            continue
        head = key.split(".", 1)[0]
        if head not in top_level or key.startswith(f"{prefix}.pooler."):
            continue  # another task's head (or a pooler this head does not use): ignored, as transformers does
        unexpected.append(key)
    missing = sorted(
        k
        for k in own
        if k not in state and not _is_optional(k, CALIBRATION_STATE_SUFFIXES)
    )
    head_missing = [k for k in missing if not k.startswith(prefix + ".")]
    if init_missing_head:
        if head_missing:
            logger.info("%s: new %s head initialized: %s", source, model.task, _summarize(head_missing))
        missing = [k for k in missing if k.startswith(prefix + ".")]
    if missing or unexpected:
        parts = [f"{source} does not fit {model.arch.description} for task {model.task!r}"]
        if missing:
            parts.append(f"missing keys: {_summarize(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarize(sorted(unexpected))}")
        only_head = bool(missing) and all(k in head_missing for k in missing) and not unexpected
        hint = (
            "pass init_missing_head=True to start a new head for fine-tuning"
            if only_head
            else "check that the checkpoint's config.json matches its weights and that the task is right"
        )
        raise CheckpointError("; ".join(parts), fix=hint, head_missing=only_head)

    converted: dict[str, list[str]] = {}
    with torch.no_grad():
        for key, value in state.items():
            if key not in own:
                continue
            target = own[key]
            if target.shape != value.shape:
                raise CheckpointError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the model built from config.json expects "
                    f"{tuple(target.shape)}; config.json and the weights disagree"
                )
            _check_weight(source, key, value, target, converted)
            target.copy_(value.to(target.dtype))
    for dtype, keys in converted.items():
        # transformers casts floating weights to the dtype asked for without a word (modeling_utils'
        # `param.to(dtype)` for floating parameters); we say it: an fp16/bf16 checkpoint is upcast losslessly,
        # a float64 one loses precision
        logger.warning(
            "%s: %d weight(s) stored as %s were converted to %s (%s)", source, len(keys), dtype,
            str(own[keys[0]].dtype).removeprefix("torch."), _summarize(keys),
        )
    load_quantization_state(model, state)


def _check_weight(
    source: Path, key: str, value: torch.Tensor, target: torch.Tensor, converted: dict[str, list[str]]
) -> None:
    """Refuse a weight that cannot be what the model computes with: an integer or bool tensor where the model
    has a floating one (a quantized or corrupted file, never a value to cast), or NaN/inf values (a diverged
    training run or a damaged file: the export's validation would report it as a bug of the export).
    A floating weight of another floating dtype is converted (noted in `converted`, warned once per dtype)."""
    if target.is_floating_point() and not value.is_floating_point():
        raise CheckpointError(
            f"{source}: {key} is stored as {str(value.dtype).removeprefix('torch.')}, the model computes it as "
            f"{str(target.dtype).removeprefix('torch.')}; a weight of another kind cannot be cast to it",
            fix="save the checkpoint with floating-point weights (model.save_pretrained of the float model)",
        )
    if value.is_floating_point():
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: {key} holds {bad} NaN or infinite value(s) of {value.numel()}; the model would compute "
                f"NaN",
                fix="the checkpoint is damaged or its training diverged: download, re-save or retrain it",
            )
        if value.dtype != target.dtype:
            converted.setdefault(str(value.dtype).removeprefix("torch."), []).append(key)


#: a smoothed qdq checkpoint's per-linear divisor (SmoothQuant; its weights are W diag(s))
_SMOOTHING_SUFFIX = "._input_quantizer._smoothing_scale"


def load_quantization_state(model: TaskModel, state: Mapping[str, torch.Tensor]) -> None:
    """Quantizer amax / I-BERT ranges stored in the checkpoint (QDQBERT, I-BERT quant_mode checkpoints)."""
    quant_state = {k: v for k, v in state.items() if _is_optional(k, CALIBRATION_STATE_SUFFIXES)}
    if model.quantization != "qdq":
        _unsmooth_weights(model, quant_state)
    if not quant_state or model.quantization == "none":
        return
    from models.quantization import load_quantization_state as load_into

    load_into(model, quant_state)


def _unsmooth_weights(model: TaskModel, state: Mapping[str, torch.Tensor]) -> None:
    """A smoothed qdq checkpoint (saved after QAT with SmoothQuant) loaded as float or integer: its weights are
    W diag(s) and only a qdq model divides its inputs by s, so divide the weights' columns by s here (the float
    function again, to float32 rounding)."""
    own = model.state_dict()
    folded = []
    for key, scale in state.items():
        if not key.endswith(_SMOOTHING_SUFFIX):
            continue
        weight = own.get(key.removesuffix(_SMOOTHING_SUFFIX) + ".weight")
        if weight is None or weight.shape[-1] != scale.numel():
            raise CheckpointError(
                f"{key}: a smoothing scale for no linear layer of this model",
                fix="load the checkpoint with quantization='qdq', the mode it was saved in",
            )
        with torch.no_grad():
            weight.div_(scale.to(weight.dtype).reshape(-1))
        folded.append(key.removesuffix(_SMOOTHING_SUFFIX))
    if folded:
        logger.info("smoothed checkpoint loaded as %s: SmoothQuant's scales folded back out of %d weights",
                    model.quantization, len(folded))


def _tie_groups(model: TaskModel) -> list[list[str]]:
    """Names that share one parameter (decoder weight tied to the embeddings, decoder.bias = bias)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load(
    path: str | os.PathLike,
    task: str | None = None,
    quantization: str | None = None,
    *,
    force_dequant: str | None = None,
    wide_activations: Iterable[str] | None = None,
    calibration: str | os.PathLike | None = None,
    init_missing_head: bool = False,
) -> TaskModel:
    """Load a Hugging Face checkpoint directory as one of our task models, in eval mode.

    task: one of `models.TASKS`; default: from config.json's `architectures`, else feature-extraction.
    quantization: "none" (float32), "qdq" (QDQBERT fake quantization) or "integer" (I-BERT integer-only);
        default: what the checkpoint is ("qdq" for qdqbert, "integer" for ibert with quant_mode=true).
    force_dequant: integer mode only; none, gelu, softmax, layernorm or nonlinear (as I-BERT's config).
    wide_activations: integer mode only; activation sites requantized to 16 instead of 8 bits
        (models.ibert.WIDE_ACTIVATION_SITES: "ffn-output-input", "hidden-states"; () is I-BERT's 8 bits
        everywhere); default: both, or () for an I-BERT checkpoint saved with quant_mode=true.
    calibration: a calibration.json to apply after loading (qdq: amax per quantizer; integer: ranges and
        shifts, whose force_dequant and wide_activations are the defaults of those two arguments).
    init_missing_head: start the task head from random weights when the checkpoint has none (fine-tuning).
    """
    directory = Path(path)
    config, arch = load_config(directory)
    task = task or task_from_config(config)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    quantization = quantization or default_quantization(config, arch)
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {quantization!r}")
    if calibration is not None and quantization == "integer":
        from models.quantization.integer.calibration import integer_settings

        force_dequant, wide_activations = integer_settings(calibration, force_dequant, wide_activations)
    if wide_activations is not None:
        from models.quantization.recipe import check_wide_activations

        wide_activations = check_wide_activations(wide_activations)
        if quantization != "integer" and wide_activations:
            raise ValueError("wide_activations applies to quantization='integer' only")
        config.wide_activations = wide_activations
    if force_dequant is not None:
        if force_dequant not in FORCE_DEQUANT_VALUES:
            raise ValueError(f"force_dequant must be one of {', '.join(FORCE_DEQUANT_VALUES)}, got {force_dequant!r}")
        if quantization != "integer" and force_dequant != "none":
            raise ValueError("force_dequant applies to quantization='integer' only")
        config.force_dequant = force_dequant
    # otherwise the integer model takes the checkpoint's settings (models.ibert.integer_settings_for)

    model = task_class(task, arch)(config, arch, quantization)
    state, source = read_state_dict(directory)
    load_weights(model, state, source, init_missing_head=init_missing_head)
    model.tie_weights()
    if calibration is not None:
        from models.quantization import load_calibration

        load_calibration(model, calibration)
    model.source_dir = directory
    return model.eval()
