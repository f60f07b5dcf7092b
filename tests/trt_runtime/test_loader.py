"""`trt_runtime.load` and the runner side of `trt_runtime.pipeline`: the backend table and the CPU preference per
mode, options sorted by backend from the options dataclasses, the fallback of backend="auto" from an engine
that cannot run here, export.json read once per load, and pipelines that take a BaseRunner."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import trt_runtime
from tests.fixtures.runtime_exports import tiny_export
from trt_runtime import loader
from trt_runtime.backends.base import BackendUnavailableError, BaseRunner, RunnerOptions
from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError, write_engine
from trt_runtime.contract.export_dir import CACHE_DIR, QUANTIZATION_MODES, ExportInfo, read_export_info
from trt_runtime.pipelines.text_classification import TextClassificationPipeline
from trt_runtime.tokenization import TextTokenizer


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(tiny_export("bert", "text-classification")[1], target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def test_every_mode_has_a_cpu_preference_that_ends_with_onnx_runtime():
    assert set(loader.CPU_BACKENDS) == set(QUANTIZATION_MODES)
    for mode, row in loader.CPU_BACKENDS.items():
        assert row[-1] == "onnxruntime", f"{mode}: ONNX Runtime, always there, ends the row"
        assert set(row) <= set(loader.BACKENDS)
    for name, backend in loader.BACKENDS.items():  # every entry resolves, without importing its library
        assert set(backend.options_class().names()) == loader.runner_options(name)
    assert loader.backend_names() == ("auto", *loader.BACKENDS)


# --- options -------------------------------------------------------------------------------------------------


def test_auto_ignores_the_options_of_the_backend_not_chosen_and_says_so(export_dir, caplog):
    with caplog.at_level(logging.INFO, logger="trt_runtime.loader"):
        runner = trt_runtime.load(export_dir, device=1, intra_op_num_threads=1)
    chosen = loader.cpu_backends("none")[0]  # the fastest CPU backend installed here (loader.CPU_BACKENDS)
    assert runner.backend == chosen and runner.options.intra_op_num_threads == 1  # both CPU backends take it
    assert f"ignoring option(s) device, which the {chosen} backend does not take" in caplog.text


def test_auto_prefers_the_backend_that_takes_every_option_given(export_dir):
    """graph= is ONNX Runtime's alone: with it, "auto" runs ONNX Runtime even where another CPU backend comes
    first in the table, and says so."""
    runner = trt_runtime.load(export_dir, graph="exported")
    assert runner.backend == "onnxruntime" and runner.choice.graph == "exported"
    assert "it takes the options given (graph)" in runner.choice.reason


def test_an_option_no_backend_takes_is_an_error_even_with_auto(export_dir):
    with pytest.raises(TypeError, match="unknown option.*thread_count: no backend takes them; .*intra_op_num_threads"):
        trt_runtime.load(export_dir, thread_count=2)
    with pytest.raises(TypeError, match="unknown option.*thread_count for pipeline"):
        trt_runtime.pipeline("text-classification", export_dir, thread_count=2)


def test_an_explicit_backend_names_its_own_options(export_dir):
    with pytest.raises(TypeError, match="device for the onnxruntime backend; it takes providers, intra_op_num_threads"):
        trt_runtime.load(export_dir, backend="onnxruntime", device=0)


# --- auto falls back from an engine that cannot run here ----------------------------------------------------


@pytest.fixture
def tensorrt_claimed(monkeypatch):
    """As on a GPU machine where TensorRT imports: the loader's availability check says yes (the runner's own
    checks, run for real below, then find what is wrong with the engine)."""
    monkeypatch.setattr(loader, "tensorrt_status", lambda: (True, "TensorRT 10.13 and a GPU (claimed by the test)"))


def test_auto_falls_back_from_an_engine_with_a_broken_record(export_dir, tensorrt_claimed, caplog):
    (export_dir / "model.engine").write_bytes(b"engine")
    (export_dir / "engine.json").write_text('{"tensorrt_version": "10.13"}')  # incomplete: EngineMismatchError
    with caplog.at_level(logging.WARNING, logger="trt_runtime.loader"):
        runner = trt_runtime.load(export_dir)
    chosen = loader.cpu_backends("none")[0]
    assert runner.backend == chosen
    assert "tensorrt cannot run it here" in runner.choice.reason and "rebuild the engine" in runner.choice.reason
    assert f"trying {chosen}" in caplog.text
    with pytest.raises(EngineMismatchError, match="incomplete or malformed"):
        trt_runtime.load(export_dir, backend="tensorrt")


def test_auto_falls_back_from_an_engine_that_needs_what_is_missing_here(export_dir, tensorrt_claimed):
    """A well-formed engine.json: the runner goes on to need TensorRT itself, and says what is missing."""
    from tests.fixtures.tensorrt_test_models import ENGINE_BYTES, engine_info

    write_engine(export_dir, ENGINE_BYTES, engine_info(onnx_sha256=read_export_info(export_dir).onnx_sha256))
    runner = trt_runtime.load(export_dir)
    # here: TensorRT is not installed; on a GPU machine: the engine was built for another TensorRT and GPU
    chosen = loader.cpu_backends("none")[0]
    assert runner.backend == chosen and "tensorrt cannot run it here" in runner.choice.reason
    assert "TensorRT is not installed" in runner.choice.reason or "rebuild it" in runner.choice.reason
    pipe = trt_runtime.pipeline("text-classification", export_dir)
    assert pipe.runner.backend == chosen


# --- export.json once per load; pipelines take a BaseRunner --------------------------------------------------


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = ExportInfo.from_dict.__func__  # type: ignore[attr-defined]

    def counting(cls, data, where="export.json"):
        reads.append(where)
        return original(cls, data, where)

    monkeypatch.setattr(ExportInfo, "from_dict", classmethod(counting))
    return reads


def test_export_json_is_read_once_per_load_and_per_pipeline(export_dir, monkeypatch):
    reads = _count_reads(monkeypatch)
    runner = trt_runtime.load(export_dir)
    assert len(reads) == 1, reads
    pipe = trt_runtime.pipeline("text-classification", export_dir)
    assert len(reads) == 2, reads
    assert pipe.runner.info.task == runner.info.task == "text-classification"


def test_pipelines_take_a_base_runner_and_name_its_export_dir(export_dir):
    tokenizer = TextTokenizer.from_directory(export_dir)
    runner = trt_runtime.load(export_dir)
    assert isinstance(runner, BaseRunner)
    pipe = TextClassificationPipeline(runner, tokenizer)
    assert pipe.batch_size == 8 and pipe.max_length == 64 and pipe.min_length == 1
    with pytest.raises(TypeError, match="a pipeline runs a trt_runtime runner .*got dict"):
        TextClassificationPipeline({"info": runner.info}, tokenizer)  # type: ignore[arg-type]
    feature_dir = tiny_export("bert", "feature-extraction")[1]
    with pytest.raises(ValueError, match=f"but {feature_dir} is a feature-extraction export"):
        TextClassificationPipeline(trt_runtime.load(feature_dir), tokenizer)


# --- the CPU preference table: a backend listed before ONNX Runtime ------------------------------------------


@dataclass(frozen=True)
class NoOptions(RunnerOptions):
    pass


class UnavailableHereRunner(BaseRunner):
    """A backend that finds, when it opens the export, that it cannot serve it here (as OpenVINO does for an
    op its ONNX frontend lacks)."""

    backend = "unavailable-here"
    options_class = NoOptions

    def __init__(self, export_dir, options=None, *, info=None, reason="", verify_sha256=True, **keywords):
        raise BackendUnavailableError("this backend cannot serve the export here (the test's)")

    def _run(self, feeds):  # pragma: no cover - never constructed
        raise AssertionError


@pytest.mark.parametrize(
    ("requires", "reason"),
    [((), "unavailable-here cannot run it here: this backend cannot serve the export here"),
     (("no_such_package_for_this_test",), "no_such_package_for_this_test is not installed")],
)
def test_auto_tries_the_cpu_backends_of_the_mode_in_order_and_says_why_it_moved_on(
    export_dir, monkeypatch, requires, reason
):
    backends = {
        **loader.BACKENDS,
        "unavailable-here": loader.Backend(
            f"{__name__}:UnavailableHereRunner", f"{__name__}:NoOptions", requires
        ),
    }
    monkeypatch.setattr(loader, "BACKENDS", backends)
    monkeypatch.setattr(loader, "CPU_BACKENDS", {**loader.CPU_BACKENDS, "none": ("unavailable-here", "onnxruntime")})
    runner = trt_runtime.load(export_dir)
    assert runner.backend == "onnxruntime" and reason in runner.choice.reason
    if not requires:
        with pytest.raises(BackendUnavailableError, match="cannot serve the export here"):
            trt_runtime.load(export_dir, backend="unavailable-here")
