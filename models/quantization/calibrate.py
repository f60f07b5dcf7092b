"""`python -m models.quantization.calibrate`: calibrate a checkpoint (qdq or integer) and write its calibration.json.

    python -m models.quantization.calibrate --model DIR --output FILE [--task T] [--quantization qdq|integer]
        [--calibration-data P] [--calibration-method M] [--percentile P] [--smoothing ALPHA|auto|none]
        [--keep-float SITE ... | --quantize-all]
        [--force-dequant F] [--wide-activations SITE ...]
        [--num-calibration-samples N] [--calibration-batch-size B] [--calibration-max-length T]

The flags and their defaults are `QuantizationRecipe`'s (models.quantization.recipe), the same as
`python -m exporter`'s, so a file made here and an export calibrate alike. The names of 0.1 still work:
--data, --method, --num-samples, --batch-size, --max-length. `models.load(DIR, quantization=MODE,
calibration=FILE)` applies the file. Exit status: 0 done, 2 bad arguments or inputs (the reason on stderr).

Arguments are parsed and checked before torch is imported, so --help and argument errors answer at once.
`models.quantization.calibrate` is also the qdq calibration function (pytorch-quantization's name, which the
package re-exports); importing this module (a console script does) makes the module the package's attribute,
as Python does for every submodule, so the module is callable and forwards to that function.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import types
from collections.abc import Sequence
from typing import Any

from models.quantization.recipe import QUANTIZED_MODES, QuantizationRecipe
from trt_runtime.contract.errors import report
from trt_runtime.contract.files import check_output_file, check_output_outside_inputs

#: 0.1's flag -> the recipe field it sets (hidden from --help, kept for scripts)
LEGACY_FLAGS = {
    "--data": "calibration_data",
    "--method": "calibration_method",
    "--num-samples": "num_samples",
    "--batch-size": "batch_size",
    "--max-length": "max_length",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.quantization.calibrate",
        description="Calibrate a Hugging Face checkpoint in qdq (QDQBERT fake quantization: amax per quantizer) or "
        "integer (I-BERT: activation ranges and LayerNorm shifts) mode and write its calibration.json, which "
        "models.load(DIR, quantization=MODE, calibration=FILE) applies.",
    )
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory (with its tokenizer)")
    parser.add_argument("--output", required=True, help="calibration file to write (JSON, replaced atomically)")
    parser.add_argument("--task", default=None, help="task head to load (default: from config.json)")
    QuantizationRecipe.add_arguments(parser, modes=QUANTIZED_MODES, default_mode="qdq")
    for flag, dest in LEGACY_FLAGS.items():
        kind = int if dest in ("num_samples", "batch_size", "max_length") else str
        parser.add_argument(flag, dest=dest, type=kind, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0 done, 2 bad input (checkpoint, data, options: the reason on stderr)."""
    args = build_parser().parse_args(argv)
    recipe = QuantizationRecipe.from_command_line(args)
    if recipe is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _calibrate_command(args, recipe)
    except ValueError as e:  # CheckpointError, DataError, CalibrationError, a bad --keep-float: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written (read-only, full, a directory): its code, exit 2
        return report(e)


def _calibrate_command(args: argparse.Namespace, recipe: QuantizationRecipe) -> int:
    import models
    from models.architectures import max_positions
    from models.quantization.calibration import calibrate_model, recipe_batches, save_model_calibration

    # before any work: the output must not be (or lie inside) what it is made from, nor be a directory
    check_output_outside_inputs(
        args.output, {"--model": args.model, "--calibration-data": recipe.calibration_data}
    )
    check_output_file(args.output)
    model = models.load(
        args.model, task=args.task, quantization=recipe.mode, force_dequant=recipe.force_dequant,
        wide_activations=recipe.wide_activations,
    )
    recipe = recipe.fitted(max_positions(model.config, model.arch))
    done = calibrate_model(model, recipe_batches(recipe, args.model), recipe)
    path = save_model_calibration(model, args.output, done)
    kept = f", {len(done.kept_float)} kept in float" if done.kept_float else ""
    print(f"wrote {path}: {recipe.mode}, {done.recipe.describe()} of {done.data}{kept}")
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as the qdq `calibrate(model, batches, ...)` whose name it shares (module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from models.quantization.qdq.calibrate import calibrate

        return calibrate(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # inspect.signature(models.quantization.calibrate): the function's
        from models.quantization.qdq.calibrate import calibrate

        return inspect.signature(calibrate)


if __name__ == "__main__":
    sys.exit(main())
elif getattr(sys.modules.get(__name__), "__dict__", None) is globals():  # imported (not run by runpy)
    sys.modules[__name__].__class__ = _CallableModule
