"""`python -m trt_runtime triton-repo`: the repository's files, and every config.pbtxt parsed with Triton's
own model-config schema (tritonclient's model_config_pb2) and compared with the export's ONNX signature."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fixtures.runtime_exports import NER_LABELS, tiny_export
from tests.fixtures.triton_helpers import config_signature, environment, onnx_signature, run_client
from trt_runtime.__main__ import main as cli
from trt_runtime.backends.tensorrt.engine_info import EngineInfo, write_engine
from trt_runtime.backends.tensorrt.profiles import ShapeRange
from trt_runtime.contract.export_dir import MODEL_ONNX, ExportDirError, read_export_info
from trt_runtime.contract.files import sha256_file
from trt_runtime.triton.config import to_pbtxt
from trt_runtime.triton.repository import (
    MANIFEST,
    RepositoryError,
    RepositoryOptions,
    parse_export_arg,
    write_repository,
)


def with_engine(export: Path, target: Path, *, max_batch: int = 8, plugins: str | None = None) -> Path:
    """A copy of `export` with a stand-in model.engine and its engine.json (profile batch 1..max_batch)."""
    shutil.copytree(export, target)
    info = read_export_info(target)
    profile = {spec.name: ShapeRange((1, 1), (4, 64), (max_batch, 128)) for spec in info.inputs}
    engine = EngineInfo(
        tensorrt_version="10.13.0",
        gpu_name="NVIDIA H100",
        compute_capability="9.0",
        onnx_sha256=sha256_file(target / MODEL_ONNX),
        engine_sha256="0" * 64,
        profiles=[profile],
        plugins=["ibert::IntGELU"] if plugins else [],
        plugin_implementation=plugins,
        input_names=info.input_names,
        output_names=info.output_names,
    )
    write_engine(target, b"stand-in engine bytes", engine)
    return target


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-exports")
    classification = tiny_export("bert", "text-classification", sharpen=20.0)[1]
    return {
        "sst2": with_engine(classification, root / "sst2"),
        "jit": with_engine(classification, root / "jit", plugins="jit"),
        "ner": tiny_export("bert", "token-classification", sharpen=4.0, id2label=NER_LABELS)[1],
        "swag": tiny_export("bert", "multiple-choice", sharpen=8.0)[1],
    }


@pytest.fixture(scope="module")
def repo(exports, tmp_path_factory):
    output = tmp_path_factory.mktemp("triton-repo") / "repo"
    options = RepositoryOptions(
        max_batch_size=16,
        max_queue_delay_us=3000,
        cpu_instances=2,
        gpus=(0, 1),
        pipeline_options={"top_k": None},
        runner_options={"intra_op_num_threads": 1},
    )
    report = write_repository(
        [exports["sst2"], ("jit", exports["jit"]), f"ner={exports['ner']}", ("swag", exports["swag"])],
        output,
        options,
    )
    return output, report


def parsed_configs(repo_dir: Path) -> dict[str, dict]:
    paths = sorted(repo_dir.glob("*/config.pbtxt"))
    configs = run_client(environment(), "parse-config", *map(str, paths))
    return {path.parent.name: config for path, config in zip(paths, configs)}


def test_models_made_and_skipped(repo):
    repo_dir, report = repo
    made = {model.name: model.served_by for model in report.models}
    assert made == {
        "sst2": "python",
        "sst2-onnx": "onnxruntime_onnx",
        "sst2-trt": "tensorrt_plan",
        "jit": "python",
        "jit-onnx": "onnxruntime_onnx",
        "ner": "python",
        "ner-onnx": "onnxruntime_onnx",
        "swag": "python",
        "swag-onnx": "onnxruntime_onnx",
    }
    skipped = dict(report.skipped)
    assert set(skipped) == {"jit-trt", "ner-trt", "swag-trt"}
    assert "JIT Python plugins" in skipped["jit-trt"] and "--no-plugins" in skipped["jit-trt"]
    assert "no TensorRT engine" in skipped["ner-trt"] and "python -m trt_runtime build" in skipped["ner-trt"]
    assert sorted(p.name for p in repo_dir.iterdir()) == sorted([*made, MANIFEST])
    manifest = json.loads((repo_dir / MANIFEST).read_text())
    assert {m["name"] for m in manifest["models"]} == set(made)
    assert {s["name"] for s in manifest["skipped"]} == set(skipped)
    assert not list(repo_dir.parent.glob(".repo.*")), "temporary siblings left behind"


def test_configs_parse_with_tritons_schema_and_match_the_onnx_signature(repo, exports):
    repo_dir, _ = repo
    configs = parsed_configs(repo_dir)
    sources = {"sst2": exports["sst2"], "jit": exports["jit"], "ner": exports["ner"], "swag": exports["swag"]}
    for name, export in sources.items():
        signature = onnx_signature(export / MODEL_ONNX)
        for model in (f"{name}-onnx", f"{name}-trt"):
            if model not in configs:
                continue
            config = configs[model]
            assert config["name"] == model
            assert config_signature(config) == signature, model
            assert config["max_batch_size"] == (8 if model.endswith("-trt") else 16)  # the engine caps it
        text = configs[name]
        assert text["backend"] == "python" and text["max_batch_size"] == 16
        assert config_signature(text) == {
            "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}],
            "output": [{"name": "ANSWER", "data_type": "TYPE_STRING", "dims": [1]}],
        }
        parameters = {k: v["string_value"] for k, v in text["parameters"].items()}
        assert parameters["mode"] == "pipeline" and parameters["task"] == read_export_info(export).task
        assert json.loads(parameters["pipeline_options"]) == {"top_k": None}
        assert json.loads(parameters["runner_options"]) == {"intra_op_num_threads": 1}
    # the multiple-choice inputs keep both dynamic axes after the batch: [num_choices, sequence_length]
    assert {t["name"]: t["dims"] for t in configs["swag-onnx"]["input"]}["input_ids"] == ["-1", "-1"]


def test_batching_and_instance_groups(repo):
    configs = parsed_configs(repo[0])
    onnx, plan, text = configs["sst2-onnx"], configs["sst2-trt"], configs["sst2"]
    assert onnx["platform"] == "onnxruntime_onnx" and plan["platform"] == "tensorrt_plan"
    for config in (onnx, text):
        assert config["dynamic_batching"] == {
            "preferred_batch_size": [8, 16],
            "max_queue_delay_microseconds": "3000",
        }
        assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    # the plan: the engine profile's opt batch (4) and max (8)
    assert plan["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert plan["instance_group"] == [{"kind": "KIND_GPU", "count": 1, "gpus": [0, 1]}]


def test_files(repo, exports):
    repo_dir, _ = repo
    assert (repo_dir / "sst2-trt/1/model.plan").read_bytes() == b"stand-in engine bytes"
    export_sha = sha256_file(exports["sst2"] / MODEL_ONNX)
    assert sha256_file(repo_dir / "sst2-onnx/1/model.onnx") == export_sha
    for model in ("sst2", "ner", "swag"):
        version = repo_dir / model / "1"
        assert (version / "model.py").read_text() == Path("trt_runtime/triton/python_model.py").read_text()
        info = read_export_info(version / "export")  # checks model.onnx against export.json's sha256
        assert (version / "export/tokenizer.json").exists() and info.task
        assert (version / "trt_runtime/__init__.py").exists() and (
            version / "trt_runtime/pipelines/base.py"
        ).exists()
        assert not list(version.rglob("__pycache__")) and not list(version.rglob(".cache"))


def test_pbtxt_strings_survive_tritons_parser(tmp_path):
    tricky = {"text": 'say "hi"\\ then\nleave\t—  naïve 東京', "control": "\x01"}
    config = {
        "name": "m",
        "backend": "python",
        "max_batch_size": 0,
        "parameters": {"options": json.dumps(tricky)},
    }
    path = tmp_path / "config.pbtxt"
    path.write_text(to_pbtxt(config, header="a comment\nover two lines"), encoding="utf-8")
    (parsed,) = run_client(environment(), "parse-config", str(path))
    assert json.loads(parsed["parameters"]["options"]["string_value"]) == tricky


def test_refuses_to_overwrite_without_force(repo, exports):
    repo_dir, _ = repo
    with pytest.raises(RepositoryError, match="--force"):
        write_repository([exports["ner"]], repo_dir)
    with pytest.raises(RepositoryError, match="NAME=DIR"):
        write_repository([exports["sst2"], f"sst2={exports['ner']}"], repo_dir.parent / "other")


def test_replace_with_force(exports, tmp_path):
    output = tmp_path / "repo"
    write_repository([exports["ner"]], output, RepositoryOptions(kinds=("text",)))
    write_repository([("swag", exports["swag"])], output, RepositoryOptions(kinds=("onnx",)), overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST, "swag-onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_names():
    assert parse_export_arg("exports/minilm-qdq") == ("minilm-qdq", Path("exports/minilm-qdq"))
    assert parse_export_arg("sst 2=exports/x") == ("sst_2", Path("exports/x"))
    assert parse_export_arg(("clf", "exports/x")) == ("clf", Path("exports/x"))


def test_command_line(exports, tmp_path, capsys):
    output = tmp_path / "repo"
    code = cli(
        [
            "triton-repo",
            str(exports["sst2"]),
            "--output",
            str(output),
            "--kinds",
            "text,onnx",
            "--onnx-backend",
            "python",
            "--max-batch-size",
            "4",
            "--pipeline-option",
            "top_k=2",
            "--runner-option",
            "intra_op_num_threads=1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "sst2-onnx" in out and "python" in out
    onnx_config = (output / "sst2-onnx/config.pbtxt").read_text()
    assert 'backend: "python"' in onnx_config and 'string_value: "runner"' in onnx_config
    assert (output / "sst2-onnx/1/export/model.onnx").exists()
    text_config = (output / "sst2/config.pbtxt").read_text()
    assert '{\\"top_k\\": 2}' in text_config and "max_batch_size: 4" in text_config
    assert cli(["triton-repo", str(exports["sst2"]), "--output", str(output)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli(["triton-repo", str(tmp_path / "nothing"), "--output", str(tmp_path / "r2")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert (
        cli(["triton-repo", str(exports["sst2"]), "--output", str(tmp_path / "r3"), "--kinds", "text,gpu"])
        == 2
    )
    assert "choose from text, onnx, plan" in capsys.readouterr().err


def test_the_local_server_refuses_models_it_has_no_backend_for(repo):
    from trt_runtime.triton.server import TritonServer, TritonServerError

    with pytest.raises(TritonServerError, match=r"sst2-onnx \(onnxruntime\).*--onnx-backend python"):
        TritonServer(repo[0], environment()).check_repository()


# --- what is copied, and what --force replaces ------------------------------------------------------------


def _linked_export(source: Path, target: Path) -> Path:
    """A copy of `source` whose model.onnx is a relative symbolic link to a file inside the export."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".cache"))
    (target / "graphs").mkdir()
    (target / MODEL_ONNX).rename(target / "graphs" / "real.onnx")
    (target / MODEL_ONNX).symlink_to(Path("graphs") / "real.onnx")
    return target


def test_a_link_inside_the_export_is_copied_as_its_targets_content(exports, tmp_path):
    """A relative symlinked model.onnx used to give a repository of dangling links, exit 0."""
    export = _linked_export(exports["ner"], tmp_path / "linked")
    write_repository([("ner", export)], tmp_path / "repo", RepositoryOptions(kinds=("text", "onnx")))
    expected = (export / "graphs" / "real.onnx").read_bytes()
    for copied in (tmp_path / "repo/ner-onnx/1/model.onnx", tmp_path / "repo/ner/1/export/model.onnx"):
        assert not copied.is_symlink() and copied.is_file() and copied.read_bytes() == expected, copied
    shutil.rmtree(export)  # the repository stands on its own
    assert (tmp_path / "repo/ner-onnx/1/model.onnx").read_bytes() == expected


def test_a_link_out_of_the_export_is_refused_naming_link_and_target(exports, tmp_path):
    secret = tmp_path / "credentials.txt"
    secret.write_text("password")
    export = tmp_path / "planted"
    shutil.copytree(exports["ner"], export, ignore=shutil.ignore_patterns(".cache"))
    (export / "config.json").unlink()
    (export / "config.json").symlink_to(secret)
    with pytest.raises(ExportDirError) as raised:
        write_repository([("ner", export)], tmp_path / "repo", RepositoryOptions(kinds=("text",)))
    assert str(raised.value).startswith(f"{export / 'config.json'} is a symbolic link to {secret}, outside the export")
    assert not (tmp_path / "repo").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["credentials.txt", "planted"]


def test_a_dangling_link_inside_the_export_is_refused(exports, tmp_path):
    export = tmp_path / "dangling"
    shutil.copytree(exports["ner"], export, ignore=shutil.ignore_patterns(".cache"))
    (export / "notes.txt").symlink_to("missing.txt")
    with pytest.raises(RepositoryError) as raised:
        write_repository([("ner", export)], tmp_path / "repo", RepositoryOptions(kinds=("text",)))
    assert str(raised.value) == (
        f"{export / 'notes.txt'} is a symbolic link to {export / 'missing.txt'}, which is nothing (a dangling "
        f"link); triton-repo copies regular files only: replace the link with the file it should be, or "
        f"re-export the model"
    )
    assert not (tmp_path / "repo").exists()


def test_force_never_replaces_an_export_or_a_project_directory(exports, tmp_path):
    export = tmp_path / "ner"
    shutil.copytree(exports["ner"], export, ignore=shutil.ignore_patterns(".cache"))
    before = sorted(p.name for p in export.iterdir())
    with pytest.raises(OSError) as raised:  # OutputOverlapError
        write_repository([("ner", export)], export, overwrite=True)
    assert str(raised.value).startswith(f"--output {export} is the input export ner {export}: writing it would destroy")
    with pytest.raises(OSError, match=f"^--output {tmp_path} contains the input export ner {export}"):
        write_repository([("ner", export)], tmp_path, overwrite=True)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text("keep me")
    with pytest.raises(RepositoryError) as refused:
        write_repository([("ner", export)], project, overwrite=True)
    assert str(refused.value) == (
        f"--force replaces only a model repository made by triton-repo (a directory with its own {MANIFEST}); "
        f"{project} is not one: choose a new --output, or remove it yourself"
    )
    assert (project / "README.md").read_text() == "keep me" and (project / "src").is_dir()
    assert sorted(p.name for p in export.iterdir()) == before


def test_two_exports_whose_model_names_clash_are_refused_before_writing(exports, tmp_path):
    """`a-onnx` (a text model) next to `a`'s ONNX model was `[Errno 17] File exists` on a temporary path."""
    with pytest.raises(RepositoryError) as raised:
        write_repository([("ner", exports["ner"]), ("ner-onnx", exports["swag"])], tmp_path / "repo")
    assert str(raised.value) == (
        "the text model of export 'ner-onnx' and a model of export 'ner' would both be named 'ner-onnx'; name the "
        "exports apart: NAME=DIR"
    )
    assert list(tmp_path.iterdir()) == []


def test_force_killed_mid_swap_leaves_the_previous_repository_recoverable(exports, tmp_path):
    """A real SIGKILL of a `triton-repo --force` while it writes: the previous repository is intact, and the
    next run removes what the killed one left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.fixtures import ROOT
    from trt_runtime.contract.files import STALE_AGE_SECONDS

    output = tmp_path / "repo"
    write_repository([("ner", exports["ner"])], output, RepositoryOptions(kinds=("onnx",)))
    before = json.loads((output / MANIFEST).read_text())
    command = [sys.executable, "-m", "trt_runtime", "triton-repo", f"ner={exports['ner']}", f"swag={exports['swag']}",
               "--output", str(output), "--force"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".repo.tmp-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = json.loads((output / MANIFEST).read_text())  # the previous or the complete new one, never none
    models = sorted(model["name"] for model in after["models"])
    assert after == before or models == ["ner", "ner-onnx", "swag", "swag-onnx"]  # no engines: no -trt models
    assert sorted(p.name for p in output.iterdir() if p.name != MANIFEST) == models
    time.sleep(STALE_AGE_SECONDS)  # an unlocked staging directory younger than this may be a writer's first instant
    write_repository([("swag", exports["swag"])], output, RepositoryOptions(kinds=("onnx",)), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST, "swag-onnx"]
