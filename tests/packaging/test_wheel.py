"""`pip install qbert-deploy` (a real, non-editable install of the wheel into a fresh venv), used from another
directory: the shipped calibration corpus is package data, found the same way as in the checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ROOT
from tests.fixtures.fresh_venv import run
from tests.fixtures.runtime_exports import save_checkpoint

pytestmark = pytest.mark.slow  # a fresh venv with torch: about a minute

WHERE_IS_THE_CORPUS = (
    "import importlib.resources, json, models.data as d; "
    "print(json.dumps([str(d.CALIBRATION_DATA_DIR), str(importlib.resources.files('calibration_data')), "
    "len(d.load_texts())]))"
)


def test_checkout_finds_the_corpus_through_importlib_resources():
    from models import data

    assert data.CALIBRATION_DATA_DIR == ROOT / "calibration_data"
    assert data.CALIBRATION_FILE.read_text(encoding="utf-8") == (ROOT / "calibration_data/calibration.txt").read_text(encoding="utf-8")


def test_installed_wheel_ships_the_corpus_and_finds_it_in_site_packages(export_python, tmp_path):
    result = run([str(export_python), "-c", WHERE_IS_THE_CORPUS], cwd=tmp_path)
    found, resource_root, count = json.loads(result.stdout)
    site_packages = Path(run([str(export_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).stdout.strip())
    assert Path(found) == Path(resource_root) == site_packages / "calibration_data"
    shipped = [line for line in (ROOT / "calibration_data/calibration.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert count == len(shipped)
    for name in ("LICENSE", "README.md", "vader/tweets.tsv", "vader/movie_reviews.tsv"):
        assert (site_packages / "calibration_data" / name).read_bytes() == (ROOT / "calibration_data" / name).read_bytes()
    assert run([str(export_python), "-m", "pip", "check"], cwd=tmp_path).returncode == 0


def test_qdq_export_from_another_directory_calibrates_on_the_shipped_corpus(export_python, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    save_checkpoint(checkpoint, "bert", "text-classification")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([str(export_python), "-m", "exporter", "--model", str(checkpoint), "--task", "text-classification",
         "--quantization", "qdq", "--num-calibration-samples", "64", "--output", str(tmp_path / "export")], cwd=elsewhere)
    info = json.loads((tmp_path / "export" / "export.json").read_text(encoding="utf-8"))
    calibration = info["calibration"]
    assert calibration["data"] == "calibration_data/calibration.txt (shipped)"
    assert calibration["num_samples"] == 64
    assert list(elsewhere.iterdir()) == []  # nothing written where the command ran


@pytest.mark.parametrize(
    ("command", "module"),
    [("qbert-export", "exporter"), ("qbert-runtime", "trt_runtime"), ("qbert-calibrate", "models.quantization.calibrate")],
)
def test_console_scripts_are_the_module_commands(export_python, tmp_path, command, module):
    script = str(export_python.parent / command)
    helped = run([script, "--help"], cwd=tmp_path)
    assert helped.stdout == run([str(export_python), "-m", module, "--help"], cwd=tmp_path).stdout
    assert helped.stdout.startswith("usage: ")
    wrong = run([script, "--no-such-flag"], cwd=tmp_path, check=False)
    assert wrong.returncode == 2 and ": error: " in wrong.stderr and "Traceback" not in wrong.stderr


def test_console_script_exit_codes(export_python, tmp_path):
    missing = tmp_path / "missing"
    ran = run([str(export_python.parent / "qbert-runtime"), "run", str(missing), "a text"], cwd=tmp_path, check=False)
    assert ran.returncode == 2 and ran.stderr.startswith("error: ") and str(missing) in ran.stderr
    exported = run([str(export_python.parent / "qbert-export"), "--model", str(missing), "--output", str(tmp_path / "out")], cwd=tmp_path, check=False)
    assert exported.returncode == 2 and "error: " in exported.stderr and not (tmp_path / "out").exists()
