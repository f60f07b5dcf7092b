"""`QuantizationRecipe`: every setting that decides how a model is quantized, with its defaults, in one place.

    from models.quantization.recipe import QuantizationRecipe

    recipe = QuantizationRecipe.default("qdq")           # percentile 99.999, SmoothQuant auto, residual adds float
    recipe = QuantizationRecipe(mode="qdq", calibration_method="max", num_samples=128)
    recipe = recipe.replace(keep_float=())               # QDQBERT's full placement
    exporter.export("ckpt", "out", recipe=recipe)
    recipe.to_dict()    # what export.json ("calibration") and calibration.json ("recipe") record
    QuantizationRecipe.from_dict(info.calibration)       # ... and back: the recipe that export was made with

The exporter (`python -m exporter`), the calibrate command (`python -m models.quantization.calibrate`),
`benchmarks/eval` and the Makefile all take the recipe from here, so a default changes in one line and the
command-line flags are generated from the fields (`add_arguments`, `from_args`). Fields that do not apply
to the mode stay None (a qdq option with `mode="integer"` is an error, not silently ignored); fields left
None get the mode's default. Standard library only, so the command lines parse and check their arguments
before torch is imported.

Adding a setting (SmoothQuant's migration strength, say): one field with its `_option(...)` metadata (flag,
help, the modes it applies to, its key in the records), its check in `__post_init__`, and, if another
field's default depends on it, an entry in `_DEPENDENT`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from models.quantization.errors import RecipeError
from trt_runtime.contract.export_dir import QUANTIZATION_MODES

QUANTIZED_MODES = ("qdq", "integer")
#: calibration methods of each quantized mode, the default first. qdq: pytorch-quantization's calibrators
#: (activations; weights always take max per output channel); integer: I-BERT's range rules ("minmax": a
#: running min/max, measured better for post-training calibration; "ema": Hugging Face's training-mode
#: moving average), docs/integer.md
CALIBRATION_METHODS: dict[str, tuple[str, ...]] = {
    "qdq": ("percentile", "max", "mse", "entropy"),
    "integer": ("minmax", "ema"),
}
#: the percentile of the "percentile" method. 99.999 measured best on real text with DEFAULT_KEEP_FLOAT_UNSMOOTHED
#: (all-MiniLM-L6-v2 sentence cosine to float 0.990, against 0.964 at 99.99: docs/qdq.md, "Accuracy"; measured
#: before smoothing was the default, not re-measured with it);
#: pytorch-quantization's own default, 99.99, is kept only by the low-level calibrator API
#: (`HistogramCalibrator.compute_amax`, `TensorQuantizer.load_calib_amax`), for its callers
DEFAULT_PERCENTILE = 99.999

# qdq quantizer sites that can stay float (`keep_float`), as fnmatch patterns or "re:" + a regex over
# quantizer names (models.quantization.qdq.quantized_model)
#: input of the FFN output projection: the GELU output, with a long one-sided tail
FFN_OUTPUT_INPUT = r"re:.*\.layers?\.\d+\.output\.(dense|conv1d)\._input_quantizer"
#: the softmax output (attention probabilities) entering the second attention matmul
SOFTMAX_OUTPUT = "*.matmul_a_input_quantizer"
#: both inputs of every residual add
RESIDUAL_ADDS = "*.add_*_input_quantizer"
#: QDQBERT's accuracy-sensitive sites by name, for `keep_float`
#: SqueezeBERT's FFN output projection input (a grouped 1x1 convolution's), which smoothing does not reach
CONV_FFN_OUTPUT_INPUT = r"re:.*\.layers?\.\d+\.output\.conv1d\._input_quantizer"
SENSITIVE_SITES = {
    "ffn-output-input": FFN_OUTPUT_INPUT, "conv-ffn-output-input": CONV_FFN_OUTPUT_INPUT,
    "softmax-output": SOFTMAX_OUTPUT, "residual-adds": RESIDUAL_ADDS,
}
#: qdq's default migration: SmoothQuant-style smoothing with alpha chosen per site on the calibration data
#: (models.quantization.smoothing); "none" turns it off
DEFAULT_SMOOTHING = "auto"
#: qdq sites kept in float by default, with smoothing (the default): both inputs of every residual add, so
#: every linear GEMM and both attention matmuls are INT8 (all-MiniLM-L6-v2: sentence cosine to float 0.997;
#: `make eval` binary accuracy: docs/eval.md), and SqueezeBERT's FFN output convolution's input, which smoothing
#: does not reach. With every site quantized, all-MiniLM-L6-v2's outlier features (FFN outputs up to ~200 where
#: most values are below 1) share one int8 scale per residual add, and sentence embeddings fall to ~0.83 cosine
#: of float for every calibrator (docs/qdq.md)
DEFAULT_KEEP_FLOAT = ("residual-adds", "conv-ffn-output-input")
#: ... and without smoothing (`smoothing="none"`): the FFN output projection's input too (its GELU outliers
#: cost 0.014 of cosine unsmoothed), the default before smoothing was: 66.7 % of the linear GEMM work INT8
DEFAULT_KEEP_FLOAT_UNSMOOTHED = ("residual-adds", "ffn-output-input")

#: I-BERT's force_dequant: which integer nonlinearities run in float
FORCE_DEQUANT_VALUES = ("none", "gelu", "softmax", "layernorm", "nonlinear")
#: integer activation sites that can be requantized to more than 8 bits, in canonical order (which modules
#: each one widens is models.ibert.WIDE_ACTIVATION_SITES): QuantActs to 16 bits, and the softmax output to 14
#: (probabilities 0..2**14, the widest the probabilities x V GEMM of two 8-bit digits takes)
WIDE_ACTIVATION_SITE_NAMES = ("ffn-input", "ffn-output-input", "hidden-states", "softmax-output")
#: the widened sites of checkpoints calibrated here: all of them (`make eval`'s binary dev split, integer PTQ
#: vs float: RMS logit-margin change 0.062 and 1.0 % of predictions flipped, against 0.158 and 2.1 % with the
#: previous default; test split -0.3 against -0.7 points; all-MiniLM-L6-v2 sentence cosine 0.9958 against
#: 0.9823: docs/integer.md "Accuracy on labels"); `wide_activations=None` means this, except for I-BERT
#: checkpoints saved with quant_mode=true, which keep I-BERT's 8 bits (their ranges were trained with them)
DEFAULT_WIDE_ACTIVATIONS = WIDE_ACTIVATION_SITE_NAMES
#: the default before "ffn-input" and "softmax-output" existed (all-MiniLM-L6-v2 sentence cosine 0.983)
PREVIOUS_WIDE_ACTIVATIONS = ("ffn-output-input", "hidden-states")

DEFAULT_NUM_SAMPLES = 512
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 128  # tokens per calibration sample (never past the model's position embeddings)

#: how the records name the calibration data when the recipe gives none: the shipped corpus, or (a
#: checkpoint without a tokenizer) generated token ids
SHIPPED_DATA_LABEL = "calibration_data/calibration.txt (shipped)"
GENERATED_DATA_LABEL = "generated token ids (the checkpoint has no tokenizer)"
#: labels that mean "no data given" when a record is read back (the last: calibration files before 0.2)
_DEFAULT_DATA_LABELS = (SHIPPED_DATA_LABEL, GENERATED_DATA_LABEL, "calibration_data/calibration.txt")


@dataclass(frozen=True)
class _Option:
    """How a recipe field appears on command lines and in records."""

    flags: tuple[str, ...]
    help: str
    modes: tuple[str, ...]  # the modes the field applies to
    key: str  # its name in to_dict() (export.json's "calibration", calibration.json's "recipe")
    type: Any = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    repeatable: bool = False  # action="append"; the field is a tuple
    none_word: str | None = None  # repeatable: this value, alone, gives () ("--wide-activations none")
    empty_flag: tuple[str, str] | None = None  # repeatable: (flag, help) of a switch that gives () instead

    def names(self) -> str:
        return " / ".join(self.flags + ((self.empty_flag[0],) if self.empty_flag else ()))


def _option(**kwargs: Any) -> Any:
    return field(default=None, metadata={"option": _Option(**kwargs)})


def _methods_help() -> str:
    qdq, integer = CALIBRATION_METHODS["qdq"], CALIBRATION_METHODS["integer"]
    return (
        f"qdq: {qdq[0]} (default) | {' | '.join(qdq[1:])}, or percentile-99.9 to give the percentile in the name; "
        f"integer: {integer[0]} (default) | {' | '.join(integer[1:])} (I-BERT's moving average)"
    )


@dataclass(frozen=True)
class QuantizationRecipe:
    """How to quantize: the mode, its calibration and its options. Construct with keywords; None = default.

    mode: "none" (float32), "qdq" (QDQBERT fake quantization) or "integer" (I-BERT integer-only).
    calibration_method: `CALIBRATION_METHODS[mode]` (default: the first), or "percentile-<p>".
    percentile: qdq, for the "percentile" method (default DEFAULT_PERCENTILE).
    smoothing: qdq: SmoothQuant-style migration strength, "auto" or "none" (default DEFAULT_SMOOTHING;
        models.quantization.smoothing).
    keep_float: qdq: quantizer sites left in float: names of SENSITIVE_SITES, fnmatch patterns over quantizer
        names, or "re:" + a regex (default DEFAULT_KEEP_FLOAT, or DEFAULT_KEEP_FLOAT_UNSMOOTHED with smoothing
        "none"); () quantizes every site (QDQBERT's placement).
    force_dequant: integer: I-BERT's FORCE_DEQUANT_VALUES (None: the checkpoint's, else "none").
    wide_activations: integer: WIDE_ACTIVATION_SITE_NAMES requantized to 16 bits (the softmax output to 14); () is I-BERT's 8 bits
        everywhere; None: the checkpoint's default (DEFAULT_WIDE_ACTIVATIONS; () for an I-BERT checkpoint
        saved with quant_mode=true).
    calibration_data: a .txt / .jsonl file or a directory of them (None: the shipped corpus).
    num_samples, batch_size, max_length: how much of it, in batches of how many, of how many tokens.
    """

    mode: str = "none"
    calibration_method: str | None = _option(
        flags=("--calibration-method",), modes=QUANTIZED_MODES, key="method", metavar="METHOD", help=_methods_help()
    )
    percentile: float | None = _option(
        flags=("--percentile",), modes=("qdq",), key="percentile", type=float,
        help=f"qdq, for --calibration-method percentile (default: {DEFAULT_PERCENTILE})",
    )
    keep_float: tuple[str, ...] | None = _option(
        flags=("--keep-float",), modes=("qdq",), key="keep_float", metavar="SITE", repeatable=True,
        empty_flag=("--quantize-all", "qdq: quantize every site (QDQBERT's full placement; fastest in TensorRT, least accurate)"),
        help="qdq: leave these quantizer sites in float (repeatable): "
        f"{', '.join(SENSITIVE_SITES)}, an fnmatch pattern over quantizer names or re:REGEX "
        f"(default: {' '.join(DEFAULT_KEEP_FLOAT)}; with --smoothing none: {' '.join(DEFAULT_KEEP_FLOAT_UNSMOOTHED)})",
    )
    force_dequant: str | None = _option(
        flags=("--force-dequant",), modes=("integer",), key="force_dequant", choices=FORCE_DEQUANT_VALUES,
        help="integer: keep these I-BERT nonlinearities in float (default: the checkpoint's, else none)",
    )
    wide_activations: tuple[str, ...] | None = _option(
        flags=("--wide-activations",), modes=("integer",), key="wide_activations", metavar="SITE", repeatable=True,
        choices=("none", *WIDE_ACTIVATION_SITE_NAMES), none_word="none",
        help="integer: requantize these activation sites to 16 instead of 8 bits (the softmax output to 14) (repeatable): "
        f"{', '.join(WIDE_ACTIVATION_SITE_NAMES)}; 'none' keeps I-BERT's 8 bits everywhere (default: "
        f"{' '.join(DEFAULT_WIDE_ACTIVATIONS)}; none for an I-BERT checkpoint saved with quant_mode=true)",
    )
    smoothing: str | None = _option(
        flags=("--smoothing",), modes=("qdq",), key="smoothing", metavar="ALPHA",
        help="qdq: SmoothQuant-style migration of activation outliers into the weights before calibration "
        "(models.quantization.smoothing): auto (chosen per site on the calibration data), a migration strength "
        "in [0, 1], or none (then the FFN output projection's input stays float by default) "
        f"(default: {DEFAULT_SMOOTHING})",
    )
    calibration_data: str | None = _option(
        flags=("--calibration-data",), modes=QUANTIZED_MODES, key="data", metavar="PATH",
        help=".txt (one sample a line, a tab between a pair), .jsonl (text, text_pair) or a directory of "
        "them, tokenized with the checkpoint's tokenizer (default: the shipped calibration_data/)",
    )
    num_samples: int | None = _option(
        flags=("--num-calibration-samples",), modes=QUANTIZED_MODES, key="num_samples", type=int, metavar="N",
        help=f"calibration samples (default: {DEFAULT_NUM_SAMPLES})",
    )
    batch_size: int | None = _option(
        flags=("--calibration-batch-size",), modes=QUANTIZED_MODES, key="batch_size", type=int, metavar="B",
        help=f"samples per calibration batch (default: {DEFAULT_BATCH_SIZE})",
    )
    max_length: int | None = _option(
        flags=("--calibration-max-length",), modes=QUANTIZED_MODES, key="max_length", type=int, metavar="T",
        help=f"tokens per calibration sample (default: {DEFAULT_MAX_LENGTH}, at most the model's limit)",
    )

    def __post_init__(self) -> None:
        mode = self.mode
        if mode not in QUANTIZATION_MODES:
            raise RecipeError(f"unknown quantization {mode!r}; choose one of: {', '.join(QUANTIZATION_MODES)}")
        for name, option in _options().items():
            if getattr(self, name) is not None and mode not in option.modes:
                raise RecipeError(
                    f"{option.names()} applies to --quantization {' or '.join(option.modes)} only: drop it or "
                    f"choose {' or '.join(option.modes)} (QuantizationRecipe.{name})"
                )
        if mode == "none":
            return
        method, percentile = _check_method(mode, self.calibration_method, self.percentile)
        self._set("calibration_method", method)
        self._set("percentile", percentile)
        if mode == "qdq":
            self._set("smoothing", _check_smoothing(self.smoothing))
            self._set("keep_float", _check_keep_float(self.keep_float, str(self.smoothing)))
        else:
            if self.force_dequant is not None and self.force_dequant not in FORCE_DEQUANT_VALUES:
                raise RecipeError(
                    f"unknown force_dequant {self.force_dequant!r} (--force-dequant); choose one of: "
                    f"{', '.join(FORCE_DEQUANT_VALUES)}"
                )
            if self.wide_activations is not None:  # None: the checkpoint's default
                self._set("wide_activations", check_wide_activations(self.wide_activations))
        self._set("calibration_data", _check_data(self.calibration_data))
        for name, default, least in (
            ("num_samples", DEFAULT_NUM_SAMPLES, 1), ("batch_size", DEFAULT_BATCH_SIZE, 1),
            ("max_length", DEFAULT_MAX_LENGTH, 2),
        ):
            self._set(name, _check_count(name, getattr(self, name), default, least))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalizing in __post_init__ of a frozen dataclass

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def default(cls, mode: str) -> QuantizationRecipe:
        """The project's recipe for `mode` (every default of this module)."""
        return cls(mode=mode)

    def replace(self, **changes: Any) -> QuantizationRecipe:
        """A copy with `changes`; the defaults that depend on a changed field are derived again (a new mode
        gets that mode's defaults, a new method its own percentile) unless `changes` gives them too."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in changes:
            for dependent in _DEPENDENT.get(name, ()):
                if dependent in changes:
                    continue
                if (name, dependent) == ("smoothing", "keep_float") and self.mode == "qdq" and (
                    self.keep_float != _check_keep_float(None, str(self.smoothing))
                ):
                    continue  # sites chosen by hand stay valid under any smoothing; only the default follows it
                values[dependent] = None
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise RecipeError(f"QuantizationRecipe has no field {', '.join(unknown)}; fields: {', '.join(values)}")
        values.update(changes)
        return QuantizationRecipe(**values)

    def fitted(self, max_positions: int) -> QuantizationRecipe:
        """This recipe for a model whose position embeddings end at `max_positions`: max_length no longer
        (a small model's limit may be under the default 128)."""
        if self.max_length is None or self.max_length <= max_positions:
            return self
        return self.replace(max_length=max_positions)

    # --- records ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The mode and the fields that apply to it, JSON-ready, under the records' keys ("method", "data", ...)."""
        data: dict[str, Any] = {"mode": self.mode}
        for name, option in _options().items():
            if self.mode in option.modes:
                value = getattr(self, name)
                data[option.key] = list(value) if isinstance(value, tuple) else value
        if "data" in data and data["data"] is None:
            data["data"] = SHIPPED_DATA_LABEL
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], mode: str | None = None) -> QuantizationRecipe:
        """The recipe `to_dict` recorded (export.json's "calibration": pass `mode=info.quantization` for
        exports made before it recorded the mode). Unknown keys are an error: a record from a newer release."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe record must be a JSON object, got {type(data).__name__}")
        by_key = {option.key: name for name, option in _options().items()}
        mode = data.get("mode", mode)
        if mode is None:
            raise RecipeError("the recipe record has no 'mode'; pass mode= (export.json's quantization)")
        unknown = sorted(set(data) - set(by_key) - {"mode"})
        if unknown:
            raise RecipeError(
                f"the recipe record has fields this release does not know: {', '.join(unknown)} (made by a newer "
                "release?); known: " + ", ".join(by_key)
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "mode" or value is None:
                continue
            name = by_key[key]
            if name == "calibration_data" and value in _DEFAULT_DATA_LABELS:
                continue
            values[name] = tuple(value) if isinstance(value, list) else value
        if mode != "qdq":  # records before 0.2 wrote "percentile": null for integer exports
            values.pop("percentile", None)
        elif "smoothing" not in data:  # records from before smoothing existed: none
            values["smoothing"] = "none"
        return cls(mode=mode, **values)

    # --- command lines ------------------------------------------------------------------------------------

    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser, *, modes: tuple[str, ...] = QUANTIZATION_MODES, default_mode: str = "none"
    ) -> argparse._ArgumentGroup:
        """Add --quantization and a flag per field (defaults None: `from_args` fills the mode's own)."""
        group = parser.add_argument_group("quantization recipe (models.quantization.recipe.QuantizationRecipe)")
        group.add_argument(
            "--quantization", dest="mode", choices=list(modes), default=default_mode,
            help=f"quantization mode (default: {default_mode})",
        )
        for name, option in _options().items():
            if not set(option.modes) & set(modes):
                continue
            target = group.add_mutually_exclusive_group() if option.empty_flag else group
            kwargs: dict[str, Any] = {"dest": name, "default": None, "help": option.help, "metavar": option.metavar}
            if option.choices is not None:
                kwargs["choices"] = list(option.choices)
            if option.repeatable:
                kwargs["action"] = "append"
            else:
                kwargs["type"] = option.type
            target.add_argument(*option.flags, **kwargs)
            if option.empty_flag:
                flag, help_text = option.empty_flag
                target.add_argument(flag, dest=f"{name}__empty", action="store_true", help=help_text)
        return group

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QuantizationRecipe:
        """The recipe of parsed arguments (from a parser that `add_arguments` set up); RecipeError if invalid."""
        values: dict[str, Any] = {}
        for name, option in _options().items():
            value = getattr(args, name, None)
            if option.empty_flag and getattr(args, f"{name}__empty", False):
                value = ()
            elif option.repeatable and value is not None:
                if option.none_word is not None and option.none_word in value:
                    if len(value) > 1:
                        raise RecipeError(f"{option.flags[0]} {option.none_word} cannot be combined with other values")
                    value = ()
                value = tuple(value)
            values[name] = value
        return cls(mode=args.mode, **values)

    @classmethod
    def from_command_line(cls, args: argparse.Namespace) -> QuantizationRecipe | None:
        """`from_args` with the calibration data checked too; an error is printed on stderr as the commands
        print theirs ("error: ...", docs/errors.md) and None returned, for the command to exit with status 2."""
        try:
            recipe = cls.from_args(args)
            recipe.check_calibration_data()
        except RecipeError as e:
            print(f"error: {e}", file=sys.stderr)
            return None
        return recipe

    # --- inputs -------------------------------------------------------------------------------------------

    def check_calibration_data(self) -> None:
        """The calibration data exists. Checked where it is about to be read, not at construction, so that a
        recorded recipe stays readable after its data moved."""
        if self.calibration_data is not None and not Path(self.calibration_data).exists():
            raise RecipeError(
                f"--calibration-data {self.calibration_data} does not exist; pass a .txt or .jsonl file or a "
                "directory of them (or leave it out to use the shipped calibration_data/)"
            )

    def describe(self) -> str:
        """One line for logs: "percentile 99.999, SmoothQuant auto, 512 samples"."""
        if self.mode == "none":
            return "float (no quantization)"
        method = f"{self.calibration_method} {self.percentile:g}" if self.percentile is not None else str(self.calibration_method)
        smoothing = f", SmoothQuant {self.smoothing}" if self.mode == "qdq" and self.smoothing != "none" else ""
        return f"{method}{smoothing}, {self.num_samples} samples"


#: field -> the fields whose defaults follow from it (`replace` derives them again)
_DEPENDENT: dict[str, tuple[str, ...]] = {
    "mode": tuple(f.name for f in fields(QuantizationRecipe) if f.name != "mode"),
    "calibration_method": ("percentile",),
    "smoothing": ("keep_float",),
}


def _options() -> dict[str, _Option]:
    return {f.name: f.metadata["option"] for f in fields(QuantizationRecipe) if "option" in f.metadata}


def _check_method(mode: str, method: str | None, percentile: float | None) -> tuple[str, float | None]:
    """"percentile-99.9" -> ("percentile", 99.9); None -> the mode's default; checked against the mode's methods."""
    methods = CALIBRATION_METHODS[mode]
    if method is not None and not isinstance(method, str):
        raise RecipeError(f"calibration method (--calibration-method) must be a string, got {method!r}")
    name, dash, number = (method or methods[0]).partition("-")
    if name == "percentile" and dash:
        try:
            in_name = float(number)
        except ValueError:
            raise RecipeError(
                f"calibration method {method!r}: expected percentile-<number>, e.g. percentile-99.99"
            ) from None
        if percentile is not None and percentile != in_name:
            raise RecipeError(f"calibration method {method!r} and percentile {percentile!r} disagree; give one of them")
        percentile = in_name
    if name not in methods or (dash and name != "percentile"):
        raise RecipeError(
            f"calibration method {method!r} is not one of {mode}'s: {', '.join(methods)}"
            + (" (or percentile-<number>)" if "percentile" in methods else "")
        )
    if name != "percentile":
        if percentile is not None:
            raise RecipeError(
                f"--percentile applies to --calibration-method percentile, not {name}: drop it or choose percentile"
            )
        return name, None
    if percentile is None:
        percentile = DEFAULT_PERCENTILE
    if isinstance(percentile, bool) or not isinstance(percentile, int | float) or math.isnan(percentile) or not (
        0.0 < percentile <= 100.0
    ):
        raise RecipeError(f"percentile must be in (0, 100], got {percentile!r} (--percentile)")
    return name, float(percentile)


def _strings(name: str, value: str | Iterable[str]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(item, str) and item for item in items):
        raise RecipeError(f"{name} must be strings (names, patterns), got {list(items)!r}")
    return items


def _check_smoothing(value: str | float | None) -> str:
    """None: DEFAULT_SMOOTHING; "none"; "auto"; or a migration strength in [0, 1], kept as its string ("0.5")."""
    if value is None:
        return DEFAULT_SMOOTHING
    if value in ("none", "auto"):
        return str(value)
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if isinstance(value, bool) or not 0.0 <= alpha <= 1.0:
        raise RecipeError(f"--smoothing {value!r}: give a migration strength in [0, 1] (e.g. 0.5), auto or none")
    return f"{alpha:g}"


def _check_keep_float(value: str | Iterable[str] | None, smoothing: str) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_KEEP_FLOAT_UNSMOOTHED if smoothing == "none" else DEFAULT_KEEP_FLOAT
    patterns = _strings("keep_float (--keep-float)", value)
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise RecipeError(f"--keep-float {pattern!r}: not a regular expression ({e})") from None
    return patterns


def check_wide_activations(sites: str | Iterable[str]) -> tuple[str, ...]:
    """The sites as a tuple in canonical order; unknown names are a RecipeError (a ValueError) naming the valid ones."""
    chosen = _strings("wide_activations (--wide-activations)", sites)
    unknown = [site for site in chosen if site not in WIDE_ACTIVATION_SITE_NAMES]
    if unknown:
        raise RecipeError(
            f"wide_activations: unknown site(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(WIDE_ACTIVATION_SITE_NAMES)} (or none: I-BERT's 8-bit activations everywhere)"
        )
    return tuple(site for site in WIDE_ACTIVATION_SITE_NAMES if site in chosen)


def _check_data(value: str | os.PathLike | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise RecipeError(f"--calibration-data must be a path, got {value!r}")
    return os.fspath(value)


def _check_count(name: str, value: int | None, default: int, least: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        flag = _options()[name].flags[0]
        raise RecipeError(f"{name} ({flag}) must be an integer >= {least}, got {value!r}")
    return value

