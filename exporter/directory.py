"""Writing the export directory: a temporary sibling that replaces the output only once it is complete.

File names and the export.json schema live in `trt_runtime.contract.export_dir`; this module adds what only the
writer needs: which checkpoint files to carry over, and the atomic swap.

The new directory is written and validated in a hidden, locked sibling `.NAME.tmp-<random>` and swapped in
whole by `trt_runtime.contract.files.atomic_directory` (renameat2 RENAME_EXCHANGE where the filesystem has
it, two renames otherwise). An export that fails (exception, Ctrl-C) removes its staging directory and
leaves the previous output untouched. One that is killed leaves its staging directory behind, unlocked:
the next export to the same NAME removes it, and if NAME itself is missing because the kill fell between
the two renames of the fallback swap, first puts the previous export back from `.NAME.old-*`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from exporter.errors import ExportError
from trt_runtime.contract.export_dir import CONFIG_JSON, EXPORT_JSON, ExportDirError, read_export_info
from trt_runtime.contract.files import (
    OutputOverlapError,
    atomic_directory,
    check_output_outside_inputs,
    check_replaceable_directory,
)
from trt_runtime.contract.files import recover_interrupted as files_recover_interrupted

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


def check_output_dir(out_dir: Path, model_dir: Path, calibration_data: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, outputs that would destroy something that is not a previous export: an input
    (the checkpoint, the calibration data: the output is, contains or lies inside one), a mount point (which
    the swap cannot replace), a file or a directory that is not an export."""
    try:
        check_output_outside_inputs(
            out_dir, {"--model": model_dir, "--calibration-data": calibration_data}, replaces_directory=True
        )
    except OutputOverlapError as e:
        raise ExportError(str(e)) from None
    check_replaceable_directory(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"--output {out_dir} exists and is not a directory; choose another path")
        if any(out_dir.iterdir()) and not is_export_directory(out_dir):
            raise ExportError(
                f"--output {out_dir} exists, is not empty and is not an export directory (no {EXPORT_JSON} of "
                "this format beside a model.onnx); refusing to replace it: choose a new path or remove it yourself"
            )


def is_export_directory(directory: Path) -> bool:
    """Whether `directory` holds an export of this format (its export.json parses as one): the only kind of
    directory the exporter replaces, or puts back after an interrupted swap."""
    try:
        read_export_info(directory, verify_sha256=False)
    except ExportDirError:
        return False
    return True


def staged_directory(out_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """An empty, locked staging sibling of `out_dir`; on normal exit it replaces `out_dir`, on error it is removed.

    First recovers from an earlier export that was killed (`trt_runtime.contract.files.atomic_directory`).
    """
    return atomic_directory(out_dir, is_previous_version=is_export_directory)


def recover_interrupted(out_dir: Path) -> list[Path]:
    """Undo what a killed export left next to `out_dir` (see `trt_runtime.contract.files.recover_interrupted`)."""
    return files_recover_interrupted(out_dir, is_export_directory)


def copy_checkpoint_files(model_dir: Path, directory: Path) -> list[str]:
    """config.json and whatever tokenizer files the checkpoint has; returns the names copied."""
    copied = []
    for name in (CONFIG_JSON, *TOKENIZER_FILES):
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, directory / name)
            copied.append(name)
    return copied
