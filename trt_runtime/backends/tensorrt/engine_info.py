"""`engine.json`: what `python -m trt_runtime build` records next to `model.engine`, and the checks on it.

A serialized TensorRT engine runs only with the TensorRT version and the GPU architecture (compute
capability) it was built for, and only means something for the ONNX file it was built from. The
builder records those here; `check_engine_matches` refuses an engine whose record disagrees with
the machine or the export, saying to rebuild. Pure standard library: the CPU tests cover it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trt_runtime.backends.tensorrt.profiles import Profile, profile_from_dict, profile_to_dict
from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ENGINE, ENGINE_JSON, MODEL_ONNX
from trt_runtime.contract.files import write_bytes_atomic, write_json_atomic, write_text_atomic

ENGINE_FORMAT_VERSION = 1
#: the engine inspector's JSON of model.engine (layer_report.py), written next to engine.json
ENGINE_LAYERS = "engine_layers.json"


class EngineMismatchError(QbertError, RuntimeError):
    """model.engine cannot be used here (missing, stale, or built for another TensorRT/GPU): rebuild it."""

    code = "engine-mismatch"


def rebuild_hint(directory: str | os.PathLike) -> str:
    return f"rebuild it: python -m trt_runtime build {directory}"


@dataclass
class EngineInfo:
    """The record of one engine build, stored as engine.json."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    onnx_sha256: str  # of the export's model.onnx (before the builder's in-memory edits)
    engine_sha256: str
    profiles: list[Profile]
    #: plugin ids the network uses ("ibert::IntGELU", ...); empty with --no-plugins or no ibert ops
    plugins: list[str] = field(default_factory=list)
    #: "aot" (kernels embedded in the engine: runs without Python, e.g. under trtexec) or "jit"
    #: (the Python plugins must be registered in the process that runs the engine); None without plugins
    plugin_implementation: str | None = None
    fp16: bool = False
    int8: bool = False
    strongly_typed: bool = True
    #: how it was built: workspace_mb, timing_cache, use_plugins, builder_optimization_level, ...
    builder: dict[str, Any] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    build_seconds: float | None = None
    created: str | None = None
    #: CUDA version the build machine's driver supports ("12.4"); with AOT plugins, the PTX ISA their kernels
    #: were compiled for (84 = 8.4) and the oldest driver that takes it, which the runner checks
    cuda_driver_version: str | None = None
    plugin_ptx_version: int | None = None
    min_cuda_driver_version: str | None = None
    #: layer_report.summarize_layers of the built engine (None: the inspector was not available)
    layers: dict[str, Any] | None = None
    format_version: int = ENGINE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profiles"] = [profile_to_dict(p) for p in self.profiles]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = ENGINE_JSON) -> EngineInfo:
        try:
            version = int(data.get("format_version", ENGINE_FORMAT_VERSION))
            if version > ENGINE_FORMAT_VERSION:
                raise EngineMismatchError(
                    f"{where}: format_version {version} is newer than this runtime understands "
                    f"({ENGINE_FORMAT_VERSION}); upgrade the runtime or rebuild the engine with this version"
                )
            known = set(cls.__dataclass_fields__)
            fields = {k: v for k, v in data.items() if k in known}
            fields["profiles"] = [profile_from_dict(p) for p in data["profiles"]]
            info = cls(**fields)
        except EngineMismatchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EngineMismatchError(f"{where} is incomplete or malformed ({e!r}); rebuild the engine") from None
        wrong = [
            name
            for name in ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "engine_sha256")
            if not isinstance(getattr(info, name), str)
        ]
        if wrong or not info.profiles:
            what = f"{', '.join(wrong)} must be strings" if wrong else "it has no optimization profile"
            raise EngineMismatchError(f"{where} is malformed ({what}); rebuild the engine")
        return info


def read_engine_info(directory: str | os.PathLike) -> EngineInfo:
    """Read engine.json; a missing or unreadable one raises EngineMismatchError saying how to build it."""
    directory = Path(directory)
    path = directory / ENGINE_JSON
    if not (directory / ENGINE).exists():
        raise EngineMismatchError(f"{directory / ENGINE} not found; build it: python -m trt_runtime build {directory}")
    if not path.exists():
        raise EngineMismatchError(
            f"{path} not found, so nothing says what {ENGINE} was built from; {rebuild_hint(directory)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineMismatchError(f"{path} is not valid JSON ({e}); {rebuild_hint(directory)}") from None
    if not isinstance(data, dict):
        raise EngineMismatchError(f"{path} must hold a JSON object; {rebuild_hint(directory)}")
    return EngineInfo.from_dict(data, where=str(path))


def check_engine_matches(
    info: EngineInfo,
    directory: str | os.PathLike,
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    compute_capability: str | None,
    engine_sha256: str | None = None,
    cuda_driver_version: str | None = None,
) -> None:
    """Raise EngineMismatchError, naming what differs, unless the engine fits this export and machine.

    onnx_sha256: of the directory's model.onnx now; tensorrt_version: the installed one (engines are
    tied to the exact version); compute_capability: of the GPU that will run it (None: not checked);
    engine_sha256: of model.engine now (None: not checked), which catches a half-finished rebuild;
    cuda_driver_version: of this machine's driver ("12.4"; None: not checked), which must take the PTX
    of AOT plugin kernels (plugins/aot.py).
    """
    hint = rebuild_hint(directory)
    problems = []
    if info.onnx_sha256 != onnx_sha256:
        problems.append(
            f"it was built from a different {MODEL_ONNX} (sha256 {info.onnx_sha256[:12]}…, the file now is "
            f"{onnx_sha256[:12]}…): the model was re-exported after the engine was built"
        )
    if info.tensorrt_version != tensorrt_version:
        problems.append(
            f"it was built with TensorRT {info.tensorrt_version} but TensorRT {tensorrt_version} is installed "
            f"(engines only run on the version that built them)"
        )
    if compute_capability is not None and info.compute_capability != compute_capability:
        problems.append(
            f"it was built for a GPU of compute capability {info.compute_capability} ({info.gpu_name}) but this "
            f"GPU has compute capability {compute_capability}"
        )
    if engine_sha256 is not None and info.engine_sha256 != engine_sha256:
        problems.append(f"{ENGINE} is not the file {ENGINE_JSON} describes (an interrupted build?)")
    needed = info.min_cuda_driver_version
    if cuda_driver_version is not None and needed is not None and _version(cuda_driver_version) < _version(needed):
        ptx = info.plugin_ptx_version or 0
        problems.append(
            f"its AOT plugin kernels are PTX ISA {ptx // 10}.{ptx % 10}, which needs a CUDA driver for CUDA {needed} "
            f"or newer, and this machine's driver supports CUDA {cuda_driver_version}: update the NVIDIA driver"
        )
    if problems:
        raise EngineMismatchError(f"cannot use {Path(directory) / ENGINE}: " + "; ".join(problems) + f". To fix, {hint}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def write_engine(
    directory: str | os.PathLike, engine_bytes: bytes | memoryview, info: EngineInfo, layers_json: str | None = None
) -> None:
    """Write model.engine, then engine_layers.json (the inspector's JSON, when given), then engine.json, each
    atomically.

    engine.json records the engine's sha256, so a reader that catches the moment between the two
    renames, or a build killed there, sees a mismatch (and is told to rebuild) rather than a wrong
    engine. A build killed before the first rename leaves the previous engine and engine.json as they
    were; its hidden `.model.engine.tmp-<pid>-*` file is removed by the next build.
    """
    directory = Path(directory)
    write_bytes_atomic(directory / ENGINE, engine_bytes)
    if layers_json is not None:
        write_text_atomic(directory / ENGINE_LAYERS, layers_json)
    write_json_atomic(directory / ENGINE_JSON, info.to_dict())
