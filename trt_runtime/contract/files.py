"""The one place where the project writes or replaces a file or a directory: atomic, durable, never through a link.

Every writer of the project (export directories, calibration files, the runtime's caches and derived graphs,
engines, Triton repositories, benchmark results) goes through these functions, so the rules hold everywhere:

- **Atomic.** A file is written to a hidden temporary sibling and renamed over its name once complete and
  fsynced (the directory is fsynced too): a reader sees the old file or the new one, never half of one, and a
  power cut leaves one of the two. A directory is staged the same way and swapped in whole
  (`atomic_directory`).
- **Unpredictable temporaries, created exclusively.** `.NAME.tmp-<16 random hex digits>`, opened with
  `O_CREAT | O_EXCL | O_NOFOLLOW`: no one can have planted a link at that name beforehand, and if something
  is there the write fails instead of following it. The final `rename` replaces a link at NAME rather than
  writing through it.
- **No link is followed below the directory the caller names** (`root`, the directory the user gave: an
  export, a cache directory, an output). Subdirectories such as `.cache/` are entered and created with
  `openat(..., O_NOFOLLOW)`: one that is a symbolic link raises `UnsafePathError` naming it. `root` itself
  may be a link (a user may keep exports on another disk and link to them).
- **Ownership by lock, not by pid.** A writer holds an exclusive `flock` on its temporary file or staging
  directory for as long as it writes. A temporary whose lock can be taken belongs to a writer that is gone
  (killed, power loss), in this PID namespace or any other sharing the filesystem (two containers on one
  volume), and the next writer of the same NAME removes it (`remove_stale_temporaries`).

Standard library only (the exporter, `models` and the torch-free runtime all use it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from trt_runtime.contract.errors import FileError

#: how old (seconds) an unlocked temporary must be before another writer removes it: a writer takes its
#: lock microseconds after creating the file, so this only guards that instant
STALE_AGE_SECONDS = 2.0
TEMPORARY_KINDS = ("tmp", "old")


class UnsafePathError(FileError, PermissionError):
    """A path the project would write through is a symbolic link (or not a directory); the message names it.

    A PermissionError (an OSError): writers that can do without a cache fall back as for any unwritable path."""

    code = "unsafe-path"


class OutputError(FileError):
    """An output cannot be written where the user named it (read-only or immutable, full, a mount point, a
    directory where a file goes); the message names the path, the reason and the fix. Nothing was replaced.

    An OSError with the original errno: the runtime's caches fall back to memory on it as on any OSError."""

    code = "output-unwritable"


class OutputOverlapError(FileError, ValueError):
    """An output is, contains or lies inside one of the inputs it is made from: writing it would destroy the
    input (`check_output_outside_inputs`); the message names both."""

    code = "output-overlaps-input"


#: errno -> (why, what to do) for the failures of writing an output that a user can cause and fix
_WRITE_FAILURES = {
    errno.EROFS: ("the filesystem is read-only", "choose an output on a writable filesystem, or remount it read-write"),
    errno.EACCES: ("permission denied", "check the directory's owner and mode (ls -ld), or choose another output"),
    errno.EPERM: (
        "the operation is not permitted (an immutable or append-only file or directory?)",
        "check its attributes (lsattr -d; chattr -i) and permissions, or choose another output",
    ),
    errno.ENOSPC: ("no space is left on the device", "free some space or choose an output on another filesystem"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose an output on another filesystem"),
    errno.EBUSY: (
        "it is busy: a mount point (or in use), which a rename cannot replace",
        "write into a directory inside it instead (e.g. PATH/NAME)",
    ),
    errno.EISDIR: ("it is a directory, and a file goes there", "name a file (e.g. PATH/NAME), or remove the directory"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose a path whose parents are directories"),
    errno.EXDEV: ("it is on another filesystem than its temporary sibling", "choose an output that is not a mount point"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def output_error(error: OSError, path: str | os.PathLike) -> OutputError:
    """The OutputError for a failed write of the output `path`: names it, why (from errno) and the fix (never
    a temporary's name: those are ours, not the user's)."""
    path = os.fspath(path)
    if isinstance(error, OutputError) and error.filename == path:
        return error
    why, fix = _WRITE_FAILURES.get(error.errno or 0, (error.strerror or str(error), "choose another output"))
    detail = os.fspath(error.filename) if isinstance(error.filename, (str, os.PathLike)) else ""
    where = f" ({detail})" if detail and detail != path and not _TEMPORARY_PART.search(detail) else ""
    text = f"cannot write {path}: {why}{where}; {fix.replace('PATH', path)}. Nothing was replaced"
    return OutputError(text, error.errno, path)


#: a path component that is one of our temporaries (`.NAME.tmp-<hex>`, `.NAME.old-<hex>`)
_TEMPORARY_PART = re.compile(r"(^|/)\.[^/]+\.(tmp|old)-[0-9a-f-]+")


#: errnos that, raised while the caller's code writes into a temporary of ours, are about writing that output
_WRITING_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def _writing(path: Path, body_errnos: tuple[int, ...] | None = None) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into an OutputError naming it (UnsafePathError and
    OutputError pass unchanged). body_errnos: only those errnos are translated (the caller's own code runs
    inside; its unrelated OSErrors, a read of an input that failed, stay what they are)."""
    try:
        yield
    except UnsafePathError:
        raise
    except OSError as e:
        if body_errnos is not None and e.errno not in body_errnos:
            raise
        if body_errnos is None and isinstance(e, FileError):
            raise
        raise output_error(e, path) from e


def check_replaceable_directory(path: str | os.PathLike) -> None:
    """Refuse, before any work, a directory output that a rename cannot replace: a mount point."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and os.path.ismount(path):
        raise OutputError(
            f"cannot replace {path}: it is a mount point, and an output directory is replaced whole by a rename; "
            f"write into a directory inside it instead (e.g. {path / 'NAME'})",
            errno.EBUSY,
            str(path),
        )


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, a file output that names a directory (the write would fail only at the end,
    after the work, with `IsADirectoryError`)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise output_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path)), path)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def check_output_outside_inputs(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None],
    *,
    output_label: str = "--output",
    replaces_directory: bool = False,
) -> None:
    """Refuse an output that is one of the inputs or lies inside one (writing it would change the input), and,
    where the output is a directory replaced whole (`replaces_directory`), one that contains an input (the
    swap would delete it). inputs: label -> path ("--model": the checkpoint, ...); None entries are skipped.
    Paths are compared after resolving links. Raises OutputOverlapError naming both."""
    out = _resolved(output)
    for label, given in inputs.items():
        if given is None:
            continue
        source = _resolved(given)
        if out == source:
            relation = "is"
        elif source in out.parents:
            relation = "lies inside"
        elif replaces_directory and out in source.parents:
            relation = "contains"
        else:
            continue
        raise OutputOverlapError(
            f"{output_label} {output} {relation} the input {label} {given}: writing it would "
            f"{'destroy' if relation != 'lies inside' else 'change'} what it is made from; "
            + (f"choose another {output_label}" if relation == "is" else f"choose an output outside {given}"),
            None,
            os.fspath(output),
        )


# --- sha256 ------------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --- directories below a root, without following links -------------------------------------------------------


def _relative_parts(directory: Path, root: Path) -> tuple[str, ...]:
    try:
        relative = directory.relative_to(root)
    except ValueError:
        raise UnsafePathError(f"{directory} is not inside {root}; refusing to write outside the directory named") from None
    parts = relative.parts
    if any(part in ("..", "") for part in parts):
        raise UnsafePathError(f"{directory} leaves {root} ('..'); refusing to write outside the directory named")
    return parts


def _open_directory(root: Path, parts: tuple[str, ...], create: bool) -> int:
    """A file descriptor of root/parts, entering (and, with create, making) each part without following links."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # the directory the caller named may be a link
    walked = root
    for part in parts:
        walked = walked / part
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a symbolic link" if walked.is_symlink() else "not a directory"
                raise UnsafePathError(
                    f"{walked} is {what}; refusing to write through it (remove it, or point the writer at "
                    f"another directory)"
                ) from None
            raise
        os.close(fd)
        fd = child
    return fd


def ensure_directory(directory: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """Make `directory` (and its parents below `root`) without following a link below `root`; returns it."""
    directory = Path(directory)
    root_path = Path(root) if root is not None else directory
    with _writing(directory):
        os.close(_open_directory(root_path, _relative_parts(directory, root_path), create=True))
    return directory


def check_no_links(path: str | os.PathLike, *, root: str | os.PathLike) -> None:
    """Raise UnsafePathError if any component of `path` below `root` (the file itself included) is a link."""
    path, root = Path(path), Path(root)
    walked = root
    for part in _relative_parts(path, root):
        walked = walked / part
        if walked.is_symlink():
            raise UnsafePathError(f"{walked} is a symbolic link; refusing to use it (remove the link)")


def _fsync_directory(fd: int) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        os.fsync(fd)


def _temporary_name(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{secrets.token_hex(8)}"


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)


# --- files ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, *, root: str | os.PathLike | None = None, text: bool = False, mode: int = 0o644
) -> Iterator[IO[Any]]:
    """Yield a file object to write `path`'s new content into; on normal exit it replaces `path` atomically.

    root: the directory the caller was given (default: `path`'s parent); directories between it and `path`
    are created and entered without following links. On an exception the temporary is removed and `path`
    is left as it was.
    """
    path = Path(path)
    root_path = Path(root) if root is not None else path.parent
    with _writing(path):
        _refuse_directory(path)
        dir_fd = _open_directory(root_path, _relative_parts(path.parent, root_path), create=True)
    try:
        with _writing(path):
            remove_stale_temporaries(path, ("tmp",))  # a killed writer's, checked by lock (never followed)
            tmp = _temporary_name(path.name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
            _lock(fd)
        try:
            with os.fdopen(fd, "w" if text else "wb", encoding="utf-8" if text else None, closefd=False) as f:
                with _writing(path, _WRITING_ERRNOS):
                    yield f
                with _writing(path):
                    f.flush()
                    os.fsync(fd)
            with _writing(path):
                os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                _fsync_directory(dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _refuse_directory(path: Path) -> None:
    """A file output must not name a directory (os.replace would fail late, with a temporary's name)."""
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview, *, root: str | os.PathLike | None = None) -> None:
    with atomic_file(path, root=root) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> None:
    with atomic_file(path, root=root, text=True) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any, *, root: str | os.PathLike | None = None) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", root=root)


def save_onnx_atomic(model: Any, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> None:
    """An onnx.ModelProto to `path`, atomically (models under protobuf's 2 GB limit; larger ones raise ValueError)."""
    write_bytes_atomic(path, model.SerializeToString(), root=root)


@contextlib.contextmanager
def reserved_path(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """For a library that writes a file by name itself (ONNX Runtime's `optimized_model_filepath`): yield a
    fresh temporary path (created exclusively, empty, locked) for it to write; on normal exit it is fsynced
    and renamed to `path`."""
    path = Path(path)
    root_path = Path(root) if root is not None else path.parent
    with _writing(path):
        _refuse_directory(path)
        dir_fd = _open_directory(root_path, _relative_parts(path.parent, root_path), create=True)
    try:
        with _writing(path):
            remove_stale_temporaries(path, ("tmp",))  # a killed writer's, checked by lock (never followed)
            tmp = _temporary_name(path.name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            _lock(fd)
        try:
            with _writing(path, _WRITING_ERRNOS):
                yield path.parent / tmp
            with _writing(path):
                written = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    os.fsync(written)
                finally:
                    os.close(written)
                os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                _fsync_directory(dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold an exclusive `flock` on the lock file `path` (created empty if missing, never through a link) for
    the duration of the block: one writer at a time derives what many processes or threads want (a cache), or
    read-merge-writes a file that several processes update (the TensorRT timing cache's `<cache>.lock`).

    flock locks belong to an open file description, so two threads of one process exclude each other too.
    root: as for `atomic_file`; the directories up to `path` are created without following links."""
    path = Path(path)
    root_path = Path(root) if root is not None else path.parent
    with _writing(path):
        dir_fd = _open_directory(root_path, _relative_parts(path.parent, root_path), create=True)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symbolic link; refusing to use it as a lock (remove it)") from None
        raise output_error(e, path) from e
    finally:
        os.close(dir_fd)
    try:
        _lock(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- directories ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    *,
    is_previous_version: Callable[[Path], bool] = lambda directory: True,
) -> Iterator[Path]:
    """Yield an empty, locked staging directory; on normal exit it replaces `path` whole, on error it is removed.

    Replacing is one atomic step where the filesystem has Linux's renameat2(RENAME_EXCHANGE); elsewhere the
    old directory is renamed to `.NAME.old-*` first. A writer killed between those two renames leaves NAME
    missing: the next writer puts the newest `.NAME.old-*` for which `is_previous_version` holds back
    (`recover_interrupted`) before anything else. The caller decides beforehand whether `path` may be
    replaced at all (an export only replaces an export).
    """
    path = Path(path)
    check_replaceable_directory(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(path, is_previous_version)
        staging = path.parent / _temporary_name(path.name)
        staging.mkdir()
        lock_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _lock(lock_fd)
        with _writing(path, _WRITING_ERRNOS):
            yield staging
        with _writing(path):
            _swap_in(staging, path)
    finally:
        os.close(lock_fd)
        _remove_tree(staging)


def _swap_in(staging: Path, path: Path) -> None:
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not os.path.lexists(path):
            os.rename(staging, path)
        elif _exchange(staging, path):
            pass  # staging now holds the previous version; the caller's cleanup removes it
        else:
            old = path.parent / _temporary_name(path.name, "old")
            old_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                _lock(old_fd)  # ours while it is set aside: no other writer takes it for stale
                os.rename(path, old)
                try:
                    os.rename(staging, path)
                except BaseException:
                    os.rename(old, path)  # put the previous version back
                    raise
            finally:
                os.close(old_fd)
            _remove_tree(old)
        _fsync_directory(parent_fd)
    finally:
        os.close(parent_fd)


def recover_interrupted(path: str | os.PathLike, is_previous_version: Callable[[Path], bool] = lambda d: True) -> list[Path]:
    """Undo what a killed writer left next to `path`; returns the stale temporaries removed.

    A missing `path` with a stale `.NAME.old-*` directory beside it means the kill fell between the two
    renames of a directory swap: the newest such directory that `is_previous_version` accepts is put back.
    """
    path = Path(path)
    if not os.path.lexists(path):
        previous = [p for p in stale_temporaries(path, ("old",)) if p.is_dir() and not p.is_symlink()]
        previous = [p for p in previous if is_previous_version(p)]
        if previous:
            with contextlib.suppress(OSError):
                os.rename(max(previous, key=lambda p: p.lstat().st_mtime), path)
    return remove_stale_temporaries(path)


def _remove_tree(path: Path) -> None:
    """Remove a file or directory tree that is ours, never following a link inside it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow links (it removes them)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- what killed writers leave behind ---------------------------------------------------------------------------


def _temporary_pattern(name: str, kinds: tuple[str, ...]) -> re.Pattern[str]:
    # `.NAME.tmp-<random>`; also this project's older `.NAME.tmp-<pid>-<random>` names
    return re.compile(rf"\.{re.escape(name)}\.({'|'.join(map(re.escape, kinds))})-[0-9a-f-]+(\.[A-Za-z0-9]+)?")


def _is_stale(parent: Path, name: str) -> bool:
    """Whether a temporary is abandoned: its lock can be taken (no writer holds it) and it is not brand new."""
    candidate = parent / name
    try:
        info = os.lstat(candidate)
    except FileNotFoundError:
        return False
    if time.time() - info.st_mtime < STALE_AGE_SECONDS:
        return False
    if stat.S_ISLNK(info.st_mode):
        return True  # a link at a temporary's name is no writer's: remove the link itself
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if stat.S_ISDIR(info.st_mode) else 0)
    try:
        fd = os.open(candidate, flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live writer holds it
    finally:
        os.close(fd)
    return True


def stale_temporaries(path: str | os.PathLike, kinds: tuple[str, ...] = TEMPORARY_KINDS) -> list[Path]:
    """Hidden siblings `.NAME.<kind>-*` of `path` that no running writer holds (a killed writer's)."""
    path = Path(path)
    pattern = _temporary_pattern(path.name, kinds)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / name for name in names if pattern.fullmatch(name) and _is_stale(path.parent, name))


def remove_stale_temporaries(path: str | os.PathLike, kinds: tuple[str, ...] = TEMPORARY_KINDS) -> list[Path]:
    """Delete what `stale_temporaries` finds; returns what was removed."""
    removed = []
    for stale in stale_temporaries(path, kinds):
        _remove_tree(stale)
        removed.append(stale)
    return removed


# --- Linux's atomic exchange of two paths -------------------------------------------------------------------------

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
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this filesystem or kernel cannot exchange: use two renames
    raise OSError(error, os.strerror(error), str(b))
