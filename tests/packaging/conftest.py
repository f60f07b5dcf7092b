"""The wheel and the fresh venvs the packaging tests install it into (one of each per session: pip's
cache makes a reinstall fast, but a venv with torch still takes about a minute)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fresh_venv import LOCAL_TORCH, build_wheel, make_venv


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def export_python(tmp_path_factory, wheel) -> Iterator[Path]:
    """python of a fresh venv with the wheel installed for exporting (torch first: the local CPU build)."""
    venv = tmp_path_factory.mktemp("export-venv") / "venv"
    yield make_venv(venv, LOCAL_TORCH, f"{wheel}[export]")
    shutil.rmtree(venv, ignore_errors=True)  # about 2 GB with torch: not kept with pytest's last temp dirs


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory, wheel) -> Iterator[Path]:
    """python of a fresh venv with only `qbert-deploy[runtime]` (a serving box: no torch, no transformers)."""
    venv = tmp_path_factory.mktemp("runtime-venv") / "venv"
    yield make_venv(venv, f"{wheel}[runtime]")
    shutil.rmtree(venv, ignore_errors=True)
