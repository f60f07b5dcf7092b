"""`TensorRTRunner`: runs an export directory's model.engine on a GPU (the Runner protocol, backend "tensorrt").

    from trt_runtime.backends.tensorrt.runner import TensorRTRunner, tensorrt_available
    ok, reason = tensorrt_available()
    runner = TensorRTRunner("out_dir")          # refuses a stale or foreign engine, saying to rebuild
    outputs = runner({"input_ids": ids, "attention_mask": mask})

Importing this module needs neither TensorRT nor CUDA; constructing a runner does (tensorrt and
cuda-python's runtime bindings, not pycuda). Per call: the feeds are validated
(`trt_runtime.validation.validate_feeds`, the checks every backend shares), the smallest optimization
profile that holds their shapes is chosen (`profiles.select_profile`; an engine built with
`--sequence-buckets` has one per bucket), they are copied into pinned host buffers and on to the GPU,
run with `execute_async_v3` on the thread's CUDA stream, and copied back. Each thread gets its own
stream and buffers and one execution context per profile it uses (an IExecutionContext must not be
used by two threads at once, and is bound to one profile); buffers are kept between calls and grown
when a call needs more.

CUDA graphs (`cuda_graphs=True`, opt-in): the first call at a given (profile, shapes) runs normally, then
the enqueue is captured into a CUDA graph that later calls at the same shapes replay, the way trtexec's
`--useCudaGraph` does (samples/common/sampleInference.cpp v10.13.0:1252-1289: one enqueue before the
capture to flush deferred work, `cudaStreamCaptureModeThreadLocal`, and a plain enqueue where capture
fails) with cuda-python's calls as NVIDIA's demo/Diffusion/demo_diffusion/engine.py:310-332 makes them.
The graph bakes in the buffers' addresses, so it is captured again when a buffer grows. Engines with
JIT plugins (Python at every enqueue) are refused with cuda_graphs.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_runtime.backends.base import BaseRunner, CacheStatus
from trt_runtime.backends.tensorrt.engine_info import (
    EngineInfo,
    EngineMismatchError,
    check_engine_matches,
    read_engine_info,
)
from trt_runtime.backends.tensorrt.libs import tensorrt_available as tensorrt_available
from trt_runtime.backends.tensorrt.options import TensorRTOptions
from trt_runtime.backends.tensorrt.profiles import (
    Profile,
    ProfileError,
    check_feeds_in_profile,
    profiles_union_limits,
    select_profile,
)
from trt_runtime.contract.export_dir import ENGINE, MODEL_ONNX, ExportInfo
from trt_runtime.contract.files import sha256_bytes, sha256_file
from trt_runtime.validation import InputError, validate_feeds

__all__ = ["TensorRTRunner", "profile_limits", "tensorrt_available", "validate_for_profile"]


def profile_limits(profile: Profile | list[Profile], info: ExportInfo) -> dict[str, int]:
    """The batch and sequence limits the profile(s) put on `input_ids` (over several profiles: the widest),
    as validate_feeds' keyword arguments."""
    profiles = profile if isinstance(profile, list) else [profile]
    ids = next((spec for spec in info.inputs if spec.name == "input_ids"), None)
    if ids is None or any(ids.name not in p for p in profiles):
        return {}
    shape_range = profiles_union_limits(profiles, ids.name)
    limits = {}
    if ids.shape and ids.shape[0] == "batch_size":
        limits["max_batch_size"] = shape_range.max[0]
    if ids.shape and ids.shape[-1] == "sequence_length":
        limits["max_sequence_length"] = shape_range.max[-1]
        limits["min_sequence_length"] = shape_range.min[-1]
    return limits


def validate_for_profile(
    feeds: Mapping[str, Any], info: ExportInfo, profile: Profile | list[Profile]
) -> dict[str, np.ndarray]:
    """What TensorRTRunner checks before a call: `validate_feeds` within the profiles' limits, then every
    input's shape inside one profile. Raises InputError (only) for a feed it refuses."""
    arrays = validate_feeds(feeds, info, **profile_limits(profile, info))
    shapes = {name: a.shape for name, a in arrays.items()}
    try:
        if isinstance(profile, list):
            select_profile(shapes, profile)
        else:
            check_feeds_in_profile(shapes, profile)
    except ProfileError as e:  # same exception type as every other refused input
        raise InputError(str(e)) from None
    return arrays


class _Buffer:
    """A pinned host buffer and a device buffer of the same capacity, grown (never shrunk) on demand."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.capacity = 0
        self.host = 0
        self.device = 0

    def ensure(self, nbytes: int) -> None:
        from trt_runtime.backends.tensorrt.libs import cuda_call

        if nbytes <= self.capacity:
            return
        self.free()
        capacity = max(nbytes, 2 * self.capacity, 256)
        self.host = int(cuda_call(self.cudart.cudaMallocHost(capacity)))
        self.device = int(cuda_call(self.cudart.cudaMalloc(capacity)))
        self.capacity = capacity

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A NumPy view of the pinned host buffer."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = (ctypes.c_byte * nbytes).from_address(self.host)
        return np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)

    def free(self) -> None:
        if self.host:
            self.cudart.cudaFreeHost(self.host)
        if self.device:
            self.cudart.cudaFree(self.device)
        self.host = self.device = self.capacity = 0


@dataclass
class _Graph:
    """A captured CUDA graph and the buffer addresses it was captured with."""

    exec: Any  # cudaGraphExec_t
    addresses: tuple[int, ...]


@dataclass
class _ThreadState:
    """What one thread needs to run the engine: its stream and buffers, a context per profile, CUDA graphs."""

    stream: Any  # cudaStream_t
    contexts: dict[int, Any] = field(default_factory=dict)  # profile index -> trt.IExecutionContext
    buffers: dict[str, _Buffer] = field(default_factory=dict)
    graphs: dict[tuple[Any, ...], _Graph] = field(default_factory=dict)  # (profile, shapes) -> graph


#: CUDA graphs kept per thread (one per distinct shape seen); the oldest goes when more are made
MAX_GRAPHS_PER_THREAD = 16


class TensorRTRunner(BaseRunner):
    """Runs model.engine of an export directory with TensorRT (see the module docstring)."""

    backend = "tensorrt"
    options_class = TensorRTOptions
    options: TensorRTOptions

    def __init__(
        self,
        export_dir: str | Path,
        options: TensorRTOptions | None = None,
        *,
        info: ExportInfo | None = None,
        reason: str = "asked for",
        verify_sha256: bool = True,
        **keywords: Any,
    ) -> None:
        from trt_runtime.backends.tensorrt.libs import (
            cuda_call,
            cuda_driver_version,
            format_version,
            gpu_properties,
            require_cudart,
            require_tensorrt,
            tensorrt_logger,
        )

        self.options = TensorRTOptions.from_keywords(self.backend, keywords, base=options or TensorRTOptions())
        device = self.options.device
        cuda_graphs = self.options.cuda_graphs
        super().__init__(export_dir, info=info, reason=reason, verify_sha256=verify_sha256)
        self.engine_info: EngineInfo = read_engine_info(self.export_dir)
        require_tensorrt()
        import tensorrt as trt

        self._cudart = require_cudart()
        cuda_call(self._cudart.cudaSetDevice(device))
        self.device = device
        _, compute_capability = gpu_properties(device)
        engine_bytes = (self.export_dir / ENGINE).read_bytes()
        check_engine_matches(
            self.engine_info,
            self.export_dir,
            onnx_sha256=self.info.onnx_sha256 or sha256_file(self.export_dir / MODEL_ONNX),
            tensorrt_version=str(trt.__version__),
            compute_capability=compute_capability,
            engine_sha256=sha256_bytes(engine_bytes),
            cuda_driver_version=format_version(cuda_driver_version()),
        )
        if cuda_graphs and self.engine_info.plugin_implementation == "jit":
            raise EngineMismatchError(
                f"{self.export_dir / ENGINE} has JIT Python plugins, which cannot be captured in a CUDA graph; load it "
                f"without cuda_graphs, or rebuild it with AOT plugins (TensorRT >= 10.9) or --no-plugins"
            )
        self.cuda_graphs = cuda_graphs
        if self.engine_info.plugin_implementation == "jit":
            # JIT plugins run Python at every enqueue: they must be registered in this process
            from trt_runtime.backends.tensorrt.plugins import register_plugins

            register_plugins()
        self._runtime = trt.Runtime(tensorrt_logger())
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise EngineMismatchError(
                f"TensorRT could not deserialize {self.export_dir / ENGINE} (see its log above); rebuild it: "
                f"python -m trt_runtime build {self.export_dir}"
            )
        self._engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        if set(self._inputs) != set(self.info.input_names) or set(self._outputs) != set(self.info.output_names):
            raise EngineMismatchError(
                f"{self.export_dir / ENGINE} has inputs {self._inputs} and outputs {self._outputs}, export.json "
                f"{self.info.input_names} and {self.info.output_names}; rebuild it: python -m trt_runtime build "
                f"{self.export_dir}"
            )
        self.profiles: list[Profile] = self.engine_info.profiles
        if engine.num_optimization_profiles != len(self.profiles):
            raise EngineMismatchError(
                f"{self.export_dir / ENGINE} has {engine.num_optimization_profiles} optimization profiles, engine.json "
                f"{len(self.profiles)}; rebuild it: python -m trt_runtime build {self.export_dir}"
            )
        self._set_choice(
            graph="engine",
            graph_reason=f"{ENGINE} built from {MODEL_ONNX}",
            cache=CacheStatus.PREBUILT,
            cache_detail=f"{self.export_dir / ENGINE}, checked against engine.json",
        )
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    @property
    def profile(self) -> Profile:
        """The first optimization profile (engines built without --sequence-buckets have only this one)."""
        return self.profiles[0]

    @profile.setter
    def profile(self, profile: Profile) -> None:
        self.profiles = [profile]

    # the profiles' limits, which the pipelines read to size their batches and to truncate (or pad) texts
    @property
    def max_batch_size(self) -> int | None:
        return profile_limits(self.profiles, self.info).get("max_batch_size")

    @property
    def max_sequence_length(self) -> int | None:
        return profile_limits(self.profiles, self.info).get("max_sequence_length")

    @property
    def min_sequence_length(self) -> int:
        return profile_limits(self.profiles, self.info).get("min_sequence_length", 1)

    def _validate(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return validate_for_profile(feeds, self.info, self.profiles)

    def _thread_state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            from trt_runtime.backends.tensorrt.libs import cuda_call

            cuda_call(self._cudart.cudaSetDevice(self.device))
            state = _ThreadState(cuda_call(self._cudart.cudaStreamCreate()))
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def _context(self, state: _ThreadState, profile_index: int) -> Any:
        """This thread's execution context on `profile_index` (made on first use)."""
        context = state.contexts.get(profile_index)
        if context is None:
            context = self._engine.create_execution_context()
            if context is None:
                raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
            if profile_index and not context.set_optimization_profile_async(profile_index, int(state.stream)):
                raise RuntimeError(f"TensorRT refused optimization profile {profile_index}")
            state.contexts[profile_index] = context
        return context

    def _enqueue(self, state: _ThreadState, context: Any, key: tuple[Any, ...]) -> None:
        """execute_async_v3 on the thread's stream, through a CUDA graph when cuda_graphs is on."""
        from trt_runtime.backends.tensorrt.libs import cuda_call

        stream = state.stream
        addresses = tuple(state.buffers[name].device for name in (*self._inputs, *self._outputs))
        graph = state.graphs.get(key) if self.cuda_graphs else None
        if graph is not None and graph.addresses == addresses:
            cuda_call(self._cudart.cudaGraphLaunch(graph.exec, stream))
            return
        if not context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT's execute_async_v3 failed; see the TensorRT log above")
        if not self.cuda_graphs:
            return
        if graph is not None:  # a buffer grew since the capture
            self._cudart.cudaGraphExecDestroy(state.graphs.pop(key).exec)
        if len(state.graphs) >= MAX_GRAPHS_PER_THREAD:
            self._cudart.cudaGraphExecDestroy(state.graphs.pop(next(iter(state.graphs))).exec)
        # the enqueue above ran the work and flushed TensorRT's deferred updates; now record it for replays
        mode = self._cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(self._cudart.cudaStreamBeginCapture(stream, mode))
        captured = context.execute_async_v3(int(stream))
        error, cuda_graph = self._cudart.cudaStreamEndCapture(stream)
        if not captured or int(error) != 0 or cuda_graph is None:
            self._cudart.cudaGetLastError()  # clear the failed capture's error, as trtexec does
            return  # this engine cannot be captured at these shapes: plain enqueues it is
        try:
            state.graphs[key] = _Graph(cuda_call(self._cudart.cudaGraphInstantiate(cuda_graph, 0)), addresses)
        finally:
            self._cudart.cudaGraphDestroy(cuda_graph)

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from trt_runtime.backends.tensorrt.libs import cuda_call

        state = self._thread_state()
        profile_index = select_profile({name: a.shape for name, a in arrays.items()}, self.profiles)
        context, stream = self._context(state, profile_index), state.stream
        h2d = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

        for name in self._inputs:
            array = np.ascontiguousarray(arrays[name], dtype=self._dtypes[name])
            if not context.set_input_shape(name, array.shape):
                raise RuntimeError(f"TensorRT refused shape {array.shape} for input {name} (outside the profile?)")
            buffer = state.buffers.setdefault(name, _Buffer(self._cudart))
            buffer.ensure(array.nbytes)
            buffer.host_array(array.shape, array.dtype)[...] = array
            cuda_call(self._cudart.cudaMemcpyAsync(buffer.device, buffer.host, array.nbytes, h2d, stream))
            context.set_tensor_address(name, buffer.device)

        shapes: dict[str, tuple[int, ...]] = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
            buffer = state.buffers.setdefault(name, _Buffer(self._cudart))
            buffer.ensure(nbytes)
            context.set_tensor_address(name, buffer.device)

        self._enqueue(state, context, (profile_index, *(arrays[name].shape for name in self._inputs)))
        for name in self._outputs:
            buffer = state.buffers[name]
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * self._dtypes[name].itemsize
            cuda_call(self._cudart.cudaMemcpyAsync(buffer.host, buffer.device, nbytes, d2h, stream))
        cuda_call(self._cudart.cudaStreamSynchronize(stream))
        # copies: the pinned buffers are reused by the next call
        return {name: state.buffers[name].host_array(shapes[name], self._dtypes[name]).copy() for name in self._outputs}

    def _close(self) -> None:
        """Free every thread's buffers and streams (also done when the runner is garbage-collected)."""
        with self._lock:
            states, self._states = self._states, []
            self._local = threading.local()  # a later call starts over with fresh contexts and buffers
        for state in states:
            for graph in state.graphs.values():
                self._cudart.cudaGraphExecDestroy(graph.exec)
            state.graphs.clear()
            for buffer in state.buffers.values():
                buffer.free()
            self._cudart.cudaStreamDestroy(state.stream)
            state.buffers.clear()
            state.contexts.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may already be gone
            self._close()

    def __repr__(self) -> str:
        return f"TensorRTRunner({str(self.export_dir)!r}, TensorRT {self.engine_info.tensorrt_version})"

