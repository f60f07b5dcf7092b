"""What every task pipeline shares: options, input checks, tokenization, batching and running.

A pipeline is tokenizer -> runner -> NumPy post-processing. Texts are encoded one by one exactly as
transformers' fast tokenizers encode them; batches are formed from rows of similar length, padded on
the right to their longest row, and each row's outputs are cut back to its own length, so the
post-processing sees what an unpadded Hugging Face pipeline sees.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding

from trt_runtime.backends.base import BaseRunner
from trt_runtime.contract.export_dir import ExportDirError, ExportInfo
from trt_runtime.contract.text import text_problem
from trt_runtime.tokenization import Text, TextTokenizer
from trt_runtime.validation import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS, InputError

SEQUENCE_AXIS = "sequence_length"
DEFAULT_BATCH_SIZE = 8
#: a model run's token budget where batch_size is not given: short texts go in runs of more than batch_size rows
#: while rows x the longest row's tokens stays within it (8 rows of 256 tokens): fewer, larger runs, whose GEMMs
#: are faster per token (text-embeddings-inference batches by such a budget, its --max-batch-tokens; measured in
#: docs/benchmarks.md, "Batching by tokens")
DEFAULT_MAX_BATCH_TOKENS = 2048
#: the most rows one run takes by the token budget
MAX_BUDGET_ROWS = 256
#: transformers' tokenizer keywords that the pipelines honour (how each task takes them: `tokenizer_keywords`)
TOKENIZER_KEYWORDS = ("truncation", "max_length", "padding")
TRUNCATIONS = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")
PADDINGS = (True, False, "longest", "max_length", "do_not_pad")
#: where the per-call settings travel in the options that `_run` receives
CALL = "call settings"


@dataclass(frozen=True)
class CallSettings:
    """What every task takes per call besides its own options, with transformers' meaning.

    batch_size: rows per model run. max_batch_tokens: more rows per run than batch_size while rows x the
    longest row's tokens stays within it (up to MAX_BUDGET_ROWS and the backend's max batch); None: batch_size
    rows exactly. The pipeline's default is DEFAULT_MAX_BATCH_TOKENS unless batch_size is given (when made, or
    per call): then batch_size rows, as transformers runs them. truncation: None (default) truncates an input longer than the model
    takes with a warning; True or a strategy truncates to max_length silently; False raises instead.
    max_length: the longest encoding (capped at the model's limit). padding: results never depend on it
    (rows are cut back to their own length) except "max_length", which pads every row to max_length, so
    token-level results (feature-extraction without pooling) keep the padded positions, as transformers'.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = None
    truncation: bool | str | None = None
    max_length: int | None = None
    padding: bool | str = False

    @staticmethod
    def checked(**given: Any) -> dict[str, Any]:
        """The settings given, checked; the error names the option and the values it takes."""
        if "batch_size" in given and (
            isinstance(given["batch_size"], bool) or not isinstance(given["batch_size"], int) or given["batch_size"] < 1
        ):
            raise ValueError(f"batch_size must be a positive int, got {given['batch_size']!r}")
        tokens = given.get("max_batch_tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"max_batch_tokens must be a positive int (or None: batch_size rows), got {tokens!r}")
        if given.get("truncation") is not None and given["truncation"] not in TRUNCATIONS:
            raise ValueError(f"truncation={given['truncation']!r}; choose one of {TRUNCATIONS}")
        if given.get("max_length") is not None and (
            isinstance(given["max_length"], bool) or not isinstance(given["max_length"], int) or given["max_length"] < 2
        ):
            raise ValueError(f"max_length must be an int >= 2 (room for the special tokens), got {given['max_length']!r}")
        if "padding" in given and given["padding"] not in PADDINGS:
            raise ValueError(f"padding={given['padding']!r}; choose one of {PADDINGS}")
        if given.get("padding") == "max_length" and given.get("max_length") is None:
            raise ValueError("padding='max_length' needs max_length=N (how long to pad)")
        return given


def is_stream(inputs: Any) -> bool:
    """A generator or iterator, or a dataset (len + indexing, e.g. transformers' KeyDataset, a datasets.Dataset):
    what transformers' pipelines answer with an iterator of results instead of a list."""
    if isinstance(inputs, (str, bytes, Mapping, list, tuple)):
        return False
    return isinstance(inputs, Iterator) or (hasattr(inputs, "__len__") and hasattr(inputs, "__getitem__"))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def check_text(text: Any, what: str) -> str:
    """A text a pipeline can encode: a str the model sees something of (`trt_runtime.contract.text`: not
    empty, not only control or zero-width characters, valid Unicode); the error says which input is wrong."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    problem = text_problem(text)
    if problem is not None:
        raise InputError(f"{what} {problem}")
    return text


def batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


def token_batches(
    order: Sequence[int], lengths: Sequence[int], rows: int, max_tokens: int | None, max_rows: int
) -> Iterator[list[int]]:
    """`order` (indices by ascending length) in runs of `rows`, or of more (up to `max_rows`) while rows x the
    run's longest length stays within `max_tokens`; None: runs of `rows`."""
    if max_tokens is None:
        yield from batches(order, rows)
        return
    run: list[int] = []
    for index in order:  # ascending: the newcomer is the run's longest
        limit = max(rows, min(max_rows, max_tokens // max(1, lengths[index])))
        if len(run) >= limit:
            yield run
            run = []
        run.append(index)
    if run:
        yield run


def pad_rows(
    encodings: Sequence[Encoding], pad_id: int, names: Sequence[str], min_length: int = 1
) -> dict[str, np.ndarray]:
    """Right-padded [rows, max(longest, min_length)] arrays of the inputs in `names` (only those the model
    takes); min_length: a backend's shortest sequence (a TensorRT profile's), padding masked out."""
    length = max(min_length, *(len(e.ids) for e in encodings))
    ids = np.full((len(encodings), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    types = np.zeros((len(encodings), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = encoding.attention_mask
        types[row, :n] = encoding.type_ids
    arrays = {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_TYPE_IDS: types}
    return {name: arrays[name] for name in names}


class Pipeline:
    """Base of the task pipelines: `pipeline(inputs, **options)` -> what transformers' pipeline returns.

    Subclasses set `task` and `options` (name -> default; each can be given when the pipeline is made or
    per call), implement `_run(items, options) -> results`, and override `_items` (how inputs are read)
    and `_shape` (how results are returned) where the task's input and output differ from str -> result.
    """

    task: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    #: how the task takes the tokenizer keywords, as its transformers 5 pipeline does: "keywords" (truncation=,
    #: max_length=, padding=, like text-classification's **tokenizer_kwargs), the name of a dict option
    #: ("tokenize_kwargs": feature-extraction, which also takes truncation=; "tokenizer_kwargs": fill-mask),
    #: or None (token-classification and question-answering truncate or window by themselves)
    tokenizer_keywords: ClassVar[str | None] = None

    def __init__(
        self, runner: BaseRunner, tokenizer: TextTokenizer, *, batch_size: int | None = None, **options
    ):
        if not isinstance(runner, BaseRunner):
            raise TypeError(
                f"a pipeline runs a trt_runtime runner (a BaseRunner, e.g. trt_runtime.load(dir)), got "
                f"{type(runner).__name__}"
            )
        if runner.info.task != self.task:
            raise ValueError(task_mismatch(self.task, runner.info.task, runner.export_dir))
        rows_given = batch_size is not None
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        CallSettings.checked(batch_size=batch_size)  # the per-call check and its error
        if tokenizer.max_token_id >= runner.info.vocab_size:
            raise ExportDirError(
                f"the tokenizer of {runner.export_dir} has token ids up to "
                f"{tokenizer.max_token_id}, but the model's vocabulary (export.json vocab_size) has "
                f"{runner.info.vocab_size} entries, so some texts would give ids the model cannot look up; "
                f"use the checkpoint's own tokenizer files (re-export), or resize the model's embeddings"
            )
        self.runner = runner
        self.tokenizer = tokenizer
        self.batch_size = min(batch_size, runner.max_batch_size or batch_size)
        #: the most rows a run takes by the token budget
        self.max_budget_rows = min(MAX_BUDGET_ROWS, runner.max_batch_size or MAX_BUDGET_ROWS)
        settings = self._pop_call_settings(options)
        settings.setdefault("max_batch_tokens", None if rows_given else DEFAULT_MAX_BATCH_TOKENS)
        self.call_defaults = CallSettings(self.batch_size, **settings)
        self.defaults = self._merge(options)
        # the longest encoding the model takes: the export's, a backend's (TensorRT profile), the tokenizer's
        limits = [runner.info.max_sequence_length, runner.max_sequence_length, tokenizer.model_max_length]
        self.max_length = min(int(limit) for limit in limits if limit)
        #: the shortest sequence the backend takes (a TensorRT profile's min); rows are padded up to it
        self.min_length = max(1, int(runner.min_sequence_length))

    @property
    def info(self) -> ExportInfo:
        return self.runner.info

    def __call__(self, inputs: Any = None, **options: Any) -> Any:
        """Results for a str (or the task's input), a list of them, or, streamed as an iterator of results
        computed batch_size inputs at a time (up to MAX_BUDGET_ROWS under a token budget), a generator or
        a dataset (as transformers does)."""
        options = dict(options)
        given = self._pop_call_settings(options)
        if "batch_size" in given:  # rows per run, as transformers runs them, unless a budget is given too
            given.setdefault("max_batch_tokens", None)
        call = replace(self.call_defaults, **given)
        call = replace(call, batch_size=min(call.batch_size, self.runner.max_batch_size or call.batch_size))
        if is_stream(inputs):
            return self._stream(inputs, options, call)
        items, single = self._items(inputs, options)  # may take input keywords (question=, context=) out
        if not items:
            raise InputError(f"no inputs given to the {self.task} pipeline; pass a str or a list of them")
        results = self._run(items, {**self._merge(options, self.defaults), CALL: call})
        return self._shape(results, single, options)

    @classmethod
    def call_option_names(cls) -> tuple[str, ...]:
        """The per-call options the task takes besides its own `options` (transformers' names)."""
        names = {"keywords": TOKENIZER_KEYWORDS, "tokenize_kwargs": ("truncation", "tokenize_kwargs")}
        style = cls.tokenizer_keywords
        return ("batch_size", "max_batch_tokens", *names.get(style or "", (style,) if style else ()))

    def _pop_call_settings(self, options: dict[str, Any]) -> dict[str, Any]:
        """Take the call options out of `options` as CallSettings fields (a dict option's keys included)."""
        taken = {name: options.pop(name) for name in self.call_option_names() if name in options}
        style = self.tokenizer_keywords
        if style in ("tokenize_kwargs", "tokenizer_kwargs") and style in taken:
            given = dict(taken.pop(style) or {})
            unknown = sorted(set(given) - set(TOKENIZER_KEYWORDS))
            if unknown:
                raise TypeError(f"{style} {', '.join(unknown)}: this pipeline honours {', '.join(TOKENIZER_KEYWORDS)}")
            if "truncation" in given and "truncation" in taken:  # transformers' own check
                raise ValueError(f"truncation parameter defined twice (given as keyword argument as well as in {style})")
            taken.update(given)
        return CallSettings.checked(**taken)

    def _stream(self, inputs: Iterable[Any], options: dict[str, Any], call: CallSettings) -> Iterator[Any]:
        rows = (inputs[i] for i in range(len(inputs))) if not isinstance(inputs, Iterator) else inputs  # type: ignore[index, arg-type]
        chunk: list[Any] = []
        start = 0
        size = call.batch_size if call.max_batch_tokens is None else max(call.batch_size, self.max_budget_rows)
        for item in rows:
            chunk.append(item)
            if len(chunk) == size:
                yield from self._call_list(chunk, options, call, start)
                start += len(chunk)
                chunk = []
        if chunk:
            yield from self._call_list(chunk, options, call, start)

    def _call_list(self, inputs: list[Any], options: dict[str, Any], call: CallSettings, start: int = 0) -> list[Any]:
        options = dict(options)
        try:
            items, single = self._items(inputs, options)
        except InputError as e:  # "input i" counts within this batch: say where the batch starts
            raise (InputError(f"{e} (input numbers count from input {start} of the stream)") if start else e) from None
        results = self._run(items, {**self._merge(options, self.defaults), CALL: call})
        return list(self._shape(results, single, options))

    # --- for subclasses -----------------------------------------------------------------------------

    def _items(self, inputs: Any, options: dict[str, Any]) -> tuple[list[Any], Any]:
        """The list of inputs, and whether one was given alone (truthy: `_shape` unwraps the one result)."""
        if isinstance(inputs, str):
            return [check_text(inputs, "the input")], True
        if isinstance(inputs, (list, tuple)):
            return [check_text(text, f"input {i}") for i, text in enumerate(inputs)], False
        raise InputError(
            f"the {self.task} pipeline takes a str or a list of str, got {type(inputs).__name__}"
        )

    def _run(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def _shape(self, results: list[Any], single: Any, call_options: dict[str, Any]) -> Any:
        return results[0] if single else results

    # --- shared machinery ---------------------------------------------------------------------------

    def _merge(self, options: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} for the {self.task} pipeline; it takes: {known}"
            )
        return {**(base if base is not None else self.options), **options}

    def encode(
        self,
        texts: Sequence[Text],
        *,
        truncation: str = "longest_first",
        max_length: int | None = None,
        stride: int = 0,
        windows: bool = False,
        call: CallSettings | None = None,
    ) -> list[Encoding]:
        """Encode with special tokens, truncating to the model's limit with a warning, or (windows=True)
        keeping the rest in `.overflowing` windows that overlap by `stride` tokens; `call`: the caller's
        truncation, max_length and padding (CallSettings)."""
        requested = call.truncation if call else None
        if isinstance(requested, str) and requested != "do_not_truncate":
            truncation = requested
        pads = call is not None and call.padding not in (False, "do_not_pad")
        # transformers' tokenizers: max_length truncates unless padding is asked for without truncation=,
        # where it is only the length to pad to
        if call and call.max_length and not (pads and requested is None):
            max_length = call.max_length
        limit = min(max_length or self.max_length, self.max_length)
        try:
            encodings = self.tokenizer.encode(texts, max_length=limit, truncation=truncation, stride=stride)
        except ValueError as e:
            raise InputError(f"cannot fit the input into {limit} tokens: {e}") from None
        truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if truncated and requested in (False, "do_not_truncate"):
            raise InputError(
                f"input {truncated[0]} is longer than {limit} tokens and truncation={requested!r}; "
                f"pass truncation=True (or a shorter text)"
            )
        if call and call.padding == "max_length" and call.max_length:
            for encoding in encodings:  # rows longer than that stay as they are
                encoding.pad(min(call.max_length, self.max_length), pad_id=self.tokenizer.pad_token_id)
        if truncated and not windows and requested is None:
            warnings.warn(
                f"{len(truncated)} input(s) (first: input {truncated[0]}) are longer than {limit} tokens "
                f"and were truncated; the model did not see the rest",
                UserWarning,
                stacklevel=3,
            )
        return encodings

    def run_rows(self, encodings: Sequence[Encoding], call: CallSettings | None = None) -> list[dict[str, np.ndarray]]:
        """Run every encoding (one row each) in batches of similar length (call.batch_size rows, or more by
        call.max_batch_tokens); per-row outputs, cut to the row's own length."""
        call = call or self.call_defaults
        lengths = [max(self.min_length, len(encoding.ids)) for encoding in encodings]
        order = sorted(range(len(encodings)), key=lambda i: lengths[i])  # less padding per batch
        names = [spec.name for spec in self.runner.input_specs]
        sequence_outputs = {
            spec.name for spec in self.info.outputs if len(spec.shape) > 1 and spec.shape[1] == SEQUENCE_AXIS
        }
        rows: list[dict[str, np.ndarray]] = [{} for _ in encodings]
        for batch in token_batches(order, lengths, call.batch_size, call.max_batch_tokens, self.max_budget_rows):
            feeds = pad_rows([encodings[i] for i in batch], self.tokenizer.pad_token_id, names, self.min_length)
            outputs = self.runner(feeds)
            for position, index in enumerate(batch):
                length = len(encodings[index].ids)
                rows[index] = {
                    name: value[position, :length] if name in sequence_outputs else value[position]
                    for name, value in outputs.items()
                }
        return rows


def task_mismatch(task: str, export_task: str, where: object) -> str:
    return (
        f"pipeline({task!r}) needs a {task} export, but {where} is a {export_task} export; use "
        f"pipeline({export_task!r}, ...) or export the model with task={task!r}"
    )


def top_k_option(value: Any, what: str = "top_k") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int (or None for all), got {value!r}")
    return value


def labels_of(info: ExportInfo, count: int) -> list[str]:
    """Label names by class index, from export.json's id2label (LABEL_i where it has none)."""
    id2label = info.id2label or {}
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]
