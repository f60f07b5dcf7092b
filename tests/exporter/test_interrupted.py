"""Issue 11, interrupted work: an export, a calibration or an engine write killed at any point leaves the
previous output intact, never a half-written file or directory under the output's name.

Two kinds of tests:
- real `python -m exporter` / `python -m models.quantization.calibrate` processes, SIGKILLed when they
  print a given line (each step of the export), all started together so that they share the machine's
  two cores;
- fault injection at every rename of the atomic writers (`trt_runtime.contract.files`: the export directory's
  swap, `write_text_atomic`, `trt_runtime.backends.tensorrt.engine_info.write_engine`): a small child process
  that SIGKILLs itself right before or after the rename, which no timing can hit reliably.

A killed writer leaves its hidden `.NAME.tmp-<random>` (or `.NAME.old-<random>`) sibling behind, unlocked, as
documented in trt_runtime/contract/files.py; the next write of NAME removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import exporter
from exporter.directory import recover_interrupted
from tests.fixtures import ROOT
from tests.fixtures.runtime_exports import save_checkpoint
from tests.fixtures.tensorrt_test_models import ibert_graph_model, write_export_dir
from trt_runtime.backends.tensorrt.engine_info import (
    EngineInfo,
    EngineMismatchError,
    check_engine_matches,
    read_engine_info,
    write_engine,
)
from trt_runtime.backends.tensorrt.profiles import ShapeRange
from trt_runtime.contract.export_dir import ENGINE, ENGINE_JSON, ExportDirError, read_export_info
from trt_runtime.contract.files import _exchange, write_text_atomic

ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}
DEADLINE_S = 240


def snapshot(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `directory`."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def age_leftovers(parent: Path, seconds: float = 60.0) -> None:
    """Make a killed writer's leftovers look `seconds` old: a writer leaves brand-new unlocked temporaries alone
    (the instant between creating one and locking it), as the next real write, seconds later, would not."""
    past = os.stat(parent).st_mtime - seconds
    for p in parent.iterdir():
        if p.name.startswith("."):
            os.utime(p, (past, past), follow_symlinks=False)


TEMPORARY = r"\.{name}\.(tmp|old)-[0-9a-f]{{16}}"


@dataclass
class Killed:
    """A child process SIGKILLed when it printed a line matching `pattern` on stderr."""

    args: list[str]
    pattern: str
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))
    pid: int = 0
    killed_on: str | None = None
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None

    def run(self) -> None:
        process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env, bufsize=1
        )
        self.pid = process.pid
        watchdog = threading.Timer(DEADLINE_S, process.kill)
        watchdog.start()
        try:
            assert process.stderr is not None
            for line in process.stderr:
                self.lines.append(line.rstrip("\n"))
                if re.search(self.pattern, line):
                    os.kill(process.pid, signal.SIGKILL)
                    self.killed_on = line.strip()
                    break
            self.returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.stderr is not None:
                process.stderr.close()


def run_all(runs: list[Killed]) -> None:
    threads = [threading.Thread(target=run.run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- real exports and a real calibration, killed when they print a line -------------------------------------

#: kill point -> the stderr line to kill on: step lines of exporter.pipeline ("[4/5] checking the graph and
#: writing the directory" comes before the files are written, "wrote OUT" right before the swap)
EXPORT_POINTS = {
    "after loading": r"^\[1/5",
    "while writing the directory": r"^\[4/5",
    "while validating": r"^\[5/5",
    "at the swap": r"^wrote ",
}
#: the calibrate command logs "calibrated N quantizers" and then writes its file
CALIBRATION_PATTERN = r"^calibrated \d+ quantizers"
PREVIOUS_CALIBRATION = '{"format_version": 1, "previous": true}\n'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("checkpoint") / "ckpt"
    save_checkpoint(directory, "bert", "text-classification")
    return directory


@pytest.fixture(scope="module")
def previous_export(checkpoint, tmp_path_factory) -> Path:
    return exporter.export(checkpoint, tmp_path_factory.mktemp("previous") / "out", opset=17, log=None)


@pytest.fixture(scope="module")
def killed(checkpoint, previous_export, tmp_path_factory) -> dict[str, tuple[Killed, Path]]:
    """Every kill point's export (each over its own copy of the previous output) and the calibration, all
    started at once: the kills follow the lines they print, not the clock."""
    runs: dict[str, tuple[Killed, Path]] = {}
    for point, pattern in EXPORT_POINTS.items():
        root = tmp_path_factory.mktemp("killed")
        out = root / "parent" / "out"
        shutil.copytree(previous_export, out)
        args = [sys.executable, "-m", "exporter", "--model", str(checkpoint), "--task", "text-classification",
                "--output", str(out), "--opset", "18"]  # fmt: skip
        run = Killed(args, pattern)
        (root / "tmpdir").mkdir()
        run.env["TMPDIR"] = str(root / "tmpdir")  # where the exporter's own scratch directory goes
        runs[point] = (run, out)
    output = tmp_path_factory.mktemp("calibration") / "calibration.json"
    output.write_text(PREVIOUS_CALIBRATION)
    args = [sys.executable, "-m", "models.quantization.calibrate", "--model", str(checkpoint), "--output",
            str(output), "--num-samples", "32", "--batch-size", "16", "--method", "max"]  # fmt: skip
    runs["calibration"] = (Killed(args, CALIBRATION_PATTERN), output)
    run_all([run for run, _ in runs.values()])
    return runs


@pytest.mark.parametrize("point", list(EXPORT_POINTS))
def test_killed_export_leaves_the_previous_output_intact(killed, previous_export, point):
    run, out = killed[point]
    assert run.killed_on is not None and run.returncode == -signal.SIGKILL, run.lines[-5:]
    before, after = snapshot(previous_export), snapshot(out)
    if point == "at the swap" and after != before:
        # the kill came after the swap: then the new export is there, complete and checked
        assert read_export_info(out).opset == 18 and set(after) == set(before)
    else:
        assert after == before, f"the previous output changed ({point})"
    # nothing visible but the output; hidden leftovers only of the killed process, under the documented names
    parent = out.parent
    assert [p.name for p in parent.iterdir() if not p.name.startswith(".")] == ["out"]
    hidden = leftovers(parent, "out")
    assert all(re.fullmatch(TEMPORARY.format(name="out"), name) for name in hidden), hidden
    if point in ("while writing the directory", "while validating"):
        assert hidden, "killed while its staging directory existed"


def test_the_next_export_cleans_up_after_killed_ones(killed, checkpoint):
    for point in EXPORT_POINTS:
        _, out = killed[point]
        content = snapshot(out)
        age_leftovers(out.parent)
        recover_interrupted(out)  # the first thing an export to `out` does
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and snapshot(out) == content, point
    _, out = killed["while validating"]
    exporter.export(checkpoint, out, opset=18, log=None)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and read_export_info(out).opset == 18


def test_killed_export_leaves_no_scratch_directory_in_the_system_temp_dir(killed):
    run, out = killed["while writing the directory"]
    assert run.returncode == -signal.SIGKILL
    assert not list((out.parent.parent / "tmpdir").glob("onnx-raw-*"))


def test_killed_calibration_leaves_the_previous_file_intact(killed):
    run, output = killed["calibration"]
    assert run.killed_on is not None and run.returncode == -signal.SIGKILL, run.lines[-5:]
    text = output.read_text()
    if text != PREVIOUS_CALIBRATION:  # killed after the rename: then the new file is whole
        assert json.loads(text)["quantizers"]
    assert [p.name for p in output.parent.iterdir() if not p.name.startswith(".")] == ["calibration.json"]
    hidden = leftovers(output.parent, output.name)
    assert all(re.fullmatch(TEMPORARY.format(name=r"calibration\.json"), name) for name in hidden), hidden


# --- fault injection at every rename of the export directory's swap -----------------------------------------

STAGED_CHILD = r"""
import os, signal, sys, types
from pathlib import Path
root, out, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
import exporter.directory as d
import trt_runtime.contract.files as files

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after the exchange":
    exchange = files._exchange
    files._exchange = lambda a, b: exchange(a, b) and die()
else:
    files._exchange = lambda a, b: False  # the fallback: two renames
    rename, calls = os.rename, []
    def renamed(a, b):
        rename(a, b)
        calls.append(b)
        if point == f"after fallback rename {len(calls)}":
            die()
    os.rename = renamed
with d.staged_directory(out) as staging:
    (staging / "export.json").write_text('{"new": true}')
    (staging / "model.onnx").write_bytes(b"new model" * 1000)
    if point == "while writing":
        die()
print("not killed")
"""
NEW = {"export.json": '{"new": true}', "model.onnx": "new model" * 1000}


def _old_output(out: Path) -> dict[str, str]:
    """A real (small, torch-free) export at `out`, the only kind of directory an export replaces or restores."""
    write_export_dir(out, ibert_graph_model())
    return snapshot(out)


def _content(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def _can_exchange(tmp_path: Path) -> bool:
    a, b = tmp_path / "exchange-a", tmp_path / "exchange-b"
    a.mkdir()
    b.mkdir()
    try:
        return _exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


@pytest.mark.parametrize(
    "point", ["while writing", "after the exchange", "after fallback rename 1", "after fallback rename 2"]
)
def test_export_directory_swap_killed_at_each_rename(tmp_path, point):
    if point == "after the exchange" and not _can_exchange(tmp_path):
        pytest.skip("this filesystem cannot exchange directories (renameat2 RENAME_EXCHANGE)")
    out = tmp_path / "parent" / "out"
    old = _old_output(out)
    result = subprocess.run(
        [sys.executable, "-c", STAGED_CHILD, str(ROOT), str(out), point],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    parent = out.parent
    hidden = leftovers(parent, "out")
    assert hidden and all(re.fullmatch(TEMPORARY.format(name="out"), name) for name in hidden), hidden
    if point == "while writing":
        assert snapshot(out) == old
    elif point == "after fallback rename 1":
        # the only moment the output's name is missing: a reader is told so, never given half a directory
        assert not out.exists()
        with pytest.raises(ExportDirError, match="is not a directory"):
            read_export_info(out)
    else:
        assert _content(out) == NEW  # the swap happened: the new output is whole
    age_leftovers(parent)
    recover_interrupted(out)  # what the next export does first
    assert sorted(p.name for p in parent.iterdir()) == ["out"]
    if point in ("after the exchange", "after fallback rename 2"):
        assert _content(out) == NEW
    else:
        assert snapshot(out) == old


# --- the calibration file's write, killed before its rename ------------------------------------------------

ATOMIC_CHILD = r"""
import os, signal, sys, types
from pathlib import Path
path = Path(sys.argv[2])
from trt_runtime.contract.files import write_text_atomic
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed with the new text written, unrenamed
write_text_atomic(path, '{"new": true}')
"""


def test_calibration_file_write_killed_before_its_rename(tmp_path):
    output = tmp_path / "calibration.json"
    output.write_text(PREVIOUS_CALIBRATION)
    result = subprocess.run(
        [sys.executable, "-c", ATOMIC_CHILD, str(ROOT), str(output)], capture_output=True, timeout=60, env=ENV
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert output.read_text() == PREVIOUS_CALIBRATION
    (stale,) = leftovers(tmp_path, "calibration.json")
    assert (tmp_path / stale).read_text() == '{"new": true}'  # the half of the work that never replaced it
    age_leftovers(tmp_path)
    write_text_atomic(output, "next\n")  # the next save removes the dead writer's file
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"] and output.read_text() == "next\n"
    )


# --- engine files: the write killed at each of its renames --------------------------------------------------

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
