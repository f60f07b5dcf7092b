"""`python -m trt_runtime run DIR [options] TEXT...`: a task pipeline on texts, results as JSON Lines.

Prints one JSON result per TEXT on its own line (JSON Lines), in input order, each as soon as its batch is
computed (--batch-size texts; 1 when reading an interactive terminal), shaped as the pipeline returns the
result of one input of a list (docs/runtime.md). TEXT left out: one text per line from standard input
(blank lines skipped), read as it arrives. Options may come before or after DIR and between texts;
everything after `--` is a TEXT (e.g. `-- "-5 degrees"`). The backend and why it was chosen go to
standard error. Exit status 0 done, 2 bad arguments or input (`error: ...` on stderr; results already
printed stay printed). Per task:
  question-answering: --question Q; each TEXT is a context to answer it from.
  multiple-choice: each TEXT is a prompt; --choice C (repeated) gives the choices.
  next-sentence-prediction / text pairs: --text-pair P (repeated, one per TEXT).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

NAME = "run"
HELP = "run a task pipeline on texts (TensorRT or ONNX Runtime) and print JSON Lines, one result per text"
#: __main__ hands this command the arguments after `--` apart (args.literal_texts), never parsed as options
TAKES_LITERALS = True


def positive_int(value: str) -> int:
    number = int(value)  # argparse turns a ValueError into "invalid positive_int value: ..."
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


#: (flags, add_argument options) of every option; also parsed when they come after DIR, among the texts
OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--task",), {"help": "pipeline task (default: the export's task)"}),
    (("--backend",), {"default": "auto", "choices": ("auto", "onnxruntime", "tensorrt", "openvino")}),
    (("--batch-size",), {"type": positive_int, "help": "texts per model run (default: 8; 1 on a terminal)"}),
    (("--threads",), {"type": positive_int, "help": "ONNX Runtime intra-op threads (default: one per core)"}),
    (("--top-k",), {"type": positive_int, "help": "labels / tokens / answers to return"}),
    (("--all-labels",), {"action": "store_true", "help": "text-classification: every label (top_k=None)"}),
    (("--function-to-apply",), {"choices": ("softmax", "sigmoid", "none")}),
    (("--aggregation-strategy",), {"choices": ("none", "simple", "first", "average", "max")}),
    (("--pooling",), {"choices": ("mean", "cls"), "help": "feature-extraction: sentence embeddings"}),
    (("--normalize",), {"action": "store_true", "help": "feature-extraction: unit-length embeddings"}),
    (("--question",), {"help": "question-answering: the question (TEXTs are contexts)"}),
    (("--handle-impossible-answer",), {"action": "store_true"}),
    (("--choice",), {"action": "append", "dest": "choices", "help": "multiple-choice: a choice (repeat)"}),
    (("--text-pair",), {"action": "append", "dest": "text_pairs", "help": "second text of a pair (repeat)"}),
    (("--indent",), {"type": int, "help": "indent each JSON result (then no longer one per line)"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "log what the runtime does"}),
]


def _add_options(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    for flags, options in OPTIONS:
        parser.add_argument(
            *flags, **({**options, "default": argparse.SUPPRESS} if suppress_defaults else options)
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # DIR may also come after `--` (then as the first literal argument)
    parser.add_argument("directory", metavar="DIR", nargs="?", help="export directory (from python -m exporter)")
    # REMAINDER so that options may also follow DIR between texts; main() parses them out again
    parser.add_argument(
        "texts", metavar="TEXT", nargs=argparse.REMAINDER, help="input texts (none: one per line from stdin)"
    )
    _add_options(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1].strip() if __doc__ else None


def _options_among_texts(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after DIR (they arrive inside `texts`) override the ones given before it; the
    arguments after `--` are texts as they are."""
    parser = argparse.ArgumentParser(prog="python -m trt_runtime run DIR")
    _add_options(parser, suppress_defaults=True)
    parser.add_argument("texts", nargs="*")
    later = parser.parse_intermixed_args(args.texts)
    merged = argparse.Namespace(**(vars(args) | vars(later)))
    literal = list(getattr(args, "literal_texts", None) or [])
    if merged.directory is None:
        if not literal:
            parser.error("the following arguments are required: DIR")
        merged.directory = literal.pop(0)
    merged.texts = [*later.texts, *literal]
    return merged


#: pipeline option -> the flag(s) that set it
FLAGS = {
    "top_k": "--top-k/--all-labels",
    "function_to_apply": "--function-to-apply",
    "aggregation_strategy": "--aggregation-strategy",
    "pooling": "--pooling",
    "normalize": "--normalize",
    "handle_impossible_answer": "--handle-impossible-answer",
}


def _options(args: argparse.Namespace, task_options: Iterable[str], task: str) -> dict[str, Any]:
    """The pipeline's call options, from the flags given; a flag the task does not take is an error
    that names the flag."""
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
    unknown = [FLAGS[name] for name in options if name not in task_options]
    if unknown:
        taken = [FLAGS[name] for name in FLAGS if name in task_options]
        raise ValueError(
            f"{', '.join(unknown)}: not an option of the {task} pipeline; it takes {', '.join(taken) or 'none of them'}"
        )
    if options.get("normalize") and "pooling" not in options:
        raise ValueError("--normalize needs a sentence embedding: add --pooling mean (or --pooling cls)")
    return options


def _stdin_texts() -> Iterator[str]:
    for line in sys.stdin:  # as the lines arrive
        if line.strip():
            yield line.rstrip("\n")


def _inputs(args: argparse.Namespace, task: str, texts: Iterable[str]) -> Iterator[Any]:
    if task == "question-answering":
        if not args.question:
            raise ValueError("question-answering needs --question; each TEXT is a context")
        return ({"question": args.question, "context": text} for text in texts)
    if task == "multiple-choice":
        if not args.choices:
            raise ValueError("multiple-choice needs the choices: --choice A --choice B ...")
        return ({"prompt": text, "choices": args.choices} for text in texts)
    if args.text_pairs or task == "next-sentence-prediction":
        pairs = args.text_pairs or []
        if isinstance(texts, list) and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} TEXT(s) but {len(pairs)} --text-pair; give one --text-pair per TEXT")
        return _paired(texts, pairs)
    return iter(texts)


def _paired(texts: Iterable[str], pairs: list[str]) -> Iterator[dict[str, str]]:
    count = 0
    for count, text in enumerate(texts, start=1):
        if count > len(pairs):
            raise ValueError(f"more TEXTs than the {len(pairs)} --text-pair; give one --text-pair per TEXT")
        yield {"text": text, "text_pair": pairs[count - 1]}
    if count < len(pairs):
        raise ValueError(f"{count} TEXT(s) but {len(pairs)} --text-pair; give one --text-pair per TEXT")


def main(args: argparse.Namespace) -> int:
    from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError
    from trt_runtime.contract.errors import QbertError, report
    from trt_runtime.contract.export_dir import ExportDirError, read_export_info
    from trt_runtime.loader import BackendUnavailableError
    from trt_runtime.pipelines import ALIASES, pipeline, pipeline_class

    args = _options_among_texts(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from_stdin = not args.texts
    texts: Iterable[str] = _stdin_texts() if from_stdin else list(args.texts)
    # a terminal: answer each line as it is typed, not once a batch has filled up
    batch_size = args.batch_size or (1 if from_stdin and sys.stdin.isatty() else 8)
    printed = 0
    try:
        task = (
            ALIASES.get(args.task, args.task) if args.task else read_export_info(args.directory, False).task
        )
        options = _options(args, pipeline_class(task).options, task)
        inputs = _inputs(args, task, texts)
        runner_options = {} if args.threads is None else {"intra_op_num_threads": args.threads}
        pipe = pipeline(task, args.directory, args.backend, batch_size=batch_size, **runner_options)
        print(f"backend: {pipe.runner.backend} ({pipe.runner.choice.reason})", file=sys.stderr, flush=True)
        for result in pipe(inputs, **options):  # a generator in: results streamed out batch by batch
            sys.stdout.write(json.dumps(result, indent=args.indent, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            printed += 1
        if not printed:
            raise ValueError("no TEXT given (as arguments or on stdin)")
    except (
        ValueError,
        TypeError,
        ExportDirError,
        BackendUnavailableError,
        EngineMismatchError,  # a stale engine picked by backend="auto": the message says to rebuild
    ) as e:  # InputError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except (QbertError, OSError) as e:  # the backend failed on checked inputs, a file could not be read
        return report(e)
    return 0
