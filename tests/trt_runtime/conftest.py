"""Fixtures of the runtime's tests: a private copy of a tiny export, to damage."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.runtime_exports import tiny_export
from trt_runtime.contract.export_dir import CACHE_DIR, EXPORT_JSON


@pytest.fixture
def export_copy(tmp_path: Path) -> Path:
    """A private copy of the tiny BERT text-classification export (without its cache) to damage."""
    target = tmp_path / "export"
    shutil.copytree(tiny_export("bert", "text-classification")[1], target, ignore=shutil.ignore_patterns(CACHE_DIR))
    return target


def edit_export_json(directory: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads((directory / EXPORT_JSON).read_text())
    change(data)
    (directory / EXPORT_JSON).write_text(json.dumps(data))


@pytest.fixture(scope="module")
def clf_dir() -> Path:
    """The tiny BERT text-classification export (shared: do not change it; take `export_copy` for that)."""
    return tiny_export("bert", "text-classification")[1]
