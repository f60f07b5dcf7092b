"""`OpenVinoRunner`: an export directory's own model.onnx compiled by OpenVINO for the CPU (a `BaseRunner`).

What runs is model.onnx as exported, read by OpenVINO's ONNX frontend with no rewriting: a qdq export as
its Q/DQ graph (OpenVINO's low-precision transformations run the quantized layers in int8), a float export
as it is. An integer export is refused today with a message naming the ops the frontend cannot convert
(OpenVINO 2026.4 has no conversion rule for the `ibert` ops and does not expand their ONNX function
bodies); `trt_runtime.load(backend="auto")` then runs it on ONNX Runtime.

OpenVINO's properties, as its CPU plugin documents them (OpenVINO docs, cpu-device.rst, "Supported
Properties"; performance-hint-and-thread-scheduling.rst):

- INFERENCE_PRECISION_HINT: "f32" unless `precision="bf16"`. OpenVINO's own default on a CPU with native
  bf16 (AVX512_BF16, AMX) is bf16 (cpu-device.rst, "Execution Mode Hint"); f32 keeps the answers those of
  the exported graph. Quantized layers run in int8 in either (precision-control.rst, "Execution Mode").
- PERFORMANCE_HINT: "latency" (one stream: one call uses every thread) or "throughput" (several streams,
  each with its own threads: a call's batch is split into OPTIMAL_NUMBER_OF_INFER_REQUESTS parts that run
  at once, so one call still uses every stream).
- INFERENCE_NUM_THREADS: `intra_op_num_threads`, the name OrtRunner uses, so that one option means the
  same on either CPU backend (`trt_runtime.load(dir, intra_op_num_threads=2)`); None: OpenVINO's default.
- DYNAMIC_QUANTIZATION_GROUP_SIZE: `dynamic_quantization_group_size`. OpenVINO quantizes the activations
  of a MatMul with 8-bit weights and a float input (in a qdq export: the FFN output projection, whose
  input the exporter keeps float for TensorRT) in groups of that many values on every call (OpenVINO docs,
  llm-inference-hf.rst, "Dynamic quantization": larger groups are faster and less accurate); 0 turns it
  off, None keeps OpenVINO's default.
- CACHE_DIR: the compiled-model cache, below.

The compiled-model cache. OpenVINO exports a compiled model to `CACHE_DIR/<hash>.blob` and imports it
on the next compile of the same file (model-caching-overview.rst). The hash covers the model file's
absolute path and the plugin's compile-relevant settings; the blob's header records the file's size and
mtime and OpenVINO's build, and OpenVINO drops a blob whose header does not match and compiles again
(src/inference/src/dev/core_impl.cpp, `load_model_from_cache`). The inference precision is not in that
hash: OpenVINO 2026.4 imports a blob compiled for f32 when asked for bf16, and that model answers NaN
(measured here on a tiny BERT; a blob compiled for bf16 is right), so each precision has its own cache
directory. Threads and the performance hint are applied at import (same answers from one blob, checked).
OpenVINO writes the blob in place with a plain `std::ofstream` (src/inference/src/cache_manager.hpp,
`FileStorageCacheManager`), so it is never let write into the directory this runner reads from. The cache is
a derived artefact like the ONNX Runtime backend's (`trt_runtime.backends.artefacts`, one implementation):

- it lives in the export's cache location (`cache_dir=`, else $QBERT_CACHE_DIR, else `<export>/.cache`; the
  entry of this model.onnx's sha256, entered without following a link: a symlinked `.cache` is refused and
  the runner compiles in memory), as the directory `openvino-<precision>-<sha256[:8] of model.onnx's real
  path>`;
- a missing or mismatched cache is compiled, under the cache location's lock, into a fresh staging directory
  that replaces the old one whole (`files.atomic_directory`), then its record (`artefacts.ArtefactRecord`,
  `openvino-...json` beside it) is written: the sha256 of model.onnx, OpenVINO's version, the precision, the
  model file's path, size and mtime, the CPU as OpenVINO names it and its capabilities, and the sha256 of
  the directory's files;
- before use the record is checked against all of that and the files against their sha256; a mismatch
  (another model.onnx, another OpenVINO, another CPU, a substituted blob) is rebuilt the same way and
  `choice.cache` says REBUILT and why;
- where nothing can be written (a read-only export and no cache directory) the model is compiled in memory
  (CacheStatus.IN_MEMORY); `cache=False` never uses a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from trt_runtime.backends.artefacts import (
    CacheLocation,
    Expected,
    cache_location_for,
    directory_sha256,
    verify_directory,
    write_record,
)
from trt_runtime.backends.base import BackendUnavailableError, BaseRunner, CacheStatus
from trt_runtime.backends.openvino.options import PERFORMANCE_HINTS, PRECISIONS, OpenVinoOptions
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportDirError, ExportInfo
from trt_runtime.contract.files import atomic_directory, sha256_file

logger = logging.getLogger(__name__)

#: one compile at a time per process: OpenVINO 2026.4's compile_model, run from several threads at once with a
#: CACHE_DIR, leaves the process's C locale at "C" (reproduced: 8 threads loading one fresh export turned
#: locale.getpreferredencoding() from UTF-8 to ANSI_X3.4-1968, which then broke every text-mode subprocess
#: call of the process); serialized, it restores the locale as it found it
_COMPILE_LOCK = threading.Lock()

DEVICE = "CPU"
#: bumped when the record's meaning changes, so that older caches are rebuilt
RECORD_VERSION = 2
#: a cache entry that verifies but whose blob OpenVINO would not import (LOADED_FROM_CACHE false)
_BLOB_REFUSED = "OpenVINO did not import its blob"
INSTALL_HINT = "pip install qbert-deploy[openvino] (or pip install openvino)"


class OpenVinoUnavailable(BackendUnavailableError):
    """OpenVINO is not installed, or cannot compile this export; the message says which and what to do."""

    code = "openvino-unavailable"


def import_openvino() -> Any:
    """The `openvino` module, or OpenVinoUnavailable saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise OpenVinoUnavailable(
            f"the OpenVINO backend needs the openvino package, which is not installed here ({e}): "
            f"{INSTALL_HINT}; or use backend='onnxruntime' (backend='auto' does)"
        ) from None
    return openvino


def openvino_status() -> tuple[bool, str]:
    """Whether the openvino package can be imported here (without importing it), and the reason if not."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return False, f"openvino is not installed ({INSTALL_HINT})"
    return True, "openvino is installed"


def _unconverted_ops(message: str) -> str | None:
    """The ops that OpenVINO's ONNX frontend names in its "Model wasn't fully converted" summary."""
    found = []
    for pattern in (r"No conversion rule found for operations: ([^\n]+)", r"Conversion is failed for: ([^\n]+)"):
        found += [op.strip() for match in re.findall(pattern, message) for op in match.split(",")]
    return ", ".join(dict.fromkeys(op for op in found if op)) or None


class OpenVinoRunner(BaseRunner):
    """Runs an export directory's model.onnx with OpenVINO on the CPU (see the module docstring).

    precision: "f32" (default) | "bf16" (INFERENCE_PRECISION_HINT; bf16 only where OpenVINO lists BF16 in
        the CPU's OPTIMIZATION_CAPABILITIES). performance_hint: "latency" (default) | "throughput".
    intra_op_num_threads: INFERENCE_NUM_THREADS (None: OpenVINO's default, the cores of one NUMA node).
    dynamic_quantization_group_size: DYNAMIC_QUANTIZATION_GROUP_SIZE (None: OpenVINO's default; 0: off).
    cache: use the compiled-model cache; cache_dir: its root (default <export>/.cache).
    After loading, `compiled_model` is OpenVINO's CompiledModel and `properties` the settings it reports.
    """

    backend = "openvino"
    options_class = OpenVinoOptions
    options: OpenVinoOptions

    def __init__(
        self,
        export_dir: str | os.PathLike,
        options: OpenVinoOptions | None = None,
        *,
        info: ExportInfo | None = None,
        reason: str = "asked for",
        verify_sha256: bool = True,
        **keywords: Any,
    ):
        self.options = OpenVinoOptions.from_keywords(self.backend, keywords, base=options or OpenVinoOptions())
        precision, performance_hint = self.options.precision, self.options.performance_hint
        intra_op_num_threads = self.options.intra_op_num_threads
        dynamic_quantization_group_size = self.options.dynamic_quantization_group_size
        super().__init__(export_dir, info=info, reason=reason, verify_sha256=verify_sha256)
        self._ov = import_openvino()
        self._core = self._ov.Core()
        self.precision = precision
        self.performance_hint = performance_hint
        capabilities = self._core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in capabilities:
            raise ValueError(
                f"precision='bf16': OpenVINO has no bf16 on this CPU (its OPTIMIZATION_CAPABILITIES are "
                f"{', '.join(capabilities)}); use precision='f32'"
            )
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "PERFORMANCE_HINT": PERFORMANCE_HINTS[performance_hint],
        }
        if intra_op_num_threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = intra_op_num_threads
        if dynamic_quantization_group_size is not None:
            self._config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = dynamic_quantization_group_size
        self.model_path = self.export_dir / MODEL_ONNX
        self.compiled_model, status, detail = self._compile(self.options.cache, self.options.cache_dir)
        self._check_signature()
        self.properties = {
            name: _readable(self.compiled_model.get_property(name))
            for name in (
                "INFERENCE_PRECISION_HINT",
                "PERFORMANCE_HINT",
                "INFERENCE_NUM_THREADS",
                "NUM_STREAMS",
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
                "DYNAMIC_QUANTIZATION_GROUP_SIZE",
            )
        }
        self._parallel = max(1, int(self.compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        if performance_hint == "latency":
            self._parallel = 1
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()  # infer requests free for a call
        self._outputs = {name: self.compiled_model.output(name) for name in self.output_names}
        version = self.openvino_version
        self._set_choice(
            graph="exported",
            graph_reason=(
                f"{MODEL_ONNX} as exported, compiled by OpenVINO {version} for the CPU "
                f"({self.properties['INFERENCE_PRECISION_HINT']}, {performance_hint}: "
                f"{self.properties['NUM_STREAMS']} stream(s), {self.properties['INFERENCE_NUM_THREADS']} threads)"
            ),
            cache=status,
            cache_detail=detail,
        )
        logger.info("openvino %s: %s (%s)", version, self.export_dir, self.choice.describe())

    @property
    def openvino_version(self) -> str:
        """OpenVINO's release (2026.4.1), without its build suffix."""
        return str(self._ov.get_version()).split("-")[0]

    # --- compiling, with the compiled-model cache ---------------------------------------------------------

    def _compile_now(self, cache_directory: Path | None) -> Any:
        config = dict(self._config)
        if cache_directory is not None:
            config["CACHE_DIR"] = str(cache_directory)
        try:
            with _COMPILE_LOCK:
                return self._core.compile_model(str(self.model_path), DEVICE, config)
        except RuntimeError as e:
            message = str(e)
            ops = _unconverted_ops(message)
            if ops is None:
                raise ExportDirError(
                    f"OpenVINO {self.openvino_version} cannot compile {self.model_path}: {message.strip()}"
                ) from e
            raise OpenVinoUnavailable(
                f"OpenVINO {self.openvino_version} cannot run {self.model_path} ({self.info.quantization!r} "
                f"export): its ONNX frontend cannot convert {ops}. Run this export with backend='onnxruntime' "
                f"(backend='auto' does)"
            ) from None

    def cache_location(self, cache_dir: str | os.PathLike | None = None) -> CacheLocation:
        """This export's cache location (`artefacts.cache_location_for`: `cache_dir`, else $QBERT_CACHE_DIR,
        else the export's `.cache`; entries keyed by model.onnx's sha256), as the ONNX Runtime backend's."""
        location = cache_location_for(self.export_dir, self.info, True, cache_dir)
        assert location is not None  # cache=True
        return location

    def cache_name(self) -> str:
        """The compiled-model cache's directory name in the cache location: OpenVINO's hash covers the model
        file's path (a blob compiled from another path is not imported) and the compile properties (threads,
        hint: a runner with other ones would not import the blob and would write its own beside it), and the
        precision is not in it (a blob compiled for f32, imported for bf16, answers NaN), so all are in the name:
        each configuration keeps its own entry."""
        key = json.dumps({"model": os.path.realpath(self.model_path), "config": self._config}, sort_keys=True, default=str)
        return f"openvino-{self.precision}-{_sha256_text(key)[:8]}"

    def _compile(self, cache: bool, cache_dir: str | os.PathLike | None) -> tuple[Any, CacheStatus, str]:
        if not cache:
            return self._compile_now(None), CacheStatus.NOT_USED, "cache=False"
        location = self.cache_location(cache_dir)
        directory = location.path(self.cache_name())
        expected = self._expected()
        try:
            location.check()  # the export (or cache_dir) may be a link; nothing below it may be (files.py rules)
            problems = verify_directory(directory, expected)
            if not problems:
                compiled = self._compile_now(directory)
                if bool(compiled.get_property("LOADED_FROM_CACHE")):
                    return compiled, CacheStatus.REUSED, str(directory)
                problems = [_BLOB_REFUSED]
            with location.lock():  # one compiling writer at a time (threads and processes)
                if problems != [_BLOB_REFUSED] and not verify_directory(directory, expected):
                    compiled = self._compile_now(directory)  # made by another writer meanwhile
                    if bool(compiled.get_property("LOADED_FROM_CACHE")):
                        return compiled, CacheStatus.REUSED, str(directory)
                    problems = [_BLOB_REFUSED]
                # a refused blob is never reported as reused: the entry is made again from scratch
                with atomic_directory(directory) as staging:
                    compiled = self._compile_now(staging)
                # the record holds the directory's sha256: a reader between the swap and it sees a mismatch
                write_record(directory, directory_sha256(directory), expected, root=location.root)
        except OSError as e:  # read-only export, a symlinked .cache (UnsafePathError), a full disk, ...
            logger.info("no OpenVINO compiled-model cache for %s (%s); compiling in memory", self.export_dir, e)
            return self._compile_now(None), CacheStatus.IN_MEMORY, f"{directory} cannot be written ({e})"
        if problems == [f"{directory} not found"]:
            return compiled, CacheStatus.CREATED, str(directory)
        logger.warning("rebuilt the OpenVINO compiled-model cache %s: %s", directory, "; ".join(problems))
        return compiled, CacheStatus.REBUILT, f"{directory}: {'; '.join(problems)}"

    def _expected(self) -> Expected:
        """What a cached blob is made from (`artefacts.Expected`); any difference means it is not this model's,
        here. The model file's size and mtime are in it because OpenVINO's blob header checks them."""
        stat = os.stat(self.model_path)
        return Expected(
            kind="openvino-compiled",
            source=MODEL_ONNX,
            source_sha256=self.info.onnx_sha256 or sha256_file(self.model_path),
            made_with={
                "record_version": RECORD_VERSION,
                "openvino": self._ov.get_version(),
                "precision": self.precision,
                "model_path": os.path.realpath(self.model_path),
                "model_size": stat.st_size,
                "model_mtime_ns": stat.st_mtime_ns,
                "device": str(self._core.get_property(DEVICE, "FULL_DEVICE_NAME")),
                "capabilities": sorted(self._core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")),
            },
        )

    def _check_signature(self) -> None:
        """export.json and the compiled model must agree on names, or every call would fail later."""
        inputs = sorted(name for port in self.compiled_model.inputs for name in port.get_names())
        outputs = {name for port in self.compiled_model.outputs for name in port.get_names()}
        if not set(self.info.input_names) <= set(inputs) or not set(self.info.output_names) <= outputs:
            raise ExportDirError(
                f"{self.model_path} has inputs {inputs} and outputs {sorted(outputs)} in OpenVINO, but export.json "
                f"describes {self.info.input_names} -> {self.info.output_names}; re-export the model"
            )

    # --- running ---------------------------------------------------------------------------------------

    @contextmanager
    def _requests(self, count: int) -> Iterator[list[Any]]:
        """`count` infer requests of this runner's own (an InferRequest runs one call at a time), returned after."""
        taken = []
        try:
            for _ in range(count):
                try:
                    taken.append(self._idle.get_nowait())
                except queue.Empty:
                    taken.append(self.compiled_model.create_infer_request())
            yield taken
        finally:
            for request in taken:
                self._idle.put(request)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        parts = min(self._parallel, batch)
        if parts == 1:
            with self._requests(1) as (request,):
                # share_outputs=False (the default): the results are copies, not views of the request's tensors
                results = request.infer(feeds)
                return {name: np.asarray(results[port]) for name, port in self._outputs.items()}
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        chunks = [{k: v[lo:hi] for k, v in feeds.items()} for lo, hi in zip(bounds[:-1], bounds[1:])]
        with self._requests(parts) as requests:
            for request, chunk in zip(requests, chunks):
                request.start_async(chunk)
            for request in requests:
                request.wait()
            # every output has the batch axis first (DESIGN.md, the task table)
            return {
                name: np.concatenate([np.array(r.get_tensor(port).data) for r in requests])
                for name, port in self._outputs.items()
            }

    def _close(self) -> None:
        self._idle = queue.SimpleQueue()
        self.compiled_model = None

    def __repr__(self) -> str:
        return (
            f"OpenVinoRunner({str(self.export_dir)!r}, precision={self.precision!r}, "
            f"performance_hint={self.performance_hint!r}, task={self.info.task!r})"
        )


def _readable(value: Any) -> str:
    """An OpenVINO property value as text ("f32" for an element type, not "<Type: 'float32'>")."""
    type_name = getattr(value, "get_type_name", None)
    return str(type_name() if callable(type_name) else value)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
