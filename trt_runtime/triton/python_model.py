"""A Triton Python-backend model that serves an export directory with trt_runtime.

`python -m trt_runtime triton-repo` copies this file into the repository as `<model>/1/model.py`, the
export directory as `<model>/1/export/` and (unless --no-vendor-runtime) the trt_runtime package as
`<model>/1/trt_runtime/`, so the model needs only numpy, onnxruntime and tokenizers in the Python
environment of Triton's Python backend (tensorrt and cuda-python too, to run the engine there).
config.pbtxt `parameters` choose what it does:

- `mode: "pipeline"`: text in, the task pipeline's answer out. Input `TEXT` (TYPE_STRING, dims [1]):
  one UTF-8 text per batch row. Output `ANSWER` (TYPE_STRING, dims [1]): per row, the JSON of what
  `trt_runtime.pipeline(task, dir)(text)` returns. Request parameters are the pipeline's call options
  (`top_k`, `aggregation_strategy`, ...), except `input_format: "json"`, which makes every TEXT a JSON
  document of one pipeline input: {"question": ..., "context": ...} for question answering,
  {"prompt": ..., "choices": [...]} for multiple choice, {"text": ..., "text_pair": ...} for pairs.
  Triton's request parameters carry int, bool and str only; `options` (a JSON object as a str) carries
  any other value, e.g. {"top_k": null}. `pipeline_options` (JSON) are the pipeline's defaults.
- `mode: "runner"`: the export's ONNX inputs in, its outputs out (trt_runtime.load: the ONNX model in
  ONNX Runtime, where no onnxruntime backend is installed in the server).

Both take `backend` ("auto", "onnxruntime", "tensorrt") and `runner_options` (JSON: intra_op_num_threads,
...). A batch that Triton's dynamic batcher made of several requests runs as one pipeline call (texts
of similar length batched together) or one runner call per input shape; a request that fails gets its
own error response, and the others in the batch still get their answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported for tests or documentation
    pb_utils = None

MODE_PIPELINE = "pipeline"
MODE_RUNNER = "runner"
TEXT = "TEXT"
ANSWER = "ANSWER"
#: request parameter: "text" (default: every TEXT is a text) or "json" (every TEXT is one JSON input)
INPUT_FORMAT = "input_format"
#: request parameter: a JSON object of call options, for values Triton parameters cannot carry
#: (Triton's are int, bool or str: e.g. {"top_k": null} for every label)
OPTIONS = "options"
INPUT_FORMATS = ("text", "json")
#: the export directory inside the model version directory
EXPORT_SUBDIR = "export"


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """config.pbtxt's `parameters` as {key: string_value}."""
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def decode_texts(values: np.ndarray, what: str = TEXT) -> list[str]:
    """UTF-8 texts from a BYTES tensor ([batch, 1] of bytes)."""
    texts = []
    for i, value in enumerate(values.reshape(-1)):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}[{i}] is not UTF-8 text ({e}); send text encoded as UTF-8") from None
    return texts


def read_items(texts: list[str], parameters: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(pipeline inputs, call options) of one request: its TEXT rows and its request parameters."""
    options = dict(parameters)
    if OPTIONS in options:
        try:
            extra = json.loads(options.pop(OPTIONS))
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"request parameter {OPTIONS} must be a JSON object of pipeline options ({e})"
            ) from None
        if not isinstance(extra, dict):
            raise ValueError(f"request parameter {OPTIONS} must be a JSON object, got {type(extra).__name__}")
        options.update(extra)
    input_format = options.pop(INPUT_FORMAT, "text")
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"request parameter {INPUT_FORMAT}={input_format!r}; use 'text' or 'json'")
    if input_format == "text":
        return list(texts), options
    items = []
    for i, text in enumerate(texts):
        try:
            items.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{TEXT}[{i}] is not JSON ({e}) but {INPUT_FORMAT} is 'json'") from None
    return items, options


def answer_json(result: Any) -> bytes:
    """One pipeline result as JSON (NumPy values as lists and numbers)."""

    def convert(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"cannot send a {type(value).__name__} as JSON")

    return json.dumps(result, ensure_ascii=False, default=convert).encode("utf-8")


def split_counts(values: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    """`values` cut into consecutive pieces of `counts` items."""
    pieces, start = [], 0
    for count in counts:
        pieces.append(list(values[start : start + count]))
        start += count
    return pieces


def run_groups(
    keys: Sequence[Any], run: Callable[[list[int]], list[Any]], fail: Callable[[int, Exception], Any]
) -> list[Any]:
    """Run the requests with equal keys together (`run(indices) -> one response each`); when a group
    fails, run its requests one by one so that only the bad request gets `fail(index, error)`."""
    responses: list[Any] = [None] * len(keys)
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    for indices in groups.values():
        try:
            for index, response in zip(indices, run(indices)):
                responses[index] = response
        except Exception as error:
            if len(indices) == 1:
                responses[indices[0]] = fail(indices[0], error)
                continue
            for index in indices:
                try:
                    responses[index] = run([index])[0]
                except Exception as single_error:
                    responses[index] = fail(index, single_error)
    return responses


class TritonPythonModel:
    """Triton's Python-backend entry point (initialize / execute / finalize)."""

    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        if (version_dir / "trt_runtime").is_dir() and str(version_dir) not in sys.path[:1]:
            sys.path.insert(0, str(version_dir))  # the trt_runtime the repository was made with
        from trt_runtime.loader import choose_backend, load
        from trt_runtime.pipelines import pipeline

        config = json.loads(args["model_config"])
        parameters = config_parameters(config)
        self.mode = parameters.get("mode", MODE_PIPELINE)
        self.name = args.get("model_name", "")
        export_dir = version_dir / parameters.get("export_dir", EXPORT_SUBDIR)
        backend = parameters.get("backend", "auto")
        runner_options = json.loads(parameters.get("runner_options") or "{}")
        chosen, _ = choose_backend(export_dir, backend)
        if chosen == "tensorrt" and args.get("model_instance_kind") == "GPU":
            runner_options.setdefault("device", int(args.get("model_instance_device_id") or 0))
        if self.mode == MODE_PIPELINE:
            options = json.loads(parameters.get("pipeline_options") or "{}")
            batch_size = max(1, int(config.get("max_batch_size") or 1))
            task = parameters.get("task") or None
            self.pipeline = pipeline(
                task, export_dir, backend, batch_size=batch_size, **options, **runner_options
            )
            self.runner = self.pipeline.runner
        elif self.mode == MODE_RUNNER:
            self.runner = load(export_dir, backend, **runner_options)
        else:
            raise ValueError(
                f"{self.name}: parameter mode={self.mode!r}; use '{MODE_PIPELINE}' or '{MODE_RUNNER}'"
            )
        self.input_names = [spec.name for spec in self.runner.input_specs]
        reason = self.runner.choice.reason
        if pb_utils is not None:
            pb_utils.Logger.log_info(f"{self.name}: {self.mode} on {self.runner.backend} ({reason})")

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.mode == MODE_PIPELINE:
            return self._execute_pipeline(requests)
        return self._execute_runner(requests)

    def finalize(self) -> None:
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("runner", None)

    # --- text in, JSON out -------------------------------------------------------------------------

    def _execute_pipeline(self, requests: list[Any]) -> list[Any]:
        parsed: list[tuple[list[Any], dict[str, Any]] | Exception] = []
        for request in requests:
            try:
                texts = decode_texts(pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy())
                parsed.append(read_items(texts, json.loads(request.parameters() or "{}")))
            except Exception as error:
                parsed.append(error)
        # requests with the same options run as one pipeline call; a request that could not be read
        # gets a key of its own, so it fails alone
        keys = [
            ("bad", i) if isinstance(p, Exception) else json.dumps(p[1], sort_keys=True)
            for i, p in enumerate(parsed)
        ]

        def run(indices: list[int]) -> list[Any]:
            chunks = []
            for index in indices:
                item = parsed[index]
                if isinstance(item, Exception):
                    raise item
                chunks.append(item)
            items = [x for chunk, _ in chunks for x in chunk]
            results = self.pipeline(items, **chunks[0][1])
            pieces = split_counts(results, [len(chunk) for chunk, _ in chunks])
            return [self._answers(piece) for piece in pieces]

        return run_groups(keys, run, self._error)

    def _answers(self, results: list[Any]) -> Any:
        answers = np.array([[answer_json(result)] for result in results], dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ANSWER, answers)])

    # --- tensors in, tensors out --------------------------------------------------------------------

    def _execute_runner(self, requests: list[Any]) -> list[Any]:
        feeds: list[dict[str, np.ndarray]] = []
        for request in requests:
            feed = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy()
            feeds.append(feed)
        # requests whose inputs have the same shapes (but for the batch axis) run as one batch
        keys = [tuple((name, value.shape[1:]) for name, value in sorted(feed.items())) for feed in feeds]

        def run(indices: list[int]) -> list[Any]:
            batch = {name: np.concatenate([feeds[i][name] for i in indices]) for name in feeds[indices[0]]}
            outputs = self.runner(batch)
            counts = [len(feeds[i][self.input_names[0]]) for i in indices]
            responses, start = [], 0
            for count in counts:
                tensors = [
                    pb_utils.Tensor(name, value[start : start + count]) for name, value in outputs.items()
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
                start += count
            return responses

        return run_groups(keys, run, self._error)

    def _error(self, index: int, error: Exception) -> Any:
        message = f"{self.name}: {type(error).__name__}: {error}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
