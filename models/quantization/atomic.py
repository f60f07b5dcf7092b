"""Atomic writes: a temporary sibling is written, then renamed, so readers never see half a file or directory.

Temporary siblings are hidden and name their process: `.NAME.tmp-<pid>-<random>` (and `.NAME.old-<pid>-*`
for a directory being replaced). A writer that is killed cannot remove its own; the next write of the
same NAME removes those whose process no longer runs. (trt_runtime.export_dir has the same scheme for
the runtime side; `models` does not import trt_runtime.)
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _stale(path: Path, kinds: str = "tmp|old") -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(path.name)}\.({kinds})-(\d+)(-[^/]*)?")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    return sorted(
        sibling
        for sibling in siblings
        if (match := pattern.fullmatch(sibling.name)) and not _pid_alive(int(match.group(2)))
    )


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete `.NAME.tmp-<pid>-*` / `.NAME.old-<pid>-*` siblings of `path` left by processes that no longer run.

    A missing `path` with a stale `.NAME.old-*` directory beside it was replaced by a writer killed
    between its two renames: that previous version is put back first.
    """
    path = Path(path)
    if not path.exists():
        previous = [p for p in _stale(path, "old") if p.is_dir()]
        if previous:
            with suppress(OSError):
                os.rename(max(previous, key=lambda p: p.stat().st_mtime), path)
    removed: list[Path] = []
    for sibling in _stale(path):
        try:
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling)
            else:
                sibling.unlink()
        except OSError:
            continue
        removed.append(sibling)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `path` (an existing one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp, old = _sibling(path, "tmp"), _sibling(path, "old")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)  # the old directory stays whole until the new one is in place
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
