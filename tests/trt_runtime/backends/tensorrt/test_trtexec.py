"""scripts/build_engines.sh, scripts/trtexec_bench.sh and their Python helper (trt_runtime.backends.tensorrt.trtexec).

Without TensorRT the scripts must stop at once, non-zero, saying what is missing. The benchmark
plumbing (arguments from export.json/engine.json, checked against trtexec's option list; trtexec's
exported JSON summarised) is checked on files in trtexec's real formats (tests/fixtures/tensorrt_formats.py,
made from samples/common/sampleReporting.cpp) and with a stand-in `trtexec` that writes them.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.fixtures import ROOT as REPO
from tests.fixtures.tensorrt_formats import (
    bert_layer_fixture,
    inspector_text,
    regular_spans,
    trtexec_profile_text,
    trtexec_times_text,
)
from tests.fixtures.tensorrt_test_models import export_info, ibert_graph_model, write_export_dir
from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
from trt_runtime.backends.tensorrt.profiles import resolve_profile
from trt_runtime.backends.tensorrt.trtexec import (
    TrtexecError,
    batch_and_sequence,
    check_flags,
    summarize,
    summarize_profile,
    summarize_times,
    trtexec_args,
    trtexec_options,
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


# --------------------------------------------------------------------------------------------------
# arguments, checked against trtexec's option list


def test_option_list_is_the_one_of_sample_options():
    options = trtexec_options()
    assert set(options) == {"v10.0.0", "v10.13.0", "v11.1"}
    for flag in ("--loadEngine", "--shapes", "--stronglyTyped", "--exportTimes", "--exportProfile", "--useCudaGraph",
                 "--noDataTransfers", "--exportLayerInfo", "--profilingVerbosity", "--separateProfileRun"):
        assert all(flag in names for names in options.values()), flag
    assert "--fp16" in options["v10.13.0"] and "--fp16" not in options["v11.1"]  # weak typing is gone in 11
    assert "--noCudaGraph" in options["v11.1"] and "--noCudaGraph" not in options["v10.13.0"]


def test_args_for_a_built_engine(tmp_path):
    directory = _engine_dir(tmp_path)
    args = trtexec_args(directory, export_prefix=str(tmp_path / "x"), iterations=10, cuda_graph=True,
                        no_data_transfers=True)
    assert args[:2] == [
        f"--loadEngine={directory / 'model.engine'}",
        "--shapes=input_ids:4x32,attention_mask:4x32,token_type_ids:4x32",
    ]
    assert {"--iterations=10", "--useCudaGraph", "--noDataTransfers", "--separateProfileRun",
            f"--exportTimes={tmp_path / 'x'}-times.json", f"--exportLayerInfo={tmp_path / 'x'}-layers.json"} <= set(args)
    assert check_flags(args) == args  # every flag is one trtexec 10.0 and 10.13 parse


def test_unknown_flags_are_refused():
    with pytest.raises(TrtexecError, match=r"trtexec v10.0.0, v10.13.0 has no option --noSuchFlag"):
        check_flags(["--noSuchFlag=1"])
    with pytest.raises(TrtexecError, match="v10.0.0 has no option --asyncFileReader"):  # added after 10.0
        check_flags(["--asyncFileReader"])
    with pytest.raises(TrtexecError, match="is not a trtexec flag"):
        check_flags(["iterations=3"])


def test_jit_plugin_engines_are_refused(tmp_path):
    with pytest.raises(TrtexecError, match="JIT Python plugins.*cannot be loaded by trtexec.*TensorRT >= 10.9"):
        trtexec_args(_engine_dir(tmp_path, "jit"))


def test_args_when_trtexec_builds(tmp_path):
    directory = write_export_dir(tmp_path / "export", ibert_graph_model(), export_info(max_len=64))
    with pytest.raises(TrtexecError, match="--build needs --scratch"):
        trtexec_args(directory, build=True)
    scratch = tmp_path / "scratch"
    args = trtexec_args(directory, build=True, scratch=scratch)
    graph = scratch / "export-tensorrt.onnx"
    assert args[0] == f"--onnx={graph}"
    # the graph handed over is the --no-plugins form: the ibert nodes with their function bodies
    assert {f.name for f in onnx.load(str(graph)).functions} >= {"IntGELU", "IntSoftmax", "IntLayerNorm"}
    assert "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1" in args
    assert "--maxShapes=input_ids:32x64,attention_mask:32x64,token_type_ids:32x64" in args
    assert "--stronglyTyped" in args and "--int8" not in args and "--fp16" not in args
    assert "--profilingVerbosity=detailed" in args
    weak = trtexec_args(directory, build=True, fp16=True, strongly_typed=False, scratch=scratch)
    assert "--stronglyTyped" not in weak and "--int8" in weak and "--fp16" in weak  # Q/DQ: INT8 too
    float_dir = write_export_dir(tmp_path / "float", ibert_graph_model(with_qdq=False))
    assert "--int8" not in trtexec_args(float_dir, build=True, strongly_typed=False, scratch=scratch)


# --------------------------------------------------------------------------------------------------
# trtexec's exported JSON, in its real format


def test_times_in_trtexecs_format():
    spans = regular_spans(100, period=2.0, h2d=0.1, compute=1.0, d2h=0.05, jitter=0.001)
    records = json.loads(trtexec_times_text(spans))
    assert set(records[0]) == {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
                               "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"}
    times = summarize_times(records, sequences_per_inference=8)
    computes = [1.0 + 0.001 * i for i in range(100)]
    latencies = [0.1 + c + 0.05 for c in computes]
    assert times["inferences"] == 100
    assert times["gpu_compute_ms"]["median"] == pytest.approx(statistics.median(computes), rel=1e-5)
    assert times["latency_ms"]["max"] == pytest.approx(max(latencies), rel=1e-5)
    # trtexec's throughput: inferences over first startH2dMs .. last endD2hMs
    wall = (500 + 99 * 2.0 + 0.1 + computes[-1] + 0.05) - 500
    assert times["throughput_inferences_per_s"] == pytest.approx(100 / wall * 1000, rel=1e-5)
    assert times["throughput_sequences_per_s"] == pytest.approx(8 * 100 / wall * 1000, rel=1e-5)


def test_times_with_the_old_misspelt_keys_are_refused():
    text = trtexec_times_text(regular_spans(3)).replace("startH2dMs", "startH2DMs")
    with pytest.raises(TrtexecError, match="unexpected --exportTimes format.*startH2dMs"):
        summarize_times(json.loads(text))


def test_profile_in_trtexecs_format():
    text = trtexec_profile_text(100, [("layer/gelu ibert::IntGELU", 20.0, 0.2, 0.2), ("MatMul_1", 70.0, 0.7, 0.7),
                                      ("layer/softmax IntSoftmax", 10.0, 0.1, 0.1)])
    profile = summarize_profile(json.loads(text), top=2)
    assert [layer["name"] for layer in profile["slowest_layers"]] == ["MatMul_1", "layer/gelu ibert::IntGELU"]
    assert profile["slowest_layers"][0]["percentage"] == pytest.approx(70.0)
    assert profile["ibert_plugin_average_ms"] == pytest.approx(0.3) and profile["ibert_plugin_layers"] == 2
    with pytest.raises(TrtexecError, match="no layers"):
        summarize_profile(json.loads(trtexec_profile_text(1, [])))


def test_batch_sequence_and_choices_from_the_shapes():
    info = export_info(multiple_choice=True)
    counts = batch_and_sequence(info, {"input_ids": (4, 3, 128)})
    assert counts == {"batch_size": 4, "sequence_length": 128, "num_choices": 3, "sequences_per_inference": 12}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_summary_records_mode_shapes_and_engine(tmp_path):
    directory = _engine_dir(tmp_path)
    times = _write(tmp_path / "t.json", trtexec_times_text(regular_spans(10)))
    layers = _write(tmp_path / "l.json", inspector_text(bert_layer_fixture(batch=4, seq=32)))
    command = trtexec_args(directory)
    result = summarize(directory, times, None, "x", command, "engine", layers)
    assert result["shapes"]["input_ids"] == [4, 32] and result["batch_size"] == 4 and result["sequence_length"] == 32
    assert result["throughput_sequences_per_s"] == pytest.approx(4 * result["throughput_inferences_per_s"])
    assert result["engine"]["plugin_implementation"] == "aot" and result["layers"]["gemm"]["layers"]["INT8"] == 4
    # build mode: trtexec made its own engine, so the engine.json beside it describes something else
    built = summarize(directory, times, None, "x", command, "build")
    assert built["mode"] == "build" and built["engine"] is None


# --------------------------------------------------------------------------------------------------
# the scripts


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
# stand-in for trtexec: records its arguments, writes timings, a profile and layer information in trtexec's formats
echo "$@" >> "$FAKE_LOG"
for arg in "$@"; do
    case "$arg" in
        --exportTimes=*) "$PYTHON" -c 'import sys; from tests.fixtures.tensorrt_formats import *; open(sys.argv[1], "w").write(trtexec_times_text(regular_spans(10)))' "${arg#*=}" ;;
        --exportProfile=*) "$PYTHON" -c 'import sys; from tests.fixtures.tensorrt_formats import *; open(sys.argv[1], "w").write(trtexec_profile_text(10, [("IntGELU", 1.0, 0.1, 0.1)]))' "${arg#*=}" ;;
        --exportLayerInfo=*) "$PYTHON" -c 'import sys; from tests.fixtures.tensorrt_formats import *; open(sys.argv[1], "w").write(inspector_text(bert_layer_fixture(4, 32)))' "${arg#*=}" ;;
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
        "TRTEXEC_CUDA_GRAPH": "1", "TRTEXEC_NO_DATA_TRANSFERS": "1", "TRTEXEC_EXTRA": "--avgRuns=5",
    })
    assert result.returncode == 0, result.stderr
    call = (tmp_path / "calls").read_text().split()
    assert f"--loadEngine={directory / 'model.engine'}" in call and "--iterations=10" in call
    assert "--shapes=input_ids:4x32,attention_mask:4x32,token_type_ids:4x32" in call
    assert {"--useCudaGraph", "--noDataTransfers", "--avgRuns=5"} <= set(call)
    summary = json.loads((results / "trtexec-export.json").read_text())
    assert summary["inferences"] == 10 and summary["latency_ms"]["median"] == pytest.approx(1.15)
    assert summary["batch_size"] == 4 and summary["throughput_sequences_per_s"] > 0
    assert summary["profile"]["ibert_plugin_layers"] == 1
    assert summary["layers"]["gemm"]["layers"]["INT8"] == 4
    assert summary["engine"]["plugin_implementation"] == "aot"
    assert shlex.split(" ".join(summary["trtexec_args"]))[0] == f"--loadEngine={directory / 'model.engine'}"


def test_trtexec_bench_refuses_unknown_extra_flags(tmp_path):
    directory = _engine_dir(tmp_path)
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    result = _run("trtexec_bench.sh", str(directory), env={
        "TRTEXEC": str(fake), "FAKE_LOG": str(tmp_path / "calls"), "RESULTS": str(tmp_path / "r"),
        "TRTEXEC_EXTRA": "--fastest",
    })
    assert result.returncode == 1 and "has no option --fastest" in result.stderr
    assert not (tmp_path / "calls").exists()  # trtexec never ran


def test_summarize_refuses_an_output_inside_the_export_or_over_an_input(tmp_path, capsys):
    from trt_runtime.backends.tensorrt.trtexec import main

    directory = write_export_dir(tmp_path / "export", ibert_graph_model())
    times = tmp_path / "times.json"
    times.write_text("[]")
    for out, relation, label in ((directory / "summary.json", "lies inside", "DIRECTORY"), (times, "is", "--times")):
        assert main(["summarize", str(directory), "--times", str(times), "--out", str(out)]) == 2
        given = directory if label == "DIRECTORY" else times
        assert capsys.readouterr().err.startswith(f"error: --out {out} {relation} the input {label} {given}: ")
    assert times.read_text() == "[]" and not (directory / "summary.json").exists()
