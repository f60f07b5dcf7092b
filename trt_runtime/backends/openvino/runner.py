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
`FileStorageCacheManager`), so it is never let write into the directory this runner reads from:

- the cache lives in `<cache root>/openvino/<sha256[:16] of model.onnx>-<sha256[:8] of its real
  path>-<precision>/`,
  the cache root being `cache_dir` or `<export>/.cache`, entered without following a link
  (`trt_runtime.contract.files`: a symlinked `.cache` is refused and the runner compiles in memory);
- a missing or mismatched cache is compiled into a fresh staging directory, a `record.json` (what it was
  made from: the model file's path, sha256, size and mtime, OpenVINO's version, the CPU as OpenVINO
  names it and its capabilities, and the sha256 of every blob) is written beside the blob, and the
  directory replaces the old one whole (`files.atomic_directory`);
- before use the record is checked against the model file, OpenVINO and the CPU, and every blob against
  its sha256; a mismatch (another model.onnx, another OpenVINO, another CPU, a substituted blob) is
  rebuilt the same way and `choice.cache` says REBUILT and why;
- where nothing can be written (a read-only export and no `cache_dir`) the model is compiled in memory
  (CacheStatus.IN_MEMORY); `cache=False` never uses a cache.
"""

from __future__ import annotations

import contextlib
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

from trt_runtime.backends.base import BackendUnavailableError, BaseRunner, CacheStatus
from trt_runtime.backends.openvino.options import PERFORMANCE_HINTS, PRECISIONS, OpenVinoOptions
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportDirError, ExportInfo
from trt_runtime.contract.files import (
    atomic_directory,
    ensure_directory,
    sha256_file,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

#: one compile at a time per process: OpenVINO 2026.4's compile_model, run from several threads at once with a
#: CACHE_DIR, leaves the process's C locale at "C" (reproduced: 8 threads loading one fresh export turned
#: locale.getpreferredencoding() from UTF-8 to ANSI_X3.4-1968, which then broke every text-mode subprocess
#: call of the process); serialized, it restores the locale as it found it
_COMPILE_LOCK = threading.Lock()

DEVICE = "CPU"
CACHE_DIR = ".cache"
CACHE_SUBDIR = "openvino"
RECORD = "record.json"
#: bumped when the record's meaning changes, so that older caches are rebuilt
RECORD_VERSION = 1
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

    def cache_directory(self, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """(the directory the writer may not leave by a link, this export's cache directory below it):
        (cache_dir, cache_dir/openvino/KEY) or (the export, <export>/.cache/openvino/KEY); KEY names the
        model file and the precision (a blob compiled for one precision is wrong for the other)."""
        root = Path(cache_dir) if cache_dir is not None else self.export_dir
        base = root if cache_dir is not None else root / CACHE_DIR
        digest = self.info.onnx_sha256 or sha256_file(self.model_path)
        location = _sha256_text(os.path.realpath(self.model_path))
        return root, base / CACHE_SUBDIR / f"{digest[:16]}-{location[:8]}-{self.precision}"

    def _compile(self, cache: bool, cache_dir: str | os.PathLike | None) -> tuple[Any, CacheStatus, str]:
        if not cache:
            return self._compile_now(None), CacheStatus.NOT_USED, "cache=False"
        root, directory = self.cache_directory(cache_dir)
        try:
            # the export (or cache_dir) may be a link; nothing below it may be (files.py rules)
            ensure_directory(directory.parent, root=root)
        except OSError as e:  # read-only export, a symlinked .cache (UnsafePathError), ...
            logger.info("no OpenVINO compiled-model cache for %s (%s); compiling in memory", self.export_dir, e)
            return self._compile_now(None), CacheStatus.IN_MEMORY, f"{directory} cannot be written ({e})"
        expected = self._record_basis()
        problem = _record_problem(directory, expected)
        if problem is None:
            compiled = self._compile_now(directory)
            if bool(compiled.get_property("LOADED_FROM_CACHE")):
                return compiled, CacheStatus.REUSED, str(directory)
            # OpenVINO refused the blob and compiled anew; drop our record so the next load rebuilds cleanly
            logger.warning("OpenVINO did not import the cached blob in %s; it will be rebuilt", directory)
            with contextlib.suppress(OSError):
                (directory / RECORD).unlink()
            return compiled, CacheStatus.REBUILT, f"{directory}: OpenVINO did not import its blob"
        existed = directory.exists()
        try:
            with atomic_directory(directory) as staging:
                compiled = self._compile_now(staging)
                blobs = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
                write_json_atomic(staging / RECORD, {**expected, "blobs": blobs}, root=staging)
        except OSError as e:
            logger.info("cannot write the OpenVINO cache %s (%s); compiling in memory", directory, e)
            return self._compile_now(None), CacheStatus.IN_MEMORY, f"{directory} cannot be written ({e})"
        if existed:
            logger.warning("rebuilt the OpenVINO compiled-model cache %s: %s", directory, problem)
            return compiled, CacheStatus.REBUILT, f"{directory}: {problem}"
        return compiled, CacheStatus.CREATED, str(directory)

    def _record_basis(self) -> dict[str, Any]:
        """What a cached blob is made from; any difference means it is not this model's, here."""
        stat = os.stat(self.model_path)
        return {
            "record_version": RECORD_VERSION,
            "model": {
                "path": os.path.realpath(self.model_path),
                "sha256": self.info.onnx_sha256 or sha256_file(self.model_path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            },
            "openvino": self._ov.get_version(),
            "precision": self.precision,
            "device": {
                "name": str(self._core.get_property(DEVICE, "FULL_DEVICE_NAME")),
                "capabilities": sorted(self._core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")),
            },
        }

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


def _record_problem(directory: Path, expected: dict[str, Any]) -> str | None:
    """Why the cache in `directory` may not be used (None: it may): missing, made from something else,
    or holding a file that is not the one recorded."""
    record_path = directory / RECORD
    if directory.is_symlink() or record_path.is_symlink():
        return f"{directory} is or holds a symbolic link"
    if not directory.exists():
        return "no cache yet"
    if not record_path.exists():
        return "it has no record of what it was made from"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"its record cannot be read ({e})"
    if not isinstance(record, dict):
        return "its record is not a JSON object"
    for key, value in expected.items():
        if record.get(key) != value:
            return f"made for another {key} ({record.get(key)!r}, here {value!r})"
    blobs = record.get("blobs")
    if not isinstance(blobs, dict) or not blobs:
        return "its record lists no compiled blob"
    present = {entry.name for entry in os.scandir(directory)}
    if present != set(blobs) | {RECORD}:
        return f"it holds {sorted(present - {RECORD})}, the record lists {sorted(blobs)}"
    for name, digest in blobs.items():
        path = directory / name
        if path.is_symlink() or not path.is_file():
            return f"{path} is not a regular file"
        if sha256_file(path) != digest:
            return f"{path} is not the blob its record names (sha256 differs)"
    return None

