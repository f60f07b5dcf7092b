"""scripts/gpu_check.sh and scripts/gpu_check.py on a CPU machine: arguments, parts that skip with the reason,
the JSON they leave, the GPU_RESULTS.md row, and pytest's junit report read back (pytest is the reference)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _module()


def _run(*args: str, out: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(ROOT)}
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no results directory: set OUT=DIR or pass --out DIR"),
        (("--out", "/tmp/x", "--parts", "env,gpu"), "unknown part 'gpu'"),
        (("--out", "/tmp/x", "--budget", "5"), "--budget 5: give whole seconds, at least 10"),
        (("--out", "/tmp/x", "--verbose"), "unknown argument --verbose"),
    ],
)
def test_bad_arguments(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "gpu-results-row.md" in result.stdout and "--parts" in result.stdout


def _cpu_only() -> bool:
    from trt_runtime.backends.tensorrt.libs import tensorrt_available

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    return not cuda and not tensorrt_available()[0]


@pytest.mark.skipif(not _cpu_only(), reason="checks what the script does on a machine without a GPU and TensorRT")
def test_on_a_cpu_machine_parts_skip_with_the_reason(tmp_path):
    out = tmp_path / "out"
    result = _run("--parts", "env,kernels,tensorrt", out=out)
    assert result.returncode == 0, result.stdout + result.stderr
    parts = json.loads((out / "parts.json").read_text())
    assert parts["env"]["status"] == "passed"
    assert parts["kernels"]["status"] == "skipped" and "kernels.json" in parts["kernels"]["reason"]
    assert parts["tensorrt"]["status"] == "skipped" and "TensorRT is not installed" in parts["tensorrt"]["reason"]
    assert json.loads((out / "kernels.json").read_text()) == {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)"}
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"created", "env", "parts", "tests", "kernels", "tensorrt"}
    assert results["env"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert results["env"]["libraries"]["tensorrt"] is None and results["env"]["tensorrt_usable"] is False
    row = (out / "gpu-results-row.md").read_text().strip()
    assert row.count("|") == gpu_check.ROW_HEADER.count("|") and "kernels skipped: no CUDA GPU" in row
    assert "== tensorrt: skipped (TensorRT is not installed" in result.stdout


def test_a_spent_budget_skips_the_remaining_parts(tmp_path):
    out = tmp_path / "out"
    result = _run("--parts", "env,kernels", "--budget", "10", out=out)  # 10 s minus the 15 s kept: nothing runs
    assert result.returncode == 0
    parts = json.loads((out / "parts.json").read_text())
    assert parts["env"] == {"status": "skipped", "seconds": 0.0, "rc": None, "reason": "time budget spent"}


def test_junit_report_read_back(tmp_path):
    tests = tmp_path / "test_sample.py"
    tests.write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert False\n"
        "@pytest.mark.skip(reason='no GPU')\n"
        "def test_skipped(): pass\n"
    )
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), f"--junitxml={report}"],
                   cwd=tmp_path, capture_output=True)
    counts = gpu_check.parse_junit(report)
    assert {k: counts[k] for k in ("tests", "passed", "failures", "skipped")} == {"tests": 3, "passed": 1, "failures": 1,
                                                                                   "skipped": 1}
    assert counts["failed"] == ["test_sample::test_bad"]
    assert "no test report" in gpu_check.parse_junit(tmp_path / "missing.xml")["error"]


def test_kernel_rows_and_the_results_row():
    rows = gpu_check.kernel_rows({"gelu": {"ibert": 0.5, "torch": 0.25}},
                                 {"gelu": 2 * 32 * 128 * 3072 * 4})  # float32 in and out at BERT-base b32 s128
    assert rows == [{"op": "gelu", "ibert_ms": 0.5, "torch_ms": 0.25, "ibert_gbps": 201.3, "torch_gbps": 402.7,
                     "x_torch": 0.5}]
    summary = {
        "created": "2026-01-02T03:04:05+00:00",
        "env": {"gpus": [{"name": "NVIDIA H200", "driver_version": "570.86"}],
                "libraries": {"tensorrt": None, "triton": "3.6.0"}},
        "parts": {"tests": {"status": "timeout"}},
        "tests": {"tests": 20, "passed": 18, "failures": 1, "errors": 0, "skipped": 1},
        "kernels": {"rows": rows},
    }
    assert gpu_check.results_row(summary) == (
        "| NVIDIA H200 | 2026-01-02 | no TensorRT / 3.6.0 / 570.86 | 18 passed, 1 failed, 1 skipped | "
        "gelu 201.3 GB/s (0.5x torch); tests timeout |"
    )
