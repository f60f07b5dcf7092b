"""`BaseRunner`: what every backend shares (DESIGN.md, Runtime), the way polygraphy's BaseRunner wraps `infer_impl`.

A runner runs one export directory's model: named NumPy arrays in, named NumPy arrays out. The base class
owns what must not differ between backends:

- the export (`export_dir`, `info`, read once by `trt_runtime.load` and passed in) and its limits
  (`max_batch_size`, `max_sequence_length`, `min_sequence_length`: the export's, or tighter ones a backend
  sets, such as a TensorRT optimization profile's), which the pipelines read to size batches and truncate;
- input validation: `__call__` is final; it checks the feeds (`trt_runtime.validation.validate_feeds`, and a
  backend's extra checks in `_validate`) and only then calls the backend's `_run`, so every backend fails the
  same way on the same bad input;
- the structured account of what was chosen (`choice`: backend and why, which graph and why, what happened to
  its cache), which tests, logs and `python -m trt_runtime run` read instead of parsing prose;
- `close()` and context-manager use (`with trt_runtime.load(dir) as runner: ...`); a closed runner refuses
  calls with a clear error.

A backend subclass sets `backend` and `options_class` (a frozen `RunnerOptions` dataclass: its options, typed
and checked, which `trt_runtime.load` reads without importing the backend), calls `super().__init__`, sets
`self.choice`, and implements `_run`.
"""

from __future__ import annotations

import abc
import enum
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, final, runtime_checkable

import numpy as np

from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ExportInfo, TensorSpec, read_export_info
from trt_runtime.validation import validate_feeds


class CacheStatus(enum.Enum):
    """What happened to the derived artefact a runner loads (an optimized graph, the CPU INT8 graph, ...)."""

    #: no cache applies (nothing derived, caching off, or the backend has none)
    NOT_USED = "not-used"
    #: made now and written to the cache directory
    CREATED = "created"
    #: found in the cache directory, its record checked against the export
    REUSED = "reused"
    #: found but made from something else (its record did not match): made again and replaced
    REBUILT = "rebuilt"
    #: made now and kept in memory only (the cache directory cannot be written, e.g. a read-only export)
    IN_MEMORY = "in-memory"
    #: built explicitly beforehand (`python -m trt_runtime build DIR [--target ...]`), its record checked
    PREBUILT = "prebuilt"


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the export and why, which of its graphs and why, and what happened to the caches.

    Two artefacts may be involved, each with its status: the graph that runs when it is derived from
    model.onnx (`cache`: the CPU INT8 or fused float graph, a TensorRT engine), and the backend library's own
    optimized form of that graph (`session_cache`: ONNX Runtime's optimized graph, OpenVINO's compiled model).
    """

    backend: str  # "onnxruntime" | "tensorrt" | "openvino"
    reason: str  # why this backend ("asked for", "ONNX Runtime fallback: no TensorRT engine in ...")
    graph: str = "exported"  # which graph runs: "exported" (model.onnx), "cpu-int8", "cpu-float", "cpu-integer", "engine", ...
    graph_reason: str = "the exported graph"
    cache: CacheStatus = CacheStatus.NOT_USED  # of the derived graph
    cache_detail: str = ""  # its file, or why there is none, or why it was rebuilt
    session_cache: CacheStatus = CacheStatus.NOT_USED  # of the backend's optimized form of the graph
    session_cache_detail: str = ""

    def describe(self) -> str:
        def status(value: CacheStatus, detail: str) -> str:
            return value.value + (f" ({detail})" if detail else "")

        return (
            f"{self.backend}: {self.reason}; {self.graph_reason}; graph cache "
            f"{status(self.cache, self.cache_detail)}; session cache "
            f"{status(self.session_cache, self.session_cache_detail)}"
        )


class RunnerClosedError(QbertError, RuntimeError):
    """The runner was closed; load the export again."""

    code = "runner-closed"


class BackendUnavailableError(QbertError, RuntimeError):
    """The backend asked for cannot run here; the message says what is missing and what to do.

    Raised by `trt_runtime.load` for an explicit backend, and by a runner that finds at construction that it
    cannot serve this export here (`backend="auto"` then tries the next backend)."""

    code = "backend-unavailable"


class BackendRunError(QbertError, RuntimeError):
    """The backend failed on inputs that passed the runner's checks (the graph and export.json disagree, or the
    machine ran out of memory); the message carries the backend's own error and says what to do."""

    code = "backend-run-failed"


OptionsT = TypeVar("OptionsT", bound="RunnerOptions")


@dataclass(frozen=True)
class RunnerOptions:
    """Base of each backend's options: a frozen dataclass whose fields are the keyword options that
    `trt_runtime.load(dir, backend, **options)` passes on; each subclass checks its values in __post_init__."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def check_names(cls, backend: str, keywords: Mapping[str, Any]) -> None:
        """TypeError naming the options there are, where `keywords` has a name that is not one of them."""
        unknown = sorted(set(keywords) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} for the {backend} backend; it takes "
                f"{', '.join(cls.names())}"
            )

    @classmethod
    def from_keywords(
        cls: type[OptionsT], backend: str, keywords: Mapping[str, Any], base: OptionsT | None = None
    ) -> OptionsT:
        """The options from keyword arguments (on top of `base`); TypeError for a name it does not have."""
        if base is not None and not isinstance(base, cls):
            raise TypeError(
                f"the {backend} runner's options must be a {cls.__name__} (or keyword arguments), got {base!r}"
            )
        cls.check_names(backend, keywords)
        return replace(base, **keywords) if base is not None else cls(**keywords)


class BaseRunner(abc.ABC):
    """Base of the backends' runners (see the module docstring)."""

    #: "onnxruntime", "tensorrt", "openvino"
    backend: ClassVar[str]
    #: the backend's options (a `RunnerOptions` dataclass)
    options_class: ClassVar[type[RunnerOptions]]
    #: what the backend chose; subclasses set it in __init__
    choice: BackendChoice
    #: the options this runner was made with (an `options_class`); subclasses set it in __init__
    options: RunnerOptions

    def __init__(
        self,
        export_dir: str | os.PathLike,
        *,
        info: ExportInfo | None = None,
        reason: str = "asked for",
        verify_sha256: bool = True,
    ) -> None:
        """info: export.json as `trt_runtime.load` read (and checked) it; None reads it here (checking
        model.onnx against it unless verify_sha256=False). reason: why this backend, as the caller decided it."""
        self.export_dir = Path(export_dir)
        self.info = info if info is not None else read_export_info(self.export_dir, verify_sha256=verify_sha256)
        self.choice = BackendChoice(self.backend, reason)
        self._closed = False

    # --- what every backend answers alike -------------------------------------------------------------

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self.info.inputs)

    @property
    def output_names(self) -> list[str]:
        return self.info.output_names

    # limits tighter than export.json's, overridden by a backend that has them (a TensorRT profile's)
    @property
    def max_batch_size(self) -> int | None:
        return None

    @property
    def max_sequence_length(self) -> int | None:
        return None

    @property
    def min_sequence_length(self) -> int:
        return 1

    # --- the previous release's names for parts of `choice` (deprecated; removed in 0.3) ----------------

    @property
    def backend_reason(self) -> str:
        """Deprecated: `choice.reason`."""
        _deprecated("backend_reason", "choice.reason")
        return self.choice.reason

    @property
    def graph_reason(self) -> str:
        """Deprecated: `choice.graph_reason`."""
        _deprecated("graph_reason", "choice.graph_reason")
        return self.choice.graph_reason

    @property
    def cache_status(self) -> str:
        """Deprecated: `choice.session_cache` (an enum) and `choice.session_cache_detail`."""
        _deprecated("cache_status", "choice.session_cache / choice.cache")
        detail = self.choice.session_cache_detail
        return self.choice.session_cache.value + (f" {detail}" if detail else "")

    @final
    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate `feeds` (InputError names the problem), then run them: {output name: array}."""
        if self._closed:
            raise RunnerClosedError(f"{self!r} is closed; load the export again (trt_runtime.load)")
        return self._run(self._validate(feeds))

    def _validate(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The shared checks within this runner's limits; a backend may add its own (and call this first)."""
        return validate_feeds(
            feeds,
            self.info,
            max_batch_size=self.max_batch_size,
            max_sequence_length=self.max_sequence_length,
            min_sequence_length=self.min_sequence_length,
        )

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds (C-contiguous int64 arrays in the export's input order)."""

    def _set_choice(self, **changes: Any) -> None:
        self.choice = replace(self.choice, **changes)

    # --- lifetime ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free what the backend holds (sessions, GPU buffers); later calls raise RunnerClosedError."""
        self._closed = True
        self._close()

    def _close(self) -> None:  # noqa: B027  (a hook: most backends have nothing to free)
        """A backend's own clean-up; called once by close()."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> BaseRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.export_dir)!r}, task={self.info.task!r})"


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"runner.{old} is deprecated; read runner.{new}", DeprecationWarning, stacklevel=3)


@runtime_checkable
class Runner(Protocol):
    """The previous release's name for what a runner offers (every `BaseRunner` is one); kept for type hints."""

    @property
    def backend(self) -> str: ...

    @property
    def info(self) -> ExportInfo: ...

    @property
    def input_specs(self) -> list[TensorSpec]: ...

    @property
    def output_names(self) -> list[str]: ...

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
