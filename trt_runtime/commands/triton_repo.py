"""`python -m trt_runtime triton-repo EXPORT_DIR... --output REPO`: a Triton model repository.

Per export directory NAME (or NAME=DIR): `NAME` (text in, the task pipeline's JSON answer out; Python
backend), `NAME-onnx` (the ONNX model: onnxruntime_onnx, or --onnx-backend python for a server without
the onnxruntime backend) and `NAME-trt` (the TensorRT engine as a tensorrt_plan model; left out, with
the reason, where the export has no usable engine). See docs/serving.md.

Examples:
  python -m trt_runtime triton-repo exports/minilm-float exports/minilm-qdq --output triton-repo
  python -m trt_runtime triton-repo sst2=exports/sst2 --output repo --kinds text,onnx --onnx-backend python \\
      --max-batch-size 32 --max-queue-delay-us 5000 --cpu-instances 2 --force
  python -m trt_runtime triton-repo exports/minilm-qdq --output repo --pipeline-option pooling=mean \\
      --pipeline-option normalize=true
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "triton-repo"
HELP = "make a Triton Inference Server model repository from export directories"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _option(text: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE read as JSON where it is JSON (true, 3, null, "x"), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip() if __doc__ else None
    parser.add_argument("exports", nargs="+", metavar="EXPORT_DIR", help="export directory, or NAME=DIR")
    parser.add_argument("--output", "-o", required=True, metavar="REPO", help="the repository to write")
    parser.add_argument("--force", action="store_true", help="replace REPO if it exists")
    parser.add_argument(
        "--kinds",
        default="text,onnx,plan",
        help="models to make per export, of text,onnx,plan (default: all)",
    )
    parser.add_argument(
        "--onnx-backend",
        choices=("onnxruntime", "python"),
        default="onnxruntime",
        help="serve the ONNX model with Triton's onnxruntime backend, or OrtRunner in the Python backend",
    )
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument(
        "--preferred-batch-sizes",
        type=_int_list,
        help="e.g. 4,8 (default: max and half of it; plans: profile opt)",
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    parser.add_argument("--cpu-instances", type=int, default=1, help="instances of each CPU model")
    parser.add_argument("--gpu-instances", type=int, default=1, help="instances of the plan model per GPU")
    parser.add_argument("--gpus", type=_int_list, help="GPUs of the plan model, e.g. 0,1 (default: all)")
    parser.add_argument(
        "--python-backend",
        choices=("auto", "onnxruntime", "tensorrt"),
        default="auto",
        help="trt_runtime backend inside the Python models (auto: the engine where TensorRT and a GPU are)",
    )
    parser.add_argument(
        "--pipeline-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="default pipeline option of the text models, e.g. pooling=mean, top_k=null (repeat)",
    )
    parser.add_argument(
        "--runner-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runner option of the Python models, e.g. intra_op_num_threads=2 (repeat)",
    )
    parser.add_argument(
        "--no-vendor-runtime",
        action="store_true",
        help="do not copy trt_runtime into the Python models (the server's Python must have it installed)",
    )
    parser.add_argument(
        "--plan-without-engine",
        action="store_true",
        help="write the plan model's config even without an engine (copy it to NAME-trt/1/model.plan later)",
    )


def main(args: argparse.Namespace) -> int:
    from trt_runtime.contract.export_dir import ExportDirError
    from trt_runtime.triton.repository import RepositoryError, RepositoryOptions, write_repository

    options = RepositoryOptions(
        kinds=tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip()),
        onnx_backend=args.onnx_backend,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        cpu_instances=args.cpu_instances,
        gpu_instances=args.gpu_instances,
        gpus=args.gpus,
        python_backend=args.python_backend,
        pipeline_options=dict(args.pipeline_option),
        runner_options=dict(args.runner_option),
        vendor_runtime=not args.no_vendor_runtime,
        plan_without_engine=args.plan_without_engine,
    )
    try:
        report = write_repository(args.exports, args.output, options, overwrite=args.force)
    except (RepositoryError, ExportDirError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if not report.models:
        print("error: no model was made (see the reasons above)", file=sys.stderr)
        return 1
    return 0
