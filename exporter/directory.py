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
import json
import os
from pathlib import Path

from exporter.errors import ExportError
from trt_runtime.contract.export_dir import CONFIG_JSON, EXPORT_JSON, ExportDirError, read_export_info
from trt_runtime.contract.files import (
    OutputOverlapError,
    atomic_directory,
    check_output_outside_inputs,
    check_replaceable_directory,
    ensure_directory,
    write_bytes_atomic,
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


#: sentence-transformers' description of the model (modules.json lists the module directories, e.g.
#: 1_Pooling/, 2_Normalize/, 2_Dense/), copied so that `SentenceTransformer(export_dir, backend="onnx")` pools
#: and normalizes as the checkpoint does (issue 20)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def copy_checkpoint_files(model_dir: Path, directory: Path) -> list[str]:
    """config.json, whatever tokenizer files the checkpoint has, and sentence-transformers' module files;
    returns the names copied (relative paths)."""
    root = checkpoint_root(model_dir)
    copied = []
    for name in (CONFIG_JSON, *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES):
        if (model_dir / name).exists():
            copy_regular_file(model_dir / name, directory, name, root)
            copied.append(name)
    for module in sentence_transformers_modules(model_dir):
        source = model_dir / module
        for path in sorted(source.rglob("*")):  # rglob lists links without entering linked directories
            if path.is_dir() and not path.is_symlink():
                continue
            name = path.relative_to(model_dir).as_posix()
            copy_regular_file(path, directory, name, root)
            copied.append(name)
    return copied


def checkpoint_root(model_dir: Path) -> Path:
    """What counts as inside the checkpoint: its directory, or for a Hugging Face cache snapshot
    (models--org--name/snapshots/<rev>/, whose files link to ../../blobs/) the model's cache folder."""
    resolved = model_dir.resolve()
    if resolved.parent.name == "snapshots" and (resolved.parent.parent / "blobs").is_dir():
        return resolved.parent.parent
    return resolved


def sentence_transformers_modules(model_dir: Path) -> list[str]:
    """The module directories that the checkpoint's modules.json names and that exist ("" is the model itself)."""
    path = model_dir / "modules.json"
    if not path.exists():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        paths = [str(module.get("path", "")) for module in modules]
    except (ValueError, AttributeError, TypeError) as e:
        raise ExportError(f"{path} is not sentence-transformers' modules.json (a list of modules): {e}") from None
    inside = []
    for module in paths:
        if not module:
            continue
        if Path(module).is_absolute() or ".." in Path(module).parts:
            raise ExportError(f"{path} names the module path {module!r}, outside the checkpoint; refusing to copy it")
        if (model_dir / module).is_dir():
            inside.append(module)
    return inside


def copy_regular_file(source: Path, directory: Path, name: str, root: Path) -> None:
    """Copy the file `source` to `directory / name` (through trt_runtime.contract.files). A link is copied as
    the file it points to only while that stays inside the checkpoint (`root`); one that leaves it, or that
    points to anything but a regular file, is refused."""
    target = source.resolve()
    if not target.is_relative_to(root):
        raise ExportError(
            f"{source} is a link to {target}, outside the checkpoint {root}; refusing to copy it into the export "
            "(replace the link with the file itself)"
        )
    if not target.is_file():
        raise ExportError(f"{source} is not a regular file; refusing to copy it into the export")
    ensure_directory((directory / name).parent, root=directory)
    write_bytes_atomic(directory / name, target.read_bytes(), root=directory)
