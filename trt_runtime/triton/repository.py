"""Export directories -> a Triton Inference Server model repository (`python -m trt_runtime triton-repo`).

For an export directory named NAME (or given as NAME=DIR) the repository gets up to three models:

- `NAME`: text in (`TEXT`, TYPE_STRING), the task pipeline's JSON answer out (`ANSWER`); Python backend
  running trt_runtime.pipeline.
- `NAME-onnx`: the export's ONNX inputs and outputs; `onnxruntime_onnx`, or (onnx_backend="python")
  OrtRunner in the Python backend.
- `NAME-trt`: the same, from the TensorRT engine (model.engine as model.plan); `tensorrt_plan`, KIND_GPU.

Every model batches on the first axis (`max_batch_size` > 0, dims without it, dynamic axes -1) with
dynamic batching (preferred batch sizes, a maximum queue delay) and an instance group. The Python models
carry the export directory (`1/export/`) and, unless vendor_runtime=False, the trt_runtime package
(`1/trt_runtime/`), so the repository is self-contained. Large files are hard links where the file system
allows (copies otherwise). `repository.json` at the top records what was made, from what, and what was
left out and why. The repository is written in a locked temporary sibling and swapped into place
(`contract.files.atomic_directory`, recovered after a kill); `--force` replaces only a directory with its own
repository.json, never an input. Only the export's regular files are carried: a link to a file inside it is
copied as that file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trt_runtime
from trt_runtime.backends.tensorrt.engine_info import EngineInfo, EngineMismatchError, read_engine_info
from trt_runtime.backends.tensorrt.profiles import BATCH_SIZE
from trt_runtime.contract.errors import QbertError
from trt_runtime.contract.export_dir import ENGINE, MODEL_ONNX, ExportInfo, read_export_info
from trt_runtime.contract.files import (
    atomic_directory,
    check_output_outside_inputs,
    check_replaceable_directory,
    write_json_atomic,
)
from trt_runtime.triton import python_model
from trt_runtime.triton.config import TYPE_STRING, Enum, tensor_config, to_pbtxt

KINDS = ("text", "onnx", "plan")
ONNX_BACKENDS = ("onnxruntime", "python")
MANIFEST = "repository.json"
CONFIG = "config.pbtxt"
VERSION = "1"
SUFFIX = {"text": "", "onnx": "-onnx", "plan": "-trt"}
#: tasks without a pipeline get no text model
NO_PIPELINE = ("text-generation",)


class RepositoryError(QbertError, ValueError):
    """The repository cannot be made as asked; the message says why and what to do."""

    code = "repository-invalid"


@dataclass
class RepositoryOptions:
    """How the models are configured (the command line's options)."""

    kinds: tuple[str, ...] = KINDS
    #: "onnxruntime": the `onnxruntime_onnx` platform; "python": OrtRunner in the Python backend, for a
    #: server without the onnxruntime backend (e.g. the tritonserver bundled with nvidia-pytriton)
    onnx_backend: str = "onnxruntime"
    max_batch_size: int = 16
    #: None: max_batch_size and half of it (the plan: the engine profile's opt batch and its max)
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_us: int = 2000
    #: instances of each CPU model (ONNX, Python)
    cpu_instances: int = 1
    #: instances of the plan model on each GPU in `gpus`
    gpu_instances: int = 1
    #: GPUs of the plan model's instance group; None: every GPU the server sees
    gpus: tuple[int, ...] | None = None
    #: the trt_runtime backend of the Python models: "auto" runs the engine where the server's Python
    #: environment has TensorRT and a GPU, and ONNX Runtime otherwise
    python_backend: str = "auto"
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    runner_options: dict[str, Any] = field(default_factory=dict)
    vendor_runtime: bool = True
    #: write the plan model's config even where the export has no engine (model.plan to be added later)
    plan_without_engine: bool = False

    def check(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise RepositoryError(f"model kinds {list(self.kinds)}: choose from {', '.join(KINDS)}")
        if self.onnx_backend not in ONNX_BACKENDS:
            raise RepositoryError(f"onnx_backend={self.onnx_backend!r}; choose {' or '.join(ONNX_BACKENDS)}")
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        for size in self.preferred_batch_sizes or ():
            if not 1 <= size <= self.max_batch_size:
                raise RepositoryError(
                    f"preferred batch size {size} is outside [1, max_batch_size={self.max_batch_size}]"
                )
        if self.max_queue_delay_us < 0:
            raise RepositoryError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.cpu_instances < 1 or self.gpu_instances < 1:
            raise RepositoryError("instance counts must be >= 1")


@dataclass
class ModelRecord:
    """One model of the repository (an entry of repository.json)."""

    name: str
    kind: str  # "text" | "onnx" | "plan"
    served_by: str  # "python" | "onnxruntime_onnx" | "tensorrt_plan"
    export: str  # the export directory it was made from
    task: str
    quantization: str
    notes: list[str] = field(default_factory=list)


@dataclass
class RepositoryReport:
    path: Path
    models: list[ModelRecord]
    #: (model name, why it was left out)
    skipped: list[tuple[str, str]]

    def summary(self) -> str:
        lines = [f"Triton model repository {self.path}:"]
        for model in self.models:
            lines.append(f"  {model.name:32} {model.served_by:17} ({model.kind}, from {model.export})")
            lines += [f"  {'':32} note: {note}" for note in model.notes]
        for name, why in self.skipped:
            lines.append(f"  {name:32} skipped: {why}")
        return "\n".join(lines)


# --- naming ------------------------------------------------------------------------------------------

_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def model_name(text: str) -> str:
    """A Triton model (directory) name from an export directory's name."""
    name = _NAME.sub("_", text).strip("._")
    if not name:
        raise RepositoryError(f"cannot make a model name from {text!r}; give one as NAME=DIR")
    return name


def parse_export_arg(arg: str | os.PathLike | tuple[str, str | os.PathLike]) -> tuple[str, Path]:
    """(model name, export directory) from DIR or NAME=DIR (or a (name, dir) pair)."""
    if isinstance(arg, tuple):
        return model_name(arg[0]), Path(arg[1])
    text = os.fspath(arg)
    name, sep, rest = text.partition("=")
    if sep and name and rest and not Path(text).exists():
        return model_name(name), Path(rest)
    directory = Path(text)
    return model_name(directory.resolve().name), directory


# --- files -------------------------------------------------------------------------------------------


def _regular_file_inside(path: Path, export: Path) -> Path:
    """The regular file `path` stands for: itself, or, for a symbolic link, its target where that is a regular
    file inside the export (`read_export_info` has already refused links that leave it; a dangling link or a
    link to a directory is refused here, naming the link and its target)."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    top = Path(os.path.realpath(export))
    if top not in target.parents:
        raise RepositoryError(
            f"{path} is a symbolic link to {target}, outside the export directory {export}; triton-repo copies "
            f"only the export's own files: replace the link with the file, or re-export the model"
        )
    if not target.is_file() or target.is_symlink():
        what = "a directory" if target.is_dir() else "nothing (a dangling link)"
        raise RepositoryError(
            f"{path} is a symbolic link to {target}, which is {what}; triton-repo copies regular files only: "
            f"replace the link with the file it should be, or re-export the model"
        )
    return target


def _place(source: Path, target: Path, export: Path) -> None:
    """target = the export's file `source` (a link's target inside the export, see `_regular_file_inside`):
    a hard link where possible (same file system), a copy otherwise; never a link to a link."""
    real = _regular_file_inside(source, export)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(real, target, follow_symlinks=False)
    except OSError:
        shutil.copyfile(real, target, follow_symlinks=False)
        shutil.copystat(real, target, follow_symlinks=False)


def _export_files(directory: Path) -> Iterable[Path]:
    """The files of an export directory that travel with it (not caches, temporaries or hidden files);
    links are not followed into directories (a link to a directory is refused by `_place`)."""
    for parent, subdirectories, files in os.walk(directory, followlinks=False):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith(".") and d != "__pycache__")
        linked = [d for d in subdirectories if (Path(parent) / d).is_symlink()]
        for name in sorted([*files, *linked]):
            if not name.startswith("."):
                yield Path(parent) / name


def _copy_export(directory: Path, target: Path) -> None:
    for path in _export_files(directory):
        _place(path, target / path.relative_to(directory), directory)


def _vendor_runtime(target: Path) -> None:
    """Copy the trt_runtime package (sources only) to target/trt_runtime."""
    package = Path(trt_runtime.__file__).parent
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if (
            path.is_file()
            and "__pycache__" not in relative.parts
            and path.suffix in (".py", ".pyi", ".typed")
        ):
            destination = target / "trt_runtime" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


# --- configs -----------------------------------------------------------------------------------------


def _batching(preferred: Sequence[int], delay_us: int) -> dict[str, Any]:
    return {"preferred_batch_size": sorted(set(preferred)), "max_queue_delay_microseconds": delay_us}


def _default_preferred(max_batch_size: int) -> list[int]:
    return sorted({max(1, max_batch_size // 2), max_batch_size})


def _header(info: ExportInfo, directory: Path, kind: str) -> str:
    return (
        f"Generated by `python -m trt_runtime triton-repo` from {directory} ({kind} model).\n"
        f"Export: {info.model_type} {info.task}, quantization {info.quantization}, opset {info.opset}."
    )


def _tensor_io(info: ExportInfo) -> dict[str, Any]:
    return {
        "input": [tensor_config(spec) for spec in info.inputs],
        "output": [tensor_config(spec) for spec in info.outputs],
    }


def _python_parameters(
    options: RepositoryOptions, mode: str, info: ExportInfo, backend: str
) -> dict[str, str]:
    parameters = {
        "mode": mode,
        "export_dir": python_model.EXPORT_SUBDIR,
        "backend": backend,
        "runner_options": json.dumps(options.runner_options, sort_keys=True),
    }
    if mode == python_model.MODE_PIPELINE:
        parameters["task"] = info.task
        parameters["pipeline_options"] = json.dumps(options.pipeline_options, sort_keys=True)
    return parameters


def text_model_config(name: str, info: ExportInfo, options: RepositoryOptions) -> dict[str, Any]:
    mbs = options.max_batch_size
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": mbs,
        "input": [{"name": python_model.TEXT, "data_type": Enum(TYPE_STRING), "dims": [1]}],
        "output": [{"name": python_model.ANSWER, "data_type": Enum(TYPE_STRING), "dims": [1]}],
        "dynamic_batching": _batching(
            options.preferred_batch_sizes or _default_preferred(mbs), options.max_queue_delay_us
        ),
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": options.cpu_instances}],
        "parameters": _python_parameters(options, python_model.MODE_PIPELINE, info, options.python_backend),
    }


def onnx_model_config(name: str, info: ExportInfo, options: RepositoryOptions) -> dict[str, Any]:
    mbs = options.max_batch_size
    config: dict[str, Any] = {"name": name}
    if options.onnx_backend == "onnxruntime":
        config["platform"] = "onnxruntime_onnx"
    else:
        config["backend"] = "python"
    config["max_batch_size"] = mbs
    config.update(_tensor_io(info))
    config["dynamic_batching"] = _batching(
        options.preferred_batch_sizes or _default_preferred(mbs), options.max_queue_delay_us
    )
    config["instance_group"] = [{"kind": Enum("KIND_CPU"), "count": options.cpu_instances}]
    if options.onnx_backend == "python":
        config["parameters"] = _python_parameters(options, python_model.MODE_RUNNER, info, "onnxruntime")
    return config


def engine_batch_range(info: ExportInfo, engine: EngineInfo) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine's first optimization profile; max over all profiles."""
    batch_inputs = [spec.name for spec in info.inputs if spec.shape and spec.shape[0] == BATCH_SIZE]
    if not engine.profiles or not batch_inputs:
        raise RepositoryError("engine.json has no optimization profile with a batch axis; rebuild the engine")
    first = engine.profiles[0][batch_inputs[0]]
    largest = max(profile[batch_inputs[0]].max[0] for profile in engine.profiles)
    return first.min[0], first.opt[0], largest


def plan_model_config(
    name: str, info: ExportInfo, engine: EngineInfo | None, options: RepositoryOptions
) -> dict[str, Any]:
    mbs = options.max_batch_size
    preferred = list(options.preferred_batch_sizes or [])
    if engine is not None:
        _, opt, largest = engine_batch_range(info, engine)
        mbs = min(mbs, largest)
        preferred = [size for size in preferred if size <= mbs] or sorted({min(opt, mbs), mbs})
    group: dict[str, Any] = {"kind": Enum("KIND_GPU"), "count": options.gpu_instances}
    if options.gpus is not None:
        group["gpus"] = list(options.gpus)
    return {
        "name": name,
        "platform": "tensorrt_plan",
        "max_batch_size": mbs,
        **_tensor_io(info),
        "dynamic_batching": _batching(preferred or _default_preferred(mbs), options.max_queue_delay_us),
        "instance_group": [group],
    }


# --- models ------------------------------------------------------------------------------------------


def _write_model(directory: Path, config: Mapping[str, Any], header: str) -> Path:
    version = directory / VERSION
    version.mkdir(parents=True)
    (directory / CONFIG).write_text(to_pbtxt(config, header), encoding="utf-8")
    return version


def _write_python_model(
    directory: Path, config: Mapping[str, Any], header: str, export: Path, options: RepositoryOptions
) -> None:
    version = _write_model(directory, config, header)
    shutil.copy2(python_model.__file__, version / "model.py")
    _copy_export(export, version / python_model.EXPORT_SUBDIR)
    if options.vendor_runtime:
        _vendor_runtime(version)


def _engine_problem(export: Path, info: ExportInfo) -> tuple[EngineInfo | None, str | None]:
    """(engine.json, None) where the engine can be served by Triton's TensorRT backend, else (.., why not)."""
    if not (export / ENGINE).exists():
        return None, (
            f"no TensorRT engine in {export}: build it on a GPU like the serving one, with the TensorRT of "
            f"the Triton release that will serve it (python -m trt_runtime build {export}), then run "
            f"triton-repo again (or pass --plan-without-engine and copy it to 1/model.plan)"
        )
    try:
        engine = read_engine_info(export)
    except EngineMismatchError as e:
        return None, str(e)
    if engine.plugins and engine.plugin_implementation != "aot":
        return engine, (
            f"the engine's ibert plugins ({', '.join(engine.plugins)}) are JIT Python plugins, which run "
            f"only in a Python process that registered them; Triton's TensorRT backend cannot load them. "
            f"Rebuild with TensorRT >= 10.9 (AOT plugins, compiled into the engine) or with --no-plugins"
        )
    if sorted(engine.output_names or info.output_names) != sorted(info.output_names):
        return (
            engine,
            f"engine.json's outputs {engine.output_names} are not export.json's; rebuild the engine",
        )
    return engine, None


def _plan_notes(engine: EngineInfo | None) -> list[str]:
    if engine is None:
        return ["no model.plan yet: copy the engine to 1/model.plan before the server loads this model"]
    notes = [
        f"built with TensorRT {engine.tensorrt_version} for compute capability {engine.compute_capability} "
        f"({engine.gpu_name}): serve it with a Triton release on that TensorRT version, on such a GPU"
    ]
    if engine.plugins:
        notes.append(
            "ibert plugins are AOT (compiled into the engine): no plugin library, LD_PRELOAD or "
            "--backend-config=tensorrt,plugins=... is needed"
        )
    return notes


def _add_export(
    root: Path, name: str, export: Path, options: RepositoryOptions, report: RepositoryReport
) -> None:
    info = read_export_info(
        export
    )  # with the sha256 check: the repository gets the file export.json describes
    export_label = str(export)

    def record(kind: str, served_by: str, notes: list[str] | None = None) -> None:
        report.models.append(
            ModelRecord(
                name + SUFFIX[kind], kind, served_by, export_label, info.task, info.quantization, notes or []
            )
        )

    if "text" in options.kinds:
        if info.task in NO_PIPELINE:
            report.skipped.append((name, f"{info.task} has no pipeline (serve {name}-onnx / {name}-trt)"))
        else:
            config = text_model_config(name, info, options)
            _write_python_model(root / name, config, _header(info, export, "text"), export, options)
            record("text", "python")
    if "onnx" in options.kinds:
        onnx_name = name + SUFFIX["onnx"]
        config = onnx_model_config(onnx_name, info, options)
        header = _header(info, export, "onnx")
        if options.onnx_backend == "onnxruntime":
            version = _write_model(root / onnx_name, config, header)
            for path in export.iterdir():
                if path.name.startswith(MODEL_ONNX) and not path.is_dir():  # model.onnx (+ model.onnx.data)
                    _place(path, version / path.name, export)
            record("onnx", "onnxruntime_onnx")
        else:
            _write_python_model(root / onnx_name, config, header, export, options)
            record("onnx", "python", ["ONNX Runtime inside the Python backend (trt_runtime OrtRunner)"])
    if "plan" in options.kinds:
        plan_name = name + SUFFIX["plan"]
        engine, problem = _engine_problem(export, info)
        if problem and not (options.plan_without_engine and engine is None):
            report.skipped.append((plan_name, problem))
            return
        config = plan_model_config(plan_name, info, engine, options)
        version = _write_model(root / plan_name, config, _header(info, export, "plan"))
        if engine is not None:
            _place(export / ENGINE, version / "model.plan", export)
        record("plan", "tensorrt_plan", _plan_notes(engine))


def write_repository(
    exports: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]],
    output: str | os.PathLike,
    options: RepositoryOptions | None = None,
    *,
    overwrite: bool = False,
) -> RepositoryReport:
    """Write the model repository for `exports` (DIR, NAME=DIR or (NAME, DIR)) to `output`.

    The repository is made in a temporary sibling and renamed into place; an existing `output` is
    replaced only with overwrite=True.
    """
    options = options or RepositoryOptions()
    options.check()
    output = Path(output)
    if not exports:
        raise RepositoryError("no export directory given")
    named = [parse_export_arg(arg) for arg in exports]
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RepositoryError(
            f"two exports would both be served as {', '.join(duplicates)}; name them: NAME=DIR"
        )
    _check_model_names(names, options)
    check_output_outside_inputs(
        output, {f"export {name}": export for name, export in named}, replaces_directory=True
    )
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise RepositoryError(f"{output} exists; pass --force (overwrite=True) to replace it")
        if not is_repository(output):
            raise RepositoryError(
                f"--force replaces only a model repository made by triton-repo (a directory with its own "
                f"{MANIFEST}); {output} is {'a symbolic link' if output.is_symlink() else 'not one'}: choose a new "
                f"--output, or remove it yourself"
            )
    check_replaceable_directory(output)
    report = RepositoryReport(output, [], [])
    with atomic_directory(output, is_previous_version=is_repository) as tmp:
        for name, export in named:
            _add_export(tmp, name, export, options, report)
        manifest = {
            "generated_by": "python -m trt_runtime triton-repo",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "options": asdict(options),
            "models": [asdict(model) for model in report.models],
            "skipped": [{"name": name, "reason": why} for name, why in report.skipped],
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return report


def is_repository(directory: Path) -> bool:
    """Whether `directory` is a model repository made by triton-repo (its own repository.json says so): the
    only kind of directory `--force` replaces, or puts back after an interrupted swap."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generated_by") == "python -m trt_runtime triton-repo"


def _check_model_names(names: Sequence[str], options: RepositoryOptions) -> None:
    """Two exports whose models would share a name (`a-onnx` given as NAME next to `a`'s ONNX model): a
    clear error before anything is written (it was `[Errno 17] File exists` on a temporary path)."""
    owners: dict[str, str] = {}
    for name in names:
        for kind in options.kinds:
            model = name + SUFFIX[kind]
            if model in owners and owners[model] != name:
                raise RepositoryError(
                    f"the {kind} model of export {name!r} and a model of export {owners[model]!r} would both be "
                    f"named {model!r}; name the exports apart: NAME=DIR"
                )
            owners[model] = name
