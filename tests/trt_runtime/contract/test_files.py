"""trt_runtime.contract.files: atomic writes of files, killed at any point."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.fixtures import ROOT
from tests.fixtures.interruptions import (
    ENV,
    PREVIOUS_CALIBRATION,
    age_leftovers,
    leftovers,
)
from trt_runtime.contract.files import write_text_atomic

# --- a file write killed before its rename -------------------------------------------------------------------

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
