"""The wheel and the fresh venvs the packaging tests install it into (one of each per session: pip's
cache makes a reinstall fast, but a venv with torch still takes about a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.fresh_venv import LOCAL_TORCH, build_wheel, make_venv


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def export_python(tmp_path_factory, wheel) -> Path:
    """python of a fresh venv with the wheel installed for exporting (torch first: the local CPU build)."""
    return make_venv(tmp_path_factory.mktemp("export-venv") / "venv", LOCAL_TORCH, f"{wheel}[export]")


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory, wheel) -> Path:
    """python of a fresh venv with only `qbert-deploy[runtime]` (a serving box: no torch, no transformers)."""
    return make_venv(tmp_path_factory.mktemp("runtime-venv") / "venv", f"{wheel}[runtime]")
