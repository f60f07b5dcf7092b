"""scripts/build_engines.sh, scripts/trtexec_bench.sh and their Python helper (trt_runtime.backends.tensorrt.trtexec).

Without TensorRT the scripts must stop at once, non-zero, saying what is missing. The benchmark
plumbing (arguments from export.json/engine.json, trtexec's exported JSON summarised) is checked with
a stand-in `trtexec` executable that records its arguments and writes JSON in trtexec's format.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import ROOT as REPO
from tests.fixtures.tensorrt_test_models import export_info, ibert_graph_model, write_export_dir
from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
from trt_runtime.backends.tensorrt.profiles import resolve_profile
from trt_runtime.backends.tensorrt.trtexec import (
    TrtexecError,
    summarize_profile,
    summarize_times,
    trtexec_args,
)


def _engine_dir(tmp_path: Path, plugin_implementation: str | None = "aot") -> Path:
    info = export_info(max_len=64)
    directory = write_export_dir(tmp_path / "export", ibert_graph_model(), info)
    engine = EngineInfo(
        tensorrt_version="10.13.0.35", gpu_name="GPU", compute_capability="9.0", onnx_sha256=info.onnx_sha256 or "",
        engine_sha256="0" * 64, profiles=[resolve_profile(info, opt_shapes="input_ids:4x32")],
        plugins=["ibert::IntGELU"] if plugin_implementation else [], plugin_implementation=plugin_implementation,
    )
    write_engine(directory, b"engine", engine)
    return directory


def test_args_for_a_built_engine(tmp_path):
    directory = _engine_dir(tmp_path)
    assert trtexec_args(directory) == [
        f"--loadEngine={directory / 'model.engine'}",
        "--shapes=input_ids:4x32,attention_mask:4x32,token_type_ids:4x32",
    ]


def test_jit_plugin_engines_are_refused(tmp_path):
    with pytest.raises(TrtexecError, match="JIT Python plugins.*cannot be loaded by trtexec.*TensorRT >= 10.12"):
        trtexec_args(_engine_dir(tmp_path, "jit"))


def test_args_when_trtexec_builds(tmp_path):
    directory = _engine_dir(tmp_path)
    args = trtexec_args(directory, build=True)
    assert args[0] == f"--onnx={directory / 'model.onnx'}"
    assert "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1" in args
    assert "--maxShapes=input_ids:32x64,attention_mask:32x64,token_type_ids:32x64" in args
    assert "--stronglyTyped" in args and "--int8" not in args and "--fp16" not in args
    weak = trtexec_args(directory, build=True, fp16=True)  # the test graph has Q/DQ: INT8 too
    assert "--stronglyTyped" not in weak and "--int8" in weak and "--fp16" in weak
    assert "--int8" not in trtexec_args(write_export_dir(tmp_path / "float", ibert_graph_model(with_qdq=False)),
                                        build=True, strongly_typed=False)


def _times(n: int) -> list[dict]:
    return [
        {"startH2DMs": 10.0 * i, "endH2DMs": 10.0 * i + 0.1, "startComputeMs": 10.0 * i + 0.1,
         "endComputeMs": 10.0 * i + 1.0 + i / 100, "startD2HMs": 10.0 * i + 1.0, "endD2HMs": 10.0 * i + 1.5,
         "h2dMs": 0.1, "computeMs": 0.9 + i / 100, "d2hMs": 0.05, "latencyMs": 1.0 + i / 100, "endToEndMs": 1.5}
        for i in range(n)
    ]


PROFILE = [
    {"count": 100},
    {"name": "layer/gelu ibert::IntGELU", "timeMs": 20.0, "averageMs": 0.2, "medianMs": 0.2, "percentage": 20.0},
    {"name": "MatMul_1", "timeMs": 70.0, "averageMs": 0.7, "medianMs": 0.7, "percentage": 70.0},
    {"name": "layer/softmax IntSoftmax", "timeMs": 10.0, "averageMs": 0.1, "medianMs": 0.1, "percentage": 10.0},
]


def test_summaries():
    times = summarize_times(_times(100))
    assert times["inferences"] == 100
    assert times["latency_ms"]["min"] == 1.0 and times["latency_ms"]["max"] == pytest.approx(1.99)
    assert times["latency_ms"]["median"] == pytest.approx(1.495) and times["latency_ms"]["p99"] == pytest.approx(1.98)
    assert times["throughput_inferences_per_s"] == pytest.approx(100 / (991.5 / 1000))
    profile = summarize_profile(PROFILE, top=2)
    assert [layer["name"] for layer in profile["slowest_layers"]] == ["MatMul_1", "layer/gelu ibert::IntGELU"]
    assert profile["ibert_plugin_average_ms"] == pytest.approx(0.3) and profile["ibert_plugin_layers"] == 2
    with pytest.raises(TrtexecError, match="unexpected --exportTimes format"):
        summarize_times([{"latencyMs": 1.0}])
    with pytest.raises(TrtexecError, match="no layers"):
        summarize_profile([{"count": 1}])


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_build_engines_without_tensorrt_fails_with_the_reason(tmp_path):
    write_export_dir(tmp_path / "exports" / "a", ibert_graph_model())
    result = _run("build_engines.sh", str(tmp_path / "exports"), "--fp16")
    if result.returncode == 0:
        pytest.skip("TensorRT is installed here")
    assert result.returncode == 1
    assert "error: cannot build TensorRT engines here: TensorRT is not installed" in result.stderr


def test_build_engines_needs_a_folder(tmp_path):
    result = _run("build_engines.sh", str(tmp_path / "missing"))
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_trtexec_bench_without_trtexec_fails_with_the_reason(tmp_path):
    result = _run("trtexec_bench.sh", str(tmp_path), env={"TRTEXEC": str(tmp_path / "no-such-trtexec")})
    assert result.returncode == 1
    assert "error: trtexec not found: install TensorRT" in result.stderr


FAKE_TRTEXEC = r"""#!/usr/bin/env bash
# stand-in for trtexec: records its arguments, writes timings and a profile in trtexec's JSON format
echo "$@" >> "$FAKE_LOG"
for arg in "$@"; do
    case "$arg" in
        --exportTimes=*) python3 -c 'import json,sys; json.dump([{"startH2DMs": i, "endH2DMs": i + .1, "startComputeMs": i + .1, "endComputeMs": i + .9, "startD2HMs": i + .9, "endD2HMs": i + 1.0, "h2dMs": .1, "computeMs": .8, "d2hMs": .1, "latencyMs": 1.0, "endToEndMs": 1.0} for i in range(10)], open(sys.argv[1], "w"))' "${arg#*=}" ;;
        --exportProfile=*) echo '[{"count": 10}, {"name": "IntGELU", "timeMs": 1, "averageMs": 0.1, "medianMs": 0.1, "percentage": 100}]' > "${arg#*=}" ;;
    esac
done
echo "&&&& PASSED TensorRT.trtexec"
"""


def test_trtexec_bench_plumbing(tmp_path):
    directory = _engine_dir(tmp_path)
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    results = tmp_path / "results"
    result = _run("trtexec_bench.sh", str(directory), env={
        "TRTEXEC": str(fake), "FAKE_LOG": str(tmp_path / "calls"), "RESULTS": str(results), "ITERATIONS": "10",
    })
    assert result.returncode == 0, result.stderr
    call = (tmp_path / "calls").read_text().split()
    assert f"--loadEngine={directory / 'model.engine'}" in call and "--iterations=10" in call
    assert "--shapes=input_ids:4x32,attention_mask:4x32,token_type_ids:4x32" in call
    summary = json.loads((results / "trtexec-export.json").read_text())
    assert summary["inferences"] == 10 and summary["latency_ms"]["median"] == 1.0
    assert summary["profile"]["ibert_plugin_layers"] == 1
    assert summary["engine"]["plugin_implementation"] == "aot"
    assert summary["trtexec_args"][0] == f"--loadEngine={directory / 'model.engine'}"
