"""`python -m exporter --model DIR --task T --quantization Q --output OUT [...]`: see `exporter.export`."""

from __future__ import annotations

import argparse
import sys

import models
from exporter.errors import ExportError, ExportValidationError
from exporter.pipeline import DEFAULT_KEEP_FLOAT, DEFAULT_PERCENTILE, export
from exporter.torch_export import MAX_OPSET, MIN_OPSET
from models.ibert import DEFAULT_WIDE_ACTIVATIONS, WIDE_ACTIVATION_SITES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Export a Hugging Face BERT-family checkpoint (bert, roberta, ibert, qdqbert, squeezebert) "
        "to an export directory: model.onnx + export.json + config and tokenizer files, validated in "
        "ONNX Runtime against PyTorch.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--output", required=True, help="export directory to write (replaced atomically if it exists)")
    parser.add_argument(
        "--task", choices=list(models.TASKS), default=None,
        help="task head (default: from config.json's architectures, else feature-extraction)",
    )
    parser.add_argument("--quantization", choices=list(models.QUANTIZATION_MODES), default="none")
    parser.add_argument(
        "--calibration-data", default=None,
        help="qdq/integer: .txt (one sample a line, tab between a pair), .jsonl (text, text_pair) or a "
        "directory of them (default: the shipped calibration_data/)",
    )
    parser.add_argument(
        "--calibration-method", default=None,
        help="qdq: max | percentile (default) | mse | entropy, or percentile-99.9 to give the percentile in "
        "the name; integer: minmax (default) | ema (I-BERT's moving average)",
    )
    parser.add_argument(
        "--percentile", type=float, default=DEFAULT_PERCENTILE, help="for --calibration-method percentile"
    )
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep-float", action="append", metavar="SITE", default=None,
        help="qdq: leave these quantizer sites in float (repeatable): residual-adds, ffn-output-input, "
        "softmax-output, an fnmatch pattern over quantizer names or re:REGEX "
        f"(default: {' '.join(DEFAULT_KEEP_FLOAT)})",
    )
    keep.add_argument(
        "--quantize-all", action="store_true",
        help="qdq: quantize every site (QDQBERT's full placement; fastest in TensorRT, least accurate)",
    )
    parser.add_argument("--num-calibration-samples", type=int, default=512)
    parser.add_argument("--calibration-batch-size", type=int, default=16)
    parser.add_argument("--calibration-max-length", type=int, default=128, help="tokens per calibration sample")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    parser.add_argument(
        "--force-dequant", choices=list(models.FORCE_DEQUANT_VALUES), default=None,
        help="integer only: keep these I-BERT nonlinearities in float",
    )
    parser.add_argument(
        "--wide-activations", action="append", metavar="SITE", default=None,
        choices=["none", *WIDE_ACTIVATION_SITES],
        help="integer only: requantize these activation sites to 16 instead of 8 bits (repeatable): "
        f"{', '.join(WIDE_ACTIVATION_SITES)}; 'none' keeps I-BERT's 8 bits everywhere (default: "
        f"{' '.join(DEFAULT_WIDE_ACTIVATIONS)}; none for an I-BERT checkpoint saved with quant_mode=true)",
    )
    parser.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    return parser


def _wide_activations(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if "none" in values and len(values) > 1:
        raise ExportError("--wide-activations none cannot be combined with sites")
    return tuple(v for v in values if v != "none")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = export(
            args.model,
            args.output,
            task=args.task,
            quantization=args.quantization,
            calibration_data=args.calibration_data,
            calibration_method=args.calibration_method,
            percentile=args.percentile,
            keep_float=() if args.quantize_all else tuple(args.keep_float or DEFAULT_KEEP_FLOAT),
            opset=args.opset,
            num_calibration_samples=args.num_calibration_samples,
            calibration_batch_size=args.calibration_batch_size,
            calibration_max_length=args.calibration_max_length,
            force_dequant=args.force_dequant,
            wide_activations=_wide_activations(args.wide_activations),
            validate=not args.no_validate,
            log=None if args.quiet else lambda message: print(message, file=sys.stderr, flush=True),
        )
    except ExportValidationError as e:
        print(f"error: validation failed: {e}", file=sys.stderr)
        return 1
    except (ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
