"""The ibert Triton kernels under Triton's CPU interpreter (TRITON_INTERPRET=1), exactly against the NumPy
int64 reference: the same kernels and launchers as on a GPU, run on CPU torch tensors.

The interpreter executes the kernel's Triton operations with NumPy, so this checks the algorithm
(integer steps, rounding, reductions, masking, multi-block rows) but not the GPU code generation; the
`gpu`-marked tests in test_gpu_kernels.py run the compiled kernels. Triton chooses interpreted or
compiled kernels when it is imported, so the cases run in one child process
(`TRITON_INTERPRET=1 python -m tests.fixtures.ibert_kernel_cases`) and each is reported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install triton; it is in the test extra)")
pytest.importorskip("torch")

from tests.fixtures import ROOT as REPO
from tests.fixtures.ibert_kernel_cases import all_cases  # noqa: E402

CASE_IDS = [case.id for case in all_cases()]


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str | None]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.ibert_kernel_cases"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"the interpreter run failed:\n{run.stderr[-4000:]}"
    return {result["id"]: result["mismatch"] for result in json.loads(run.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_kernel_matches_reference_exactly(case_id, interpreter_results):
    assert case_id in interpreter_results
    assert interpreter_results[case_id] is None, interpreter_results[case_id]


def test_a_wrong_constant_is_caught(interpreter_results):
    """The comparison can fail: a GELU table off by one in one channel changes the output."""
    assert interpreter_results["negative-control"] is not None
    assert "values differ" in interpreter_results["negative-control"]
