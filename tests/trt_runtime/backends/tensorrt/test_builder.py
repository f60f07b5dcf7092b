"""The builder's decisions and the TensorRT code paths on a machine without TensorRT.

What needs TensorRT itself (parsing, building, running) is in the `tensorrt`-marked tests; here: the
precision rules, the progress bars, the `build` command's options, that nothing imports TensorRT,
CUDA, Triton or torch at module load, and that every entry point fails with a message that says
what to install, after the checks that need no GPU.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import threading

import pytest

from tests.fixtures import ROOT as REPO
from tests.fixtures.tensorrt_test_models import export_info, ibert_graph_model, write_export_dir
from trt_runtime.__main__ import build_parser
from trt_runtime.backends.tensorrt.builder import (
    BuildError,
    BuildOptions,
    PhaseBars,
    Precision,
    PrecisionError,
    build_engine,
    observed_implementation,
    parser_input,
    plugin_implementation,
    resolve_precision,
)
from trt_runtime.backends.tensorrt.engine_info import EngineMismatchError
from trt_runtime.backends.tensorrt.libs import TensorRTUnavailable, require_tensorrt, tensorrt_available
from trt_runtime.backends.tensorrt.onnx_prep import OnnxForTensorRTError
from trt_runtime.backends.tensorrt.plugins import PLUGINS
from trt_runtime.backends.tensorrt.profiles import ProfileError


def _tensorrt_installed() -> bool:
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


needs_no_tensorrt = pytest.mark.skipif(_tensorrt_installed(), reason="checks the messages shown without TensorRT")


# --------------------------------------------------------------------------------------------------
# precision


@pytest.mark.parametrize(
    ("fp16", "strongly_typed", "has_qdq", "expected"),
    [
        # default: strongly typed, the types are the ONNX's; --fp16 makes the graph's float parts FP16
        (False, None, True, Precision(strongly_typed=True, float16=False, fp16_flag=False, int8_flag=False)),
        (True, None, True, Precision(True, True, False, False)),
        (True, True, False, Precision(True, True, False, False)),
        # weakly typed: the deprecated builder flags, INT8 where there are Q/DQ nodes
        (False, False, True, Precision(False, False, False, True)),
        (False, False, False, Precision(False, False, False, False)),
        (True, False, True, Precision(False, True, True, True)),
        (True, False, False, Precision(False, True, True, False)),
    ],
)
def test_precision_rules(fp16, strongly_typed, has_qdq, expected):
    precision = resolve_precision(fp16, strongly_typed, has_qdq)
    assert precision == expected
    assert precision.float16_graph == (fp16 and precision.strongly_typed)


def test_precision_descriptions():
    assert resolve_precision(True, None, True).describe() == "strongly typed, FP16 outside the INT8 (Q/DQ) parts"
    assert "deprecated since TensorRT 10.12" in resolve_precision(True, False, True).describe()


def test_old_tensorrt_without_strong_typing():
    assert resolve_precision(False, None, True, supports_strongly_typed=False) == Precision(False, False, False, True)
    with pytest.raises(PrecisionError, match="cannot build strongly-typed networks"):
        resolve_precision(False, True, True, supports_strongly_typed=False)


# --------------------------------------------------------------------------------------------------
# progress


def test_phase_bars_nest_and_close():
    out = io.StringIO()
    bars = PhaseBars(stream=out)
    bars.start("Building engine", None, 3)
    bars.start("Tactic selection", "Building engine", 10)
    assert bars.depth == {"Building engine": 0, "Tactic selection": 1}
    for step in range(10):
        assert bars.step("Tactic selection", step) is True
    assert bars.bars["Tactic selection"].n == 10
    bars.finish("Tactic selection")
    bars.step("Building engine", 0)
    bars.step("Building engine", 2)  # TensorRT may skip steps: the bar jumps to step + 1
    assert bars.bars["Building engine"].n == 3
    bars.finish("Building engine")
    assert bars.finished == ["Tactic selection", "Building engine"] and bars.bars == {}
    text = out.getvalue()
    assert "Building engine" in text and "Tactic selection" in text and "3/3" in text


def test_phase_bars_are_thread_safe():
    bars = PhaseBars(stream=io.StringIO())
    bars.start("phase", None, 4000)

    def work(offset: int) -> None:
        for step in range(offset, 4000, 4):
            bars.step("phase", step)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bars.bars["phase"].n == 4000
    bars.close()


# --------------------------------------------------------------------------------------------------
# the build command


def _parse(*argv: str):
    parser, commands = build_parser()
    return parser.parse_args(["build", *argv]), commands


def test_build_command_options():
    args, _ = _parse("out", "--fp16", "--opt", "input_ids:4x64", "--max", "input_ids:8x128", "--no-plugins",
                     "--workspace", "2048", "--timing-cache", "cache.bin", "--no-strongly-typed", "--optimization-level", "5",
                     "--sequence-buckets", "64,128", "--plugin-implementation", "jit", "--check")
    assert (args.directory, args.fp16, args.opt_shapes, args.max_shapes, args.min_shapes) == (
        "out", True, "input_ids:4x64", "input_ids:8x128", None
    )
    assert (args.use_plugins, args.workspace_mb, args.timing_cache, args.strongly_typed) == (False, 2048, "cache.bin", False)
    assert (args.builder_optimization_level, args.sequence_buckets, args.plugin_implementation, args.check) == (
        5, "64,128", "jit", True
    )
    defaults, _ = _parse("out")
    assert defaults.use_plugins is True and defaults.strongly_typed is None and defaults.fp16 is False
    assert defaults.plugin_implementation == "auto" and defaults.check is False and defaults.sequence_buckets is None


def test_build_command_reports_errors_and_fails(tmp_path, capsys):
    args, commands = _parse(str(tmp_path / "missing"))
    assert commands["build"].main(args) == 2  # a bad argument (docs/errors.md: 1 is "validation failed")
    assert "is not a directory" in capsys.readouterr().err


def test_build_checks_profile_and_onnx_before_needing_tensorrt(tmp_path):
    directory = write_export_dir(tmp_path / "export", ibert_graph_model(), export_info(max_len=64))
    with pytest.raises(ProfileError, match="over the export's max_sequence_length 64"):
        build_engine(directory, BuildOptions(max_shapes="input_ids:32x128"))
    with pytest.raises(OnnxForTensorRTError, match="--no-plugins needs the ONNX function bodies"):
        build_engine(
            write_export_dir(tmp_path / "bare", ibert_graph_model(with_functions=False)), BuildOptions(use_plugins=False)
        )


def test_the_graph_handed_to_the_parser(tmp_path):
    directory = write_export_dir(tmp_path / "export", ibert_graph_model(), export_info(max_len=64))
    inputs = parser_input(directory, BuildOptions(sequence_buckets="16,32"))
    assert inputs.form == "plugins, FP32" and inputs.precision.strongly_typed
    assert [p["input_ids"].max for p in inputs.profiles] == [(32, 16), (32, 32), (32, 64)]
    aot = [a.i for n in inputs.prepared.model.graph.node if n.domain == "ibert" for a in n.attribute if a.name == "aot"]
    assert aot == [1, 1, 1]  # the strict AOT request, what --check sees too
    assert parser_input(directory, BuildOptions(use_plugins=False)).form == "no-plugins, FP32"
    untagged = parser_input(directory, BuildOptions(), aot=None).prepared
    assert not any(a.name == "aot" for n in untagged.model.graph.node for a in n.attribute)
    untagged.set_plugin_implementation(False)
    assert [a.i for n in untagged.model.graph.node for a in n.attribute if a.name == "aot"] == [0, 0, 0]


def test_plugin_implementation_choice():
    assert plugin_implementation("auto", tensorrt_has_aot=True) == "aot"
    assert plugin_implementation("auto", tensorrt_has_aot=False) == "jit"  # TensorRT 10.6-10.8
    assert plugin_implementation("jit", tensorrt_has_aot=True) == "jit"
    with pytest.raises(BuildError, match="no AOT Python plugins .* 10.9"):
        plugin_implementation("aot", tensorrt_has_aot=False)
    with pytest.raises(BuildError, match="plugin implementation 'fast'"):
        plugin_implementation("fast", tensorrt_has_aot=True)


def test_the_recorded_implementation_is_the_one_tensorrt_used():
    plugins = ["ibert::IntGELU", "ibert::IntSoftmax"]
    built_aot = {("ibert::IntGELU", "aot"): 2, ("ibert::IntSoftmax", "aot"): 1}
    assert observed_implementation(built_aot, plugins, "aot") == "aot"
    with pytest.raises(BuildError, match="did not call their AOT implementation for ibert::IntSoftmax"):
        observed_implementation({("ibert::IntGELU", "aot"): 1}, plugins, "aot")
    assert observed_implementation({("ibert::IntGELU", "jit"): 5}, plugins, "jit") == "jit"
    assert observed_implementation({}, plugins, "jit") == "jit"  # a build may never run a JIT plugin
    with pytest.raises(BuildError, match="asked for JIT plugins .* compiled AOT kernels"):
        observed_implementation(built_aot, plugins, "jit")


@needs_no_tensorrt
def test_build_without_tensorrt_says_what_to_install(tmp_path, capsys):
    directory = write_export_dir(tmp_path / "export", ibert_graph_model())
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed.*install tensorrt>=10.*backend='onnxruntime'"):
        build_engine(directory)
    args, commands = _parse(str(directory))
    assert commands["build"].main(args) == 2  # this machine cannot: exit 2, as for every error but a failed build
    assert "error: TensorRT is not installed" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# runner and availability without TensorRT


@needs_no_tensorrt
def test_tensorrt_available_says_why_not():
    ok, reason = tensorrt_available()
    assert ok is False
    assert "TensorRT is not installed" in reason and "backend='onnxruntime'" in reason


def test_runner_without_engine_says_build(tmp_path):
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    directory = write_export_dir(tmp_path / "export", ibert_graph_model())
    with pytest.raises(EngineMismatchError, match=f"model.engine not found; build it: python -m trt_runtime build {directory}"):
        TensorRTRunner(directory)


@needs_no_tensorrt
def test_runner_without_tensorrt_says_what_to_install(tmp_path):
    from tests.fixtures.tensorrt_test_models import ENGINE_BYTES, engine_info
    from trt_runtime.backends.tensorrt.engine_info import write_engine
    from trt_runtime.backends.tensorrt.runner import TensorRTRunner

    directory = write_export_dir(tmp_path / "export", ibert_graph_model())
    write_engine(directory, ENGINE_BYTES, engine_info())
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        TensorRTRunner(directory)


def test_modules_load_without_tensorrt_cuda_triton_or_torch():
    code = (
        "import sys, trt_runtime, trt_runtime.backends.tensorrt.builder, trt_runtime.backends.tensorrt.runner, trt_runtime.commands.build, "
        "trt_runtime.backends.tensorrt.plugins, trt_runtime.contract.ibert, trt_runtime.backends.tensorrt.onnx_prep, trt_runtime.backends.tensorrt.trtexec\n"
        "import trt_runtime.__main__ as m; m.build_parser()\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('tensorrt', 'cuda', 'triton', 'torch', 'pycuda'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# the plugin registrations follow the spec (checked on the source: importing it needs TensorRT)


def _decorated_functions() -> dict[tuple[str, str], list[str]]:
    tree = ast.parse((REPO / "trt_runtime/backends/tensorrt/plugins/registration.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute):
                    plugin_id = decorator.args[0].value  # type: ignore[attr-defined]
                    found[(decorator.func.attr, plugin_id)] = [a.arg for a in node.args.args]
    return found


@pytest.mark.parametrize("op", sorted(PLUGINS))
def test_registration_signatures_match_the_spec(op):
    """tensorrt.plugin's rules: register(inputs, attributes); impl(inputs, some attributes in order, outputs,
    stream); aot_impl(inputs, every attribute, outputs, tactic) -- TensorRT passes all fields to aot_impl."""
    spec = PLUGINS[op]
    functions = _decorated_functions()
    tensors = [name.lower() for name in spec.inputs] + (["int_constants", "float_constants"] if spec.has_tables else [])
    attributes = [name for name, _ in spec.attributes]
    assert functions[("register", spec.plugin_id)] == tensors + attributes
    impl = functions[("impl", spec.plugin_id)]
    assert impl[: len(tensors)] == tensors and impl[-2:] == ["outputs", "stream"]
    used = impl[len(tensors) : -2]
    assert used == [name for name in attributes if name in used]
    assert functions[("aot_impl", spec.plugin_id)] == tensors + attributes + ["outputs", "tactic"]


# --------------------------------------------------------------------------------------------------
# the timing cache (review D5), with a stand-in for the IBuilderConfig / ITimingCache calls the builder makes
# (tensorrt-stubs 10.13: create_timing_cache(bytes), set_timing_cache(cache, ignore_mismatch) -> bool,
# get_timing_cache() -> ITimingCache | None, ITimingCache.combine(other, ignore_mismatch) -> bool, serialize())


class _Cache:
    def __init__(self, data: bytes) -> None:
        self.entries = set(filter(None, data.decode().split(";")))

    def combine(self, other: _Cache, ignore_mismatch: bool) -> bool:
        if any(e.startswith("other-gpu") for e in other.entries):
            return False
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return ";".join(sorted(self.entries)).encode()


class _Config:
    def __init__(self) -> None:
        self.attached: _Cache | None = None

    def create_timing_cache(self, data: bytes) -> _Cache:
        return _Cache(data)

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
        if any(e.startswith("other-gpu") for e in cache.entries):
            return False  # what TensorRT answers for a cache of another device
        self.attached = cache
        return True

    def get_timing_cache(self) -> _Cache | None:
        return self.attached


def test_a_timing_cache_of_another_gpu_is_replaced_by_an_empty_one(tmp_path, capsys):
    from trt_runtime.backends.tensorrt.builder import attach_timing_cache

    path = tmp_path / "timing.cache"
    path.write_bytes(b"other-gpu:conv")
    config = _Config()
    attach_timing_cache(config, path)
    assert config.attached is not None and config.attached.entries == set()
    assert "made for another GPU or TensorRT version; starting an empty one" in capsys.readouterr().err
    path.write_bytes(b"a;b")
    attach_timing_cache(config, path)
    assert config.attached.entries == {"a", "b"}


def test_saving_merges_under_a_lock_and_survives_no_cache(tmp_path, capsys):
    from trt_runtime.backends.tensorrt.builder import save_timing_cache
    from trt_runtime.contract.files import exclusive_lock

    path = tmp_path / "timing.cache"
    config = _Config()
    save_timing_cache(config, path)  # no cache attached (get_timing_cache() is None): warn, touch nothing
    assert "returned no timing cache" in capsys.readouterr().err and not path.exists()

    config.attached = _Cache(b"mine")
    path.write_bytes(b"theirs")
    lock = tmp_path / "timing.cache.lock"
    with exclusive_lock(lock):  # another build holds the lock: this one waits for it
        saver = threading.Thread(target=save_timing_cache, args=(config, path))
        saver.start()
        saver.join(0.3)
        assert saver.is_alive() and path.read_bytes() == b"theirs"
        path.write_bytes(b"theirs;newer")  # the other build's write, made while it held the lock
    saver.join(10)
    assert not saver.is_alive()
    assert path.read_bytes() == b"mine;newer;theirs"  # merged with what was on disk after the wait


def test_a_timing_cache_that_is_a_file_of_the_export_is_refused(tmp_path, capsys):
    directory = write_export_dir(tmp_path / "export", ibert_graph_model())
    before = (directory / "model.onnx").read_bytes()
    args, commands = _parse(str(directory))
    args.timing_cache = str(directory / "model.onnx")
    assert commands["build"].main(args) == 2
    assert capsys.readouterr().err == (
        f"error: --timing-cache {directory / 'model.onnx'} is the input model.onnx {directory / 'model.onnx'}: "
        f"writing it would destroy what it is made from; choose another --timing-cache\n"
    )
    assert (directory / "model.onnx").read_bytes() == before
