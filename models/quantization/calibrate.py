"""`python -m models.quantization.calibrate`: calibrate a checkpoint and write its calibration.json.

    python -m models.quantization.calibrate --model DIR --output FILE \
        [--data P] [--method max|percentile|mse|entropy] [--percentile 99.99] [--num-samples N] [--batch-size B]

The calibration itself is `models.quantization.qdq.calibrate` (qdq) and `models.quantization.integer.calibration`
(integer).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from models.quantization.calibration_file import save_calibration
from models.quantization.qdq.calibrate import METHODS, calibrate
from models.quantization.qdq.quantized_model import keep_float, named_quantizers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.quantization.calibrate",
        description="Calibrate a checkpoint in qdq mode and write its calibration.json.",
    )
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--output", required=True, help="calibration file to write (JSON)")
    parser.add_argument("--task", default=None, help="task head to load (default: from config.json)")
    parser.add_argument(
        "--data", default=None,
        help=".txt / .jsonl file or directory of them (default: the shipped calibration_data/calibration.txt)",
    )
    parser.add_argument("--method", choices=METHODS, default="percentile")
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--num-samples", type=int, default=512, help="texts to calibrate on (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text after truncation")
    parser.add_argument(
        "--keep-float", action="append", default=[], metavar="PATTERN",
        help="leave quantizers matching this fnmatch pattern (or 're:' regex, or ffn-output-input, "
        "softmax-output, residual-adds) in float; repeatable",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit status 0 done, 2 bad input (checkpoint, data, options: the reason on stderr)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _calibrate_command(args)
    except ValueError as e:  # CheckpointError, DataError, CalibrationError, a bad --keep-float: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _calibrate_command(args: argparse.Namespace) -> int:
    import models
    from models.architectures import max_positions
    from models.data import SHIPPED_DATA_NAME, calibration_batches, load_texts

    model = models.load(args.model, task=args.task, quantization="qdq")
    if args.keep_float:
        keep_float(model, args.keep_float)
    texts = load_texts(args.data)
    # never past the position embeddings (a small model's limit may be under the default 128)
    max_length = min(args.max_length, max_positions(model.config, model.arch))
    batches = calibration_batches(
        texts, args.model, batch_size=args.batch_size, max_length=max_length, num_samples=args.num_samples
    )
    calibrate(model, batches, args.method, args.percentile, data=str(args.data) if args.data else SHIPPED_DATA_NAME)
    path = save_calibration(model, args.output)
    count = sum(q.is_enabled for q in named_quantizers(model).values())
    print(f"wrote {path}: {count} quantizers, {args.method} on {min(len(texts), args.num_samples)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
