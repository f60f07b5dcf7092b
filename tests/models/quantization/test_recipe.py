"""QuantizationRecipe: its defaults are the documented ones, every field is checked, records and command-line
flags round-trip into the same recipe, and the toolkits' own defaults are the recipe's.

The expected defaults are written here from docs/export.md's option table and docs/qdq.md / docs/integer.md
(not read from the code under test).
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys

import pytest

from models.quantization.errors import CalibrationError, NotCalibratedError, QuantizationError, RecipeError
from models.quantization.recipe import QuantizationRecipe
from tests.fixtures import ROOT

#: docs/export.md: qdq percentile (99.999 measured best, docs/qdq.md), SmoothQuant auto, the residual adds float
#: (and SqueezeBERT's FFN output convolution's input, which smoothing does not reach), 512 samples in batches
#: of 16 of at most 128 tokens, the shipped data
DOCUMENTED_QDQ = {
    "mode": "qdq", "calibration_method": "percentile", "percentile": 99.999, "smoothing": "auto",
    "keep_float": ("residual-adds", "conv-ffn-output-input"), "force_dequant": None, "wide_activations": None,
    "calibration_data": None, "num_samples": 512, "batch_size": 16, "max_length": 128,
}
#: docs/integer.md: minmax; force_dequant and wide_activations follow the checkpoint (both 16-bit sites,
#: none for an I-BERT quant_mode=true checkpoint)
DOCUMENTED_INTEGER = {
    **DOCUMENTED_QDQ, "mode": "integer", "calibration_method": "minmax", "percentile": None, "keep_float": None,
    "smoothing": None,
}
DOCUMENTED_FLOAT = {name: None for name in DOCUMENTED_QDQ} | {"mode": "none"}


def fields_of(recipe: QuantizationRecipe) -> dict:
    return {name: getattr(recipe, name) for name in DOCUMENTED_QDQ}


@pytest.mark.parametrize(
    ("mode", "expected"), [("qdq", DOCUMENTED_QDQ), ("integer", DOCUMENTED_INTEGER), ("none", DOCUMENTED_FLOAT)]
)
def test_defaults_are_the_documented_ones(mode, expected):
    assert fields_of(QuantizationRecipe.default(mode)) == expected
    assert QuantizationRecipe(mode=mode) == QuantizationRecipe.default(mode)
    assert QuantizationRecipe() == QuantizationRecipe.default("none")


def test_without_smoothing_the_ffn_output_input_stays_float():
    """docs/qdq.md: unsmoothed, the FFN output projection's input is kept float by default (the default before
    smoothing); an explicit keep_float is kept as given; changing the smoothing derives the default again."""
    unsmoothed = QuantizationRecipe(mode="qdq", smoothing="none")
    assert unsmoothed.keep_float == ("residual-adds", "ffn-output-input")
    assert QuantizationRecipe(mode="qdq", smoothing="none", keep_float=()).keep_float == ()
    assert QuantizationRecipe(mode="qdq", smoothing="0.5").keep_float == ("residual-adds", "conv-ffn-output-input")
    assert QuantizationRecipe.default("qdq").replace(smoothing="none") == unsmoothed
    assert unsmoothed.replace(smoothing="auto") == QuantizationRecipe.default("qdq")
    for chosen in ((), ("softmax-output",), ("residual-adds",)):  # chosen by hand: kept
        for smoothing in ("none", "0.5", "auto"):
            recipe = QuantizationRecipe(mode="qdq", keep_float=chosen, smoothing="auto" if smoothing == "none" else "none")
            assert recipe.replace(smoothing=smoothing).keep_float == chosen


def test_records_from_before_smoothing_read_back_unsmoothed():
    """A qdq record without "smoothing" (export.json / calibration.json written before it existed) was not smoothed."""
    record = QuantizationRecipe(mode="qdq", smoothing="none").to_dict()
    assert record["smoothing"] == "none"
    del record["smoothing"]
    assert QuantizationRecipe.from_dict(record).smoothing == "none"
    assert QuantizationRecipe.from_dict(QuantizationRecipe.default("qdq").to_dict()) == QuantizationRecipe.default("qdq")


def test_the_toolkits_defaults_are_the_recipes():
    """calibrate(), compute_amax() and calibrate_integer() called without a method calibrate as the recipe says
    (before 0.2: max and 99.99 in the qdq toolkit, 99.999 in the exporter)."""
    import models.quantization.calibrate as command  # as a console script does: the package's `calibrate` is then
    from models.quantization import calibrate, calibrate_integer, compute_amax  # the command module, callable

    assert calibrate is command
    for function in (calibrate, compute_amax):
        parameters = inspect.signature(function).parameters
        assert (parameters["method"].default, parameters["percentile"].default) == ("percentile", 99.999)
    assert inspect.signature(calibrate_integer).parameters["method"].default == "minmax"


def test_the_recipes_names_are_what_the_models_implement():
    """Every method and site the recipe offers exists in the torch code (the recipe lists them without torch)."""
    from models.ibert import WIDE_ACTIVATION_SITES
    from models.quantization.integer.calibration import METHODS as INTEGER_MOMENTA
    from models.quantization.qdq.calibrators import HISTOGRAM_METHODS
    from models.quantization.recipe import (
        CALIBRATION_METHODS,
        DEFAULT_WIDE_ACTIVATIONS,
        WIDE_ACTIVATION_SITE_NAMES,
    )

    assert set(CALIBRATION_METHODS["qdq"]) == {"max", *HISTOGRAM_METHODS}
    assert set(CALIBRATION_METHODS["integer"]) == set(INTEGER_MOMENTA)
    assert tuple(WIDE_ACTIVATION_SITES) == WIDE_ACTIVATION_SITE_NAMES
    assert DEFAULT_WIDE_ACTIVATIONS == ("ffn-input", "ffn-output-input", "hidden-states", "softmax-output")  # docs/integer.md


def test_fields_normalize():
    assert QuantizationRecipe(mode="qdq", calibration_method="percentile-99.9").percentile == 99.9
    assert QuantizationRecipe(mode="qdq", calibration_method="percentile-99.9", percentile=99.9).percentile == 99.9
    assert QuantizationRecipe(mode="qdq", calibration_method="max").percentile is None
    assert QuantizationRecipe(mode="qdq", keep_float="softmax-output").keep_float == ("softmax-output",)
    assert QuantizationRecipe(mode="qdq", keep_float=[]).keep_float == ()
    # canonical order, whatever order they were given in
    assert QuantizationRecipe(mode="integer", wide_activations=["hidden-states", "ffn-output-input"]).wide_activations == (
        "ffn-output-input", "hidden-states",
    )
    assert QuantizationRecipe(mode="integer", wide_activations=()).wide_activations == ()
    assert QuantizationRecipe(mode="qdq", calibration_data=ROOT / "calibration_data").calibration_data == str(
        ROOT / "calibration_data"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "int4"}, "unknown quantization 'int4'; choose one of: none, qdq, integer"),
        ({"mode": "none", "calibration_method": "max"}, "--calibration-method applies to --quantization qdq or integer only"),
        ({"mode": "integer", "keep_float": ("residual-adds",)}, "--keep-float / --quantize-all applies to --quantization qdq only"),
        ({"mode": "integer", "keep_float": ()}, "--quantize-all applies to --quantization qdq only"),
        ({"mode": "integer", "percentile": 99.9}, "--percentile applies to --quantization qdq only"),
        ({"mode": "qdq", "force_dequant": "gelu"}, "--force-dequant applies to --quantization integer only"),
        ({"mode": "qdq", "wide_activations": ()}, "--wide-activations applies to --quantization integer only"),
        ({"mode": "qdq", "calibration_method": "ema"}, "calibration method 'ema' is not one of qdq's: percentile, max, mse, entropy"),
        ({"mode": "integer", "calibration_method": "percentile"}, "not one of integer's: minmax, ema"),
        ({"mode": "qdq", "calibration_method": "percentile-abc"}, "expected percentile-<number>"),
        ({"mode": "qdq", "calibration_method": "max-3"}, "'max-3' is not one of qdq's"),
        ({"mode": "qdq", "calibration_method": "percentile-99.9", "percentile": 99.0}, "disagree; give one of them"),
        ({"mode": "qdq", "calibration_method": "max", "percentile": 99.9}, "--percentile applies to --calibration-method percentile"),
        ({"mode": "qdq", "percentile": 120.0}, r"percentile must be in \(0, 100\], got 120.0"),
        ({"mode": "qdq", "percentile": 0}, r"percentile must be in \(0, 100\]"),
        ({"mode": "qdq", "percentile": float("nan")}, r"percentile must be in \(0, 100\]"),
        ({"mode": "qdq", "percentile": "99"}, r"percentile must be in \(0, 100\]"),
        ({"mode": "qdq", "keep_float": ("re:(",)}, "--keep-float 're:\\(': not a regular expression"),
        ({"mode": "qdq", "keep_float": ("",)}, "keep_float .* must be strings"),
        ({"mode": "integer", "force_dequant": "all"}, "unknown force_dequant 'all'"),
        ({"mode": "integer", "wide_activations": ("attention",)}, "unknown site\\(s\\) 'attention'; choose from ffn-input, ffn-output-input, hidden-states, softmax-output"),
        ({"mode": "qdq", "num_samples": 0}, r"num_samples \(--num-calibration-samples\) must be an integer >= 1, got 0"),
        ({"mode": "qdq", "batch_size": 2.5}, r"batch_size \(--calibration-batch-size\) must be an integer >= 1"),
        ({"mode": "integer", "max_length": 1}, r"max_length \(--calibration-max-length\) must be an integer >= 2"),
        ({"mode": "qdq", "num_samples": True}, "must be an integer"),
        ({"mode": "qdq", "calibration_data": ""}, "--calibration-data must be a path"),
    ],
)
def test_every_field_is_checked(fields, message):
    with pytest.raises(RecipeError, match=message) as raised:
        QuantizationRecipe(**fields)
    assert raised.value.code == "bad-recipe" and isinstance(raised.value, ValueError)


def test_one_error_hierarchy():
    for error, builtin, code in (
        (CalibrationError, ValueError, "calibration-file"),
        (NotCalibratedError, RuntimeError, "not-calibrated"),
        (RecipeError, ValueError, "bad-recipe"),
    ):
        assert issubclass(error, QuantizationError) and issubclass(error, builtin) and error.code == code
    # the old homes give the same classes
    from models.quantization import calibration_file
    from models.quantization.integer import modules
    from models.quantization.qdq import tensor_quantizer

    assert calibration_file.CalibrationError is CalibrationError
    assert modules.NotCalibratedError is tensor_quantizer.NotCalibratedError is NotCalibratedError


def test_calibration_data_is_checked_where_it_is_read(tmp_path):
    recipe = QuantizationRecipe(mode="qdq", calibration_data=tmp_path / "gone.txt")  # a recorded recipe: fine
    with pytest.raises(RecipeError, match="gone.txt does not exist; pass a .txt or .jsonl file"):
        recipe.check_calibration_data()
    QuantizationRecipe.default("qdq").check_calibration_data()  # the shipped corpus


def test_replace_derives_the_dependent_defaults_again():
    qdq = QuantizationRecipe.default("qdq")
    assert qdq.replace(calibration_method="max").percentile is None
    assert qdq.replace(calibration_method="max").replace(calibration_method="percentile").percentile == 99.999
    assert qdq.replace(percentile=99.9).calibration_method == "percentile"
    integer = qdq.replace(mode="integer")
    assert integer == QuantizationRecipe.default("integer")
    assert qdq.replace(mode="integer", num_samples=8).num_samples == 8
    assert qdq.replace(max_length=64).keep_float == qdq.keep_float  # an unrelated change keeps the rest
    assert qdq.fitted(64).max_length == 64 and qdq.fitted(512) is qdq
    with pytest.raises(RecipeError, match="no field calibrator"):
        qdq.replace(calibrator="max")


RECIPES = [
    QuantizationRecipe.default("none"),
    QuantizationRecipe.default("qdq"),
    QuantizationRecipe(mode="qdq", calibration_method="max", keep_float=(), num_samples=8, batch_size=4),
    QuantizationRecipe(mode="qdq", calibration_method="percentile-99.9", keep_float=("softmax-output", "re:.*x"),
                       calibration_data="my/texts.jsonl", max_length=32),
    QuantizationRecipe.default("integer"),
    QuantizationRecipe(mode="integer", calibration_method="ema", force_dequant="gelu", wide_activations=(),
                       num_samples=64),
    QuantizationRecipe(mode="integer", wide_activations=("hidden-states",), batch_size=8),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.mode}-{r.calibration_method}")
def test_records_round_trip(recipe):
    data = recipe.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert QuantizationRecipe.from_dict(json.loads(json.dumps(data))) == recipe


def test_records_hold_only_what_applies_to_the_mode():
    assert QuantizationRecipe.default("none").to_dict() == {"mode": "none"}
    assert set(QuantizationRecipe.default("qdq").to_dict()) == {
        "mode", "method", "percentile", "smoothing", "keep_float", "data", "num_samples", "batch_size", "max_length",
    }
    assert set(QuantizationRecipe.default("integer").to_dict()) == {
        "mode", "method", "force_dequant", "wide_activations", "data", "num_samples", "batch_size", "max_length",
    }


def test_records_of_0_1_exports_read_back():
    """export.json's "calibration" as 0.1 wrote it (no mode, no batch_size; integer with "percentile": null)."""
    qdq = {"method": "percentile", "percentile": 99.999, "data": "calibration_data/calibration.txt (shipped)",
           "keep_float": ["residual-adds", "ffn-output-input"], "num_samples": 512, "max_length": 128}
    assert QuantizationRecipe.from_dict(qdq, mode="qdq") == QuantizationRecipe(mode="qdq", smoothing="none")
    integer = {"method": "minmax", "percentile": None, "data": "generated token ids (the checkpoint has no tokenizer)",
               "wide_activations": ["ffn-output-input", "hidden-states"], "num_samples": 8, "max_length": 64}
    assert QuantizationRecipe.from_dict(integer, mode="integer") == QuantizationRecipe(
        mode="integer", wide_activations=("ffn-output-input", "hidden-states"), num_samples=8, max_length=64
    )
    with pytest.raises(RecipeError, match="no 'mode'"):
        QuantizationRecipe.from_dict(qdq)
    with pytest.raises(RecipeError, match="fields this release does not know: sensitivity"):
        QuantizationRecipe.from_dict({**qdq, "mode": "qdq", "sensitivity": 0.5})


def parse(argv: list[str], **kwargs) -> QuantizationRecipe:
    parser = argparse.ArgumentParser()
    QuantizationRecipe.add_arguments(parser, **kwargs)
    return QuantizationRecipe.from_args(parser.parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], QuantizationRecipe.default("none")),
        (["--quantization", "qdq"], QuantizationRecipe.default("qdq")),
        (["--quantization", "qdq", "--calibration-method", "max", "--quantize-all", "--num-calibration-samples", "8",
          "--calibration-batch-size", "4"], RECIPES[2]),
        (["--quantization", "qdq", "--calibration-method", "percentile-99.9", "--keep-float", "softmax-output",
          "--keep-float", "re:.*x", "--calibration-data", "my/texts.jsonl", "--calibration-max-length", "32"], RECIPES[3]),
        (["--quantization", "integer"], QuantizationRecipe.default("integer")),
        (["--quantization", "integer", "--calibration-method", "ema", "--force-dequant", "gelu", "--wide-activations",
          "none", "--num-calibration-samples", "64"], RECIPES[5]),
        (["--quantization", "integer", "--wide-activations", "hidden-states", "--calibration-batch-size", "8"], RECIPES[6]),
        (["--quantization", "qdq", "--percentile", "99.9"], QuantizationRecipe(mode="qdq", percentile=99.9)),
    ],
)
def test_command_line_flags_give_the_recipe_of_the_api(argv, expected):
    assert parse(argv) == expected


def test_command_line_errors():
    with pytest.raises(RecipeError, match="--wide-activations none cannot be combined"):
        parse(["--quantization", "integer", "--wide-activations", "none", "--wide-activations", "hidden-states"])
    with pytest.raises(RecipeError, match="--keep-float / --quantize-all applies to --quantization qdq only"):
        parse(["--quantization", "integer", "--keep-float", "residual-adds"])
    with pytest.raises(SystemExit):  # argparse: not both
        parse(["--quantization", "qdq", "--keep-float", "residual-adds", "--quantize-all"])
    with pytest.raises(SystemExit):  # argparse: not a mode of this command
        parse(["--quantization", "none"], modes=("qdq", "integer"), default_mode="qdq")
    assert parse([], modes=("qdq", "integer"), default_mode="qdq") == QuantizationRecipe.default("qdq")


def test_both_commands_parse_the_same_recipe():
    """The exporter's and the calibrate command's flags are one set (plus the calibrate command's 0.1 names)."""
    from exporter.__main__ import build_parser as exporter_parser
    from models.quantization.calibrate import build_parser as calibrate_parser

    flags = ["--quantization", "qdq", "--calibration-method", "mse", "--keep-float", "residual-adds",
             "--num-calibration-samples", "32", "--calibration-batch-size", "8", "--calibration-max-length", "64"]
    common = ["--model", "m", "--output", "o"]
    expected = QuantizationRecipe(mode="qdq", calibration_method="mse", keep_float=("residual-adds",), num_samples=32,
                                  batch_size=8, max_length=64)
    assert QuantizationRecipe.from_args(exporter_parser().parse_args(common + flags)) == expected
    assert QuantizationRecipe.from_args(calibrate_parser().parse_args(common + flags)) == expected
    old = ["--method", "mse", "--keep-float", "residual-adds", "--num-samples", "32", "--batch-size", "8",
           "--max-length", "64"]
    assert QuantizationRecipe.from_args(calibrate_parser().parse_args(common + old)) == expected


def test_the_command_lines_parse_without_torch():
    """The recipe and both command modules import nothing heavy: --help and argument errors answer at once."""
    code = (
        "import sys, models.quantization.recipe, exporter.__main__, models.quantization.calibrate;"
        "print(','.join(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
