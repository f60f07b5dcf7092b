"""`python -m exporter --model DIR --task T --quantization Q --output OUT [...]`: see `exporter.export`.

Arguments are parsed and checked (the task, the opset, every quantization recipe field, that the calibration
data exists) before torch is imported, so `--help` and argument errors answer at once. Exit status: 0 done,
1 the export failed validation (ExportValidationError), 2 bad arguments or inputs (docs/export.md).
"""

from __future__ import annotations

import argparse
import sys

from exporter.errors import ExportError, ExportValidationError
from exporter.options import MAX_OPSET, MIN_OPSET, check_opset, resolve_task
from models.quantization.recipe import QuantizationRecipe
from trt_runtime.contract.errors import report
from trt_runtime.contract.tasks import AUTO_TASK, TASK_SYNONYMS, TASKS


def _task(value: str) -> str:
    """argparse type of --task: checked now, resolved (synonyms) later by export()."""
    try:
        resolve_task(value)
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _opset(value: str) -> int:
    try:
        return check_opset(int(value))
    except (ValueError, ExportError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, ExportError) else f"not an integer: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Export a Hugging Face BERT-family checkpoint (bert, roberta, ibert, qdqbert, squeezebert) "
        "to an export directory: model.onnx + export.json + config and tokenizer files, validated in "
        "ONNX Runtime against PyTorch. Exit status: 0 done, 1 validation failed, 2 bad arguments or inputs.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--output", required=True, help="export directory to write (replaced atomically if it exists)")
    parser.add_argument(
        "--task", type=_task, default=None, metavar="TASK",
        help=f"task head: {', '.join(TASKS)}; or optimum's / transformers' synonyms ({', '.join(TASK_SYNONYMS)}); "
        f"default ({AUTO_TASK}): from config.json's architectures, else feature-extraction",
    )
    parser.add_argument("--opset", type=_opset, default=MIN_OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    parser.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument(
        "--report", action="store_true",
        help="print the INT8 share of the GEMM work (TensorRT's rule, by group) and every float GEMM with its "
        "reason on stdout, before the output path (exporter.report; export.json records it as int8_share)",
    )
    QuantizationRecipe.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipe = QuantizationRecipe.from_command_line(args)
    if recipe is None:
        return 2

    from exporter.pipeline import export  # torch, transformers and onnx from here on

    try:
        out = export(
            args.model,
            args.output,
            task=args.task,
            recipe=recipe,
            opset=args.opset,
            validate=not args.no_validate,
            log=None if args.quiet else lambda message: print(message, file=sys.stderr, flush=True),
        )
    except ExportValidationError as e:
        print(f"error: validation failed: {e}", file=sys.stderr)
        return 1
    except (ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written (read-only, full, immutable, a mount point)
        return report(e)
    if args.report:
        from trt_runtime.contract.export_dir import read_export_info
        from trt_runtime.contract.int8_share import format_report

        share = read_export_info(out).int8_share
        print(format_report(share) if share else "no INT8 share recorded")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
