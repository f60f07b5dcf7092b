"""Writing the export directory: a temporary sibling that replaces the output only once it is complete.

File names and the export.json schema live in `trt_runtime.export_dir`; this module adds what only the
writer needs: which checkpoint files to carry over, and the atomic swap.

The new directory is written and validated in a hidden sibling `.NAME.tmp-<pid>-<random>`. Replacing an
existing output is one atomic step on Linux (renameat2 RENAME_EXCHANGE swaps the two directories; the
old one, now under the temporary name, is deleted). Where the filesystem cannot exchange, the old output
is renamed to `.NAME.old-<pid>-<random>`, the new one renamed to NAME, and the old one deleted.

An export that fails (exception, Ctrl-C) removes its temporary directory and leaves the previous output
untouched. An export that is killed (SIGKILL, power loss) cannot clean up after itself: it leaves the
previous output untouched and its hidden `.NAME.tmp-<pid>-*` (or, killed inside the fallback swap,
`.NAME.old-<pid>-*`) behind. The next export to the same NAME removes those of processes that no longer
run, and if NAME itself is missing because the kill fell between the two renames of the fallback swap,
first puts the previous output back from `.NAME.old-*`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporter.errors import ExportError
from trt_runtime.export_dir import (
    CONFIG_JSON,
    EXPORT_JSON,
    remove_stale_temporaries,
    stale_temporaries,
    temporary_sibling,
)

#: Tokenizer files of the Hugging Face formats (fast tokenizer.json; WordPiece vocab.txt; BPE vocab.json +
#: merges.txt; SentencePiece models), copied when the checkpoint has them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def check_output_dir(out_dir: Path, model_dir: Path) -> None:
    """Refuse outputs that would destroy something that is not a previous export."""
    out, src = out_dir.resolve(), model_dir.resolve()
    if out == src or out in src.parents:
        raise ExportError(f"--output {out_dir} would replace the checkpoint {model_dir}; choose another directory")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"--output {out_dir} exists and is not a directory; choose another path")
        if any(out_dir.iterdir()) and not (out_dir / EXPORT_JSON).exists():
            raise ExportError(
                f"--output {out_dir} exists, is not empty and is not an export directory (no {EXPORT_JSON}); "
                "refusing to replace it: choose a new path or remove it yourself"
            )


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out_dir`; on normal exit it replaces `out_dir`, on error it is removed.

    First recovers from an earlier export that was killed (see the module docstring).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out_dir)
    staging = temporary_sibling(out_dir)
    staging.mkdir()  # an ordinary directory (umask applies), hidden by its leading dot
    try:
        yield staging
        _replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recover_interrupted(out_dir: Path) -> list[Path]:
    """Undo what a killed export left next to `out_dir`; returns the stale paths removed.

    A missing `out_dir` with a stale `.NAME.old-*` beside it means the kill fell between the two renames of
    the fallback swap: the old output is put back first. Then every stale `.NAME.tmp-*` / `.NAME.old-*`
    (of a process that no longer runs) is deleted; those of running exports are left alone.
    """
    if not out_dir.exists():
        previous = [p for p in stale_temporaries(out_dir, ("old",)) if (p / EXPORT_JSON).exists()]
        if previous:
            newest = max(previous, key=lambda p: p.stat().st_mtime)
            with contextlib.suppress(OSError):
                os.rename(newest, out_dir)
    return remove_stale_temporaries(out_dir)


def _replace(new: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    if _exchange(new, out_dir):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the previous output
        return
    old = temporary_sibling(out_dir, "old")
    os.rename(out_dir, old)
    try:
        os.rename(new, out_dir)
    except BaseException:
        os.rename(old, out_dir)  # put the previous output back
        raise
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """glibc's renameat2 (2.28+), or None (not Linux, another libc)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this filesystem or kernel cannot exchange: use two renames
    raise OSError(error, os.strerror(error), str(b))


def copy_checkpoint_files(model_dir: Path, directory: Path) -> list[str]:
    """config.json and whatever tokenizer files the checkpoint has; returns the names copied."""
    copied = []
    for name in (CONFIG_JSON, *TOKENIZER_FILES):
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, directory / name)
            copied.append(name)
    return copied
