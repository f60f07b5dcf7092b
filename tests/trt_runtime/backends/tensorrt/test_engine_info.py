"""engine.json (trt_runtime.backends.tensorrt.engine_info): written atomically, read back, and checked against the export,
the installed TensorRT and the GPU, with messages that say to rebuild."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trt_runtime
from tests.fixtures.interruptions import (
    ENV,
    age_leftovers,
    leftovers,
    snapshot,
)
from tests.fixtures.tensorrt_test_models import ENGINE_BYTES, engine_info
from trt_runtime.backends.tensorrt.engine_info import (
    EngineInfo,
    EngineMismatchError,
    check_engine_matches,
    read_engine_info,
    write_engine,
)
from trt_runtime.backends.tensorrt.profiles import ShapeRange, resolve_profile
from trt_runtime.contract.export_dir import (
    ENGINE,
    ENGINE_JSON,
    read_export_info,
)
from trt_runtime.contract.files import sha256_bytes, write_bytes_atomic
from trt_runtime.loader import cpu_backends


def _matches(info: EngineInfo, directory, **overrides):
    kwargs = dict(
        onnx_sha256="a" * 64,
        tensorrt_version="10.13.0.35",
        compute_capability="9.0",
        engine_sha256=sha256_bytes(ENGINE_BYTES),
    )
    kwargs.update(overrides)
    check_engine_matches(info, directory, **kwargs)


def test_write_and_read_back(tmp_path):
    info = engine_info()
    write_engine(tmp_path, ENGINE_BYTES, info)
    assert (tmp_path / ENGINE).read_bytes() == ENGINE_BYTES
    data = json.loads((tmp_path / ENGINE_JSON).read_text())
    assert data["profiles"][0]["input_ids"] == {"min": [1, 1, 1], "opt": [4, 4, 64], "max": [16, 8, 64]}
    assert data["tensorrt_version"] == "10.13.0.35" and data["compute_capability"] == "9.0"
    assert read_engine_info(tmp_path) == info
    assert sorted(os.listdir(tmp_path)) == [ENGINE_JSON, ENGINE]  # no temporary files left


def test_matching_engine_passes(tmp_path):
    _matches(engine_info(), tmp_path)
    _matches(engine_info(), tmp_path, compute_capability=None, engine_sha256=None)  # checks that can be skipped


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"onnx_sha256": "b" * 64}, r"built from a different model.onnx \(sha256 aaaaaaaaaaaa…, the file now is bbbbbbbbbbbb…\)"),
        ({"tensorrt_version": "10.14.1.48"}, r"built with TensorRT 10.13.0.35 but TensorRT 10.14.1.48 is installed"),
        ({"compute_capability": "8.9"}, r"compute capability 9.0 \(NVIDIA H100 80GB HBM3\) but this GPU has compute capability 8.9"),
        ({"engine_sha256": "c" * 64}, r"model.engine is not the file engine.json describes"),
    ],
)
def test_mismatches_are_refused_with_a_rebuild_hint(tmp_path, overrides, message):
    with pytest.raises(EngineMismatchError, match=message) as error:
        _matches(engine_info(), tmp_path, **overrides)
    assert f"python -m trt_runtime build {tmp_path}" in str(error.value)


def test_all_mismatches_are_listed(tmp_path):
    with pytest.raises(EngineMismatchError) as error:
        _matches(engine_info(), tmp_path, onnx_sha256="b" * 64, tensorrt_version="11.0.0")
    assert "different model.onnx" in str(error.value) and "TensorRT 11.0.0 is installed" in str(error.value)


def test_missing_engine_says_build(tmp_path):
    with pytest.raises(EngineMismatchError, match=f"model.engine not found; build it: python -m trt_runtime build {tmp_path}"):
        read_engine_info(tmp_path)


def test_missing_engine_json_says_rebuild(tmp_path):
    (tmp_path / ENGINE).write_bytes(ENGINE_BYTES)
    with pytest.raises(EngineMismatchError, match="engine.json not found.*rebuild it"):
        read_engine_info(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"tensorrt_version": "10"}', "is incomplete or malformed"),
        (json.dumps({**engine_info().to_dict(), "format_version": 99}), "format_version 99 is newer"),
    ],
)
def test_bad_engine_json(tmp_path, content, message):
    (tmp_path / ENGINE).write_bytes(ENGINE_BYTES)
    (tmp_path / ENGINE_JSON).write_text(content)
    with pytest.raises(EngineMismatchError, match=message):
        read_engine_info(tmp_path)


def test_unknown_keys_are_ignored(tmp_path):
    write_engine(tmp_path, ENGINE_BYTES, engine_info())
    data = json.loads((tmp_path / ENGINE_JSON).read_text())
    data["added_in_a_later_version"] = True
    (tmp_path / ENGINE_JSON).write_text(json.dumps(data))
    assert read_engine_info(tmp_path) == engine_info()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / ENGINE
    target.write_bytes(b"old")

    def disk_full(fd):  # the new bytes are in the temporary file, but flushing them fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == [ENGINE]


def test_aot_kernels_need_a_driver_that_takes_their_ptx(tmp_path):
    """engine.json records the oldest driver whose JIT takes the AOT kernels' PTX (plugins/aot.py); a machine
    with an older driver is refused with the fix (review D4)."""
    info = engine_info(cuda_driver_version="12.8", plugin_ptx_version=87, min_cuda_driver_version="12.8")
    _matches(info, tmp_path, cuda_driver_version="12.8")
    _matches(info, tmp_path, cuda_driver_version="13.0")
    with pytest.raises(EngineMismatchError, match=r"PTX ISA 8.7, which needs a CUDA driver for CUDA 12.8 or newer, "
                                                  r"and this machine's driver supports CUDA 12.4: update the NVIDIA driver"):
        _matches(info, tmp_path, cuda_driver_version="12.4")
    _matches(engine_info(), tmp_path, cuda_driver_version="11.8")  # no AOT kernels: nothing to check


def test_layer_report_and_driver_round_trip(tmp_path):
    info = engine_info(cuda_driver_version="12.4", plugin_ptx_version=84, min_cuda_driver_version="12.4",
                       layers={"layers": 3, "precision": {"INT8": 2, "FP16": 1}})
    write_engine(tmp_path, ENGINE_BYTES, info, '{"Layers": []}')
    assert read_engine_info(tmp_path) == info
    assert sorted(os.listdir(tmp_path)) == [ENGINE_JSON, "engine_layers.json", ENGINE]


# --- engine files: the write killed at each of its renames ---------------------------------------------------

ENGINE_CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
directory, kill_at = Path(sys.argv[1]), sys.argv[2]
replace, calls = os.replace, []
def replaced(a, b, **kwargs):
    if kill_at == f"before rename {len(calls) + 1}":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(a, b, **kwargs)
    calls.append(b)
    if kill_at == f"after rename {len(calls)}":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replaced
write_engine(directory, b"new engine" * 100000, EngineInfo.from_dict(json.loads(sys.argv[3])))
"""


def _engine_record(engine: bytes) -> EngineInfo:
    return EngineInfo(
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        onnx_sha256="a" * 64,
        engine_sha256=hashlib.sha256(engine).hexdigest(),
        profiles=[{"input_ids": ShapeRange((1, 1), (8, 128), (32, 512))}],
    )


def _check(directory: Path) -> Callable[[], None]:
    def check() -> None:
        engine = (directory / ENGINE).read_bytes()
        check_engine_matches(
            read_engine_info(directory), directory, onnx_sha256="a" * 64, tensorrt_version="10.13.0.35",
            compute_capability="9.0", engine_sha256=hashlib.sha256(engine).hexdigest(),
        )  # fmt: skip

    return check


@pytest.mark.parametrize("kill_at", ["before rename 1", "after rename 1", "before rename 2"])
def test_engine_write_killed_leaves_the_old_engine_or_a_detected_mismatch(tmp_path, kill_at):
    old_engine, new_engine = b"old engine" * 100000, b"new engine" * 100000
    write_engine(tmp_path, old_engine, _engine_record(old_engine))
    old = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_CHILD, str(tmp_path), kill_at, json.dumps(_engine_record(new_engine).to_dict())],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == [ENGINE_JSON, ENGINE]
    if kill_at != "after rename 1":  # killed with a temporary file written and not yet renamed
        assert leftovers(tmp_path, ENGINE) + leftovers(tmp_path, ENGINE_JSON)
    if kill_at == "before rename 1":
        assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(".")} == old
        _check(tmp_path)()  # the previous engine, whole and still matching its record
    else:
        # the new engine under the old record: refused, with the reason and the fix
        assert (tmp_path / ENGINE).read_bytes() == new_engine
        with pytest.raises(
            EngineMismatchError, match=r"not the file engine.json describes \(an interrupted build"
        ):
            _check(tmp_path)()
    age_leftovers(tmp_path)
    write_engine(tmp_path, new_engine, _engine_record(new_engine))  # the next build: whole, and tidy
    assert sorted(p.name for p in tmp_path.iterdir()) == [ENGINE_JSON, ENGINE]
    _check(tmp_path)()


# --- engine.json: built on another machine (pure checks; TensorRT is not needed) -----------------------------

def _engine_info(export: Path, **overrides: Any) -> EngineInfo:
    info = read_export_info(export)
    fields: dict[str, Any] = dict(
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        onnx_sha256=info.onnx_sha256,
        engine_sha256=hashlib.sha256(b"engine").hexdigest(),
        profiles=[resolve_profile(info)],
    )
    fields.update(overrides)
    return EngineInfo(**fields)


def test_engine_from_another_tensorrt_and_gpu_is_refused_naming_both_and_the_rebuild(export_copy):
    write_engine(export_copy, b"engine", _engine_info(export_copy))
    recorded = read_engine_info(export_copy)
    with pytest.raises(EngineMismatchError) as error:
        check_engine_matches(
            recorded,
            export_copy,
            onnx_sha256=read_export_info(export_copy).onnx_sha256 or "",
            tensorrt_version="10.14.1.48",
            compute_capability="8.9",
            engine_sha256=hashlib.sha256(b"engine").hexdigest(),
        )
    message = str(error.value)
    assert "built with TensorRT 10.13.0.35 but TensorRT 10.14.1.48 is installed" in message
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3) but this GPU has compute capability 8.9" in message
    assert message.endswith(f"To fix, rebuild it: python -m trt_runtime build {export_copy}")
    # on this machine (no TensorRT) "auto" still serves the export with ONNX Runtime, and says why
    runner = trt_runtime.load(export_copy)
    assert runner.backend == cpu_backends("none")[0] and "TensorRT is not available" in runner.choice.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"onnx_sha256": None}, "onnx_sha256 must be strings"),
        ({"tensorrt_version": 10}, "tensorrt_version must be strings"),
        ({"profiles": []}, "it has no optimization profile"),
        ({"profiles": ["input_ids"]}, "incomplete or malformed"),
    ],
)
def test_engine_json_with_wrong_values_is_a_mismatch_not_a_crash(export_copy, change, message):
    write_engine(export_copy, b"engine", _engine_info(export_copy))
    data = json.loads((export_copy / ENGINE_JSON).read_text())
    data.update(change)
    (export_copy / ENGINE_JSON).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=f"{message}.*rebuild"):
        read_engine_info(export_copy)
