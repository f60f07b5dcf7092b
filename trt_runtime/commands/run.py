"""`python -m trt_runtime run DIR [--task T] TEXT...`: a task pipeline on texts, results printed as JSON.

One result per TEXT, shaped as the pipeline returns it for a list of inputs (docs/runtime.md). TEXT may
be left out to read one text per line from standard input. The backend and why it was chosen go to
standard error. Per task:
  question-answering: --question Q; each TEXT is a context to answer it from.
  multiple-choice: each TEXT is a prompt; --choice C (repeated) gives the choices.
  next-sentence-prediction / text pairs: --text-pair P (repeated, one per TEXT).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

NAME = "run"
HELP = "run a task pipeline on texts (TensorRT or ONNX Runtime) and print JSON"


#: (flags, add_argument options) of every option; also parsed when they come after DIR, among the texts
OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--task",), {"help": "pipeline task (default: the export's task)"}),
    (("--backend",), {"default": "auto", "choices": ("auto", "onnxruntime", "tensorrt", "openvino")}),
    (("--batch-size",), {"type": int, "default": 8}),
    (("--threads",), {"type": int, "help": "ONNX Runtime intra-op threads (default: one per core)"}),
    (("--top-k",), {"type": int, "help": "labels / tokens / answers to return"}),
    (("--all-labels",), {"action": "store_true", "help": "text-classification: every label (top_k=None)"}),
    (("--function-to-apply",), {"choices": ("softmax", "sigmoid", "none")}),
    (("--aggregation-strategy",), {"choices": ("none", "simple", "first", "average", "max")}),
    (("--pooling",), {"choices": ("mean", "cls"), "help": "feature-extraction: sentence embeddings"}),
    (("--normalize",), {"action": "store_true", "help": "feature-extraction: unit-length embeddings"}),
    (("--question",), {"help": "question-answering: the question (TEXTs are contexts)"}),
    (("--handle-impossible-answer",), {"action": "store_true"}),
    (("--choice",), {"action": "append", "dest": "choices", "help": "multiple-choice: a choice (repeat)"}),
    (("--text-pair",), {"action": "append", "dest": "text_pairs", "help": "second text of a pair (repeat)"}),
    (("--indent",), {"type": int, "help": "indent the JSON output"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "log what the runtime does"}),
]


def _add_options(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    for flags, options in OPTIONS:
        parser.add_argument(
            *flags, **({**options, "default": argparse.SUPPRESS} if suppress_defaults else options)
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="export directory (from python -m exporter)")
    # REMAINDER so that options may also follow DIR between texts; main() parses them out again
    parser.add_argument(
        "texts", metavar="TEXT", nargs=argparse.REMAINDER, help="input texts (none: one per line from stdin)"
    )
    _add_options(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip() if __doc__ else None


def _options_among_texts(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after DIR (they arrive inside `texts`) override the ones given before it."""
    parser = argparse.ArgumentParser(prog="python -m trt_runtime run DIR")
    _add_options(parser, suppress_defaults=True)
    parser.add_argument("texts", nargs="*")
    later = parser.parse_intermixed_args(args.texts)
    merged = vars(args) | vars(later)
    return argparse.Namespace(**merged)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's call options, from the flags given (a flag the task does not take is an error)."""
    given = {
        "top_k": None if args.all_labels else args.top_k,
        "function_to_apply": args.function_to_apply,
        "aggregation_strategy": args.aggregation_strategy,
        "pooling": args.pooling,
        "normalize": args.normalize or None,
        "handle_impossible_answer": args.handle_impossible_answer or None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if args.all_labels:
        options["top_k"] = None  # None is a value here: every label
    return options


def _inputs(args: argparse.Namespace, task: str, texts: list[str]) -> list[Any]:
    if task == "question-answering":
        if not args.question:
            raise ValueError("question-answering needs --question; each TEXT is a context")
        return [{"question": args.question, "context": text} for text in texts]
    if task == "multiple-choice":
        if not args.choices:
            raise ValueError("multiple-choice needs the choices: --choice A --choice B ...")
        return [{"prompt": text, "choices": args.choices} for text in texts]
    if args.text_pairs or task == "next-sentence-prediction":
        pairs = args.text_pairs or []
        if len(pairs) != len(texts):
            raise ValueError(
                f"{len(texts)} TEXT(s) but {len(pairs)} --text-pair; give one --text-pair per TEXT"
            )
        return [{"text": text, "text_pair": pair} for text, pair in zip(texts, pairs)]
    return list(texts)


def main(args: argparse.Namespace) -> int:
    from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError
    from trt_runtime.contract.errors import QbertError, report
    from trt_runtime.contract.export_dir import ExportDirError, read_export_info
    from trt_runtime.loader import BackendUnavailableError
    from trt_runtime.pipelines import ALIASES, pipeline

    args = _options_among_texts(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        task = (
            ALIASES.get(args.task, args.task) if args.task else read_export_info(args.directory, False).task
        )
        inputs = _inputs(args, task, texts)
        if not inputs:
            raise ValueError("no TEXT given (as arguments or on stdin)")
        runner_options = {} if args.threads is None else {"intra_op_num_threads": args.threads}
        pipe = pipeline(task, args.directory, args.backend, batch_size=args.batch_size, **runner_options)
        backend = pipe.runner.backend
        print(f"backend: {backend} ({pipe.runner.choice.reason})", file=sys.stderr)
        results = pipe(inputs, **_options(args))
    except (
        ValueError,
        TypeError,
        ExportDirError,
        BackendUnavailableError,
        EngineMismatchError,  # a stale engine picked by backend="auto": the message says to rebuild
    ) as e:  # InputError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (QbertError, OSError) as e:  # the backend failed on checked inputs, a file could not be read
        return report(e)
    json.dump(results, sys.stdout, indent=args.indent, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0
