"""Writing the export directory: a temporary sibling that replaces the output only once it is complete.

File names and the export.json schema live in `trt_runtime.export_dir`; this module adds what only the
writer needs: which checkpoint files to carry over, and the atomic swap.

Replacing an existing output: the new directory is complete (and validated) in `.NAME.tmp-*` first.
Then the old directory is renamed to `.NAME.old-*`, the new one renamed to NAME, and the old one
deleted. An export that fails or is interrupted before that point leaves the old output untouched
(and removes its temporary directory when it can); between the two renames, a few microseconds, the
old output exists only under its `.old-*` name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.errors import ExportError
from trt_runtime.export_dir import CONFIG_JSON, EXPORT_JSON

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
    """Yield an empty temporary sibling of `out_dir`; on normal exit it replaces `out_dir`, on error it is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary directory
    try:
        yield staging
        _replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(new: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, old / out_dir.name)
    try:
        os.rename(new, out_dir)
    except BaseException:
        os.rename(old / out_dir.name, out_dir)  # put the previous output back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_checkpoint_files(model_dir: Path, directory: Path) -> list[str]:
    """config.json and whatever tokenizer files the checkpoint has; returns the names copied."""
    copied = []
    for name in (CONFIG_JSON, *TOKENIZER_FILES):
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, directory / name)
            copied.append(name)
    return copied
