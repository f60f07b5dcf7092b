"""Derived artefacts: files a backend makes from an export's model.onnx, each kept with a record, checked before use.

A derived artefact (the CPU INT8 or fused float graph, ONNX Runtime's optimized graph, a compiled model) is
only as good as what it was made from. Each is stored as `NAME` plus a JSON record `NAME.json`-style sibling
(`ArtefactRecord`): what made it (`made_with`: library versions, recipe, the CPU features it depends on),
the sha256 of its source and of itself, and where it was made (`made_on`, for the reader only). Before use,
`verify` compares the record with what this runtime would make now (`Expected`) and the file's sha256 with the
record's, as `model.engine` is checked through engine.json: a record that does not match, or a file that is
not the one the record describes (substituted, damaged, half-written), is never used.

Where they live (`CacheLocation`): built explicitly into the export (`python -m trt_runtime build DIR --target
...`), or derived on first load into a cache directory: the export's `.cache/`, or one named by the caller
(`cache_dir=`, $QBERT_CACHE_DIR) that serves many exports, entries keyed by the sha256 of model.onnx. Writes go
only through `trt_runtime.contract.files` (atomic, unpredictable temporaries, never through a link), deriving
is serialized by a lock file in the cache directory (threads and processes), and where nothing can be written
(a read-only export, a `.cache` that is a link) `obtain` derives the artefact in memory instead.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trt_runtime.backends.base import CacheStatus
from trt_runtime.contract.export_dir import CACHE_DIR, MODEL_ONNX, ExportInfo
from trt_runtime.contract.files import (
    UnsafePathError,
    check_no_links,
    ensure_directory,
    exclusive_lock,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

RECORD_FORMAT_VERSION = 1
LOCK_NAME = ".lock"


def record_path(path: Path) -> Path:
    """The record of the artefact `path`: `model.cpu-int8.onnx` -> `model.cpu-int8.json`."""
    return path.with_suffix(".json")


@dataclass(frozen=True)
class Expected:
    """What an artefact must have been made from and with, for this export on this machine."""

    kind: str  # "cpu-int8", "cpu-float", "ort-optimized", ...
    source: str  # what it is made from: "model.onnx", or another artefact's file name
    source_sha256: str
    #: everything that changes the artefact: library versions, recipe, CPU features it depends on; compared
    made_with: Mapping[str, Any]
    #: where it is made (recorded for the reader, never compared): e.g. the CPU's feature flags
    made_on: Mapping[str, Any] = field(default_factory=dict)

    def record(self, sha256: str) -> ArtefactRecord:
        return ArtefactRecord(
            kind=self.kind,
            source=self.source,
            source_sha256=self.source_sha256,
            sha256=sha256,
            made_with=dict(self.made_with),
            made_on=dict(self.made_on),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )


@dataclass
class ArtefactRecord:
    """The JSON record next to a derived artefact."""

    kind: str
    source: str
    source_sha256: str
    sha256: str
    made_with: dict[str, Any]
    made_on: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    format_version: int = RECORD_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: Any) -> ArtefactRecord:
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        known = set(cls.__dataclass_fields__)
        try:
            record = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise ValueError(f"fields are missing ({e})") from None
        strings = ("kind", "source", "source_sha256", "sha256")
        if any(not isinstance(getattr(record, name), str) for name in strings) or not isinstance(
            record.made_with, dict
        ):
            raise ValueError("a field has the wrong type")
        return record

    def problems(self, expected: Expected) -> list[str]:
        """How this record differs from what `expected` says the artefact must be made from; [] if it fits."""
        problems = []
        if self.format_version != RECORD_FORMAT_VERSION:
            problems.append(f"its record has format_version {self.format_version!r}, this runtime writes "
                            f"{RECORD_FORMAT_VERSION}")
        if self.kind != expected.kind:
            problems.append(f"it is a {self.kind!r} artefact, not {expected.kind!r}")
        if self.source_sha256 != expected.source_sha256:
            problems.append(
                f"it was made from a different {expected.source} (sha256 {self.source_sha256[:12]}..., the file "
                f"now is {expected.source_sha256[:12]}...)"
            )
        for key, value in expected.made_with.items():
            recorded = self.made_with.get(key)
            if recorded != value:
                problems.append(f"it was made with {key} {_short(recorded)}, this runtime needs {_short(value)}")
        if problems and self.made_on and self.made_on != dict(expected.made_on):
            problems.append(f"it was made on {_short(self.made_on)}, this is {_short(dict(expected.made_on))}")
        return problems


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_no_follow(path: Path) -> bytes:
    """The bytes of `path`, refusing a symbolic link at `path` itself (UnsafePathError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symbolic link; refusing to read it as a derived artefact") from None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def verify(path: Path, expected: Expected) -> tuple[bytes | None, list[str]]:
    """(the artefact's bytes, []) where `path` and its record match `expected`; else (None, the problems).

    The file is read once and its sha256 taken of those bytes, so what is checked is what is then used."""
    record_file = record_path(path)
    if not os.path.lexists(path):
        return None, [f"{path} not found"]
    if not os.path.lexists(record_file):
        return None, [f"{record_file} not found, so nothing says what {path.name} was made from"]
    try:
        record = ArtefactRecord.from_dict(json.loads(_read_no_follow(record_file)))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        return None, [f"its record {record_file} is unreadable ({e})"]
    except OSError as e:
        return None, [f"its record {record_file} cannot be read ({e})"]
    problems = record.problems(expected)
    if problems:
        return None, problems
    try:
        data = _read_no_follow(path)
    except OSError as e:
        return None, [f"{path} cannot be read ({e})"]
    if sha256_bytes(data) != record.sha256:
        return None, [
            f"{path.name} is not the file its record describes (sha256 {sha256_bytes(data)[:12]}..., recorded "
            f"{record.sha256[:12]}...): it was replaced or damaged"
        ]
    return data, []


def directory_sha256(directory: Path) -> str:
    """The sha256 of a directory artefact (a compiled-model cache of several files): of the sorted names and
    sha256 of its entries, which must all be regular files (a link or a subdirectory raises UnsafePathError)."""
    entries = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise UnsafePathError(f"{Path(entry.path)} is not a regular file; a derived directory holds only files")
        entries.append(f"{entry.name}\0{sha256_file(entry.path)}")
    return sha256_bytes("\n".join(entries).encode())


def verify_directory(directory: Path, expected: Expected) -> list[str]:
    """[] where the directory artefact and its record (`record_path(directory)`) match `expected`; else the
    problems (as `verify` for a file: the record first, then what the directory holds)."""
    record_file = record_path(directory)
    if not os.path.lexists(directory):
        return [f"{directory} not found"]
    if directory.is_symlink() or not directory.is_dir():
        return [f"{directory} is not a directory (a symbolic link?)"]
    if not os.path.lexists(record_file):
        return [f"{record_file} not found, so nothing says what {directory.name} was made from"]
    try:
        record = ArtefactRecord.from_dict(json.loads(_read_no_follow(record_file)))
    except (ValueError, UnicodeDecodeError) as e:
        return [f"its record {record_file} is unreadable ({e})"]
    except OSError as e:
        return [f"its record {record_file} cannot be read ({e})"]
    problems = record.problems(expected)
    if problems:
        return problems
    try:
        digest = directory_sha256(directory)
    except OSError as e:
        return [str(e)]
    if digest != record.sha256:
        return [
            f"{directory.name} does not hold the files its record describes (sha256 {digest[:12]}..., recorded "
            f"{record.sha256[:12]}...): they were replaced, added or damaged"
        ]
    return []


def write(path: Path, data: bytes, expected: Expected, *, root: Path) -> None:
    """Write the artefact, then its record (which holds the artefact's sha256: a reader that comes between
    the two sees a mismatch, never a wrong file under a right record)."""
    write_bytes_atomic(path, data, root=root)
    write_record(path, sha256_bytes(data), expected, root=root)


def write_record(path: Path, sha256: str, expected: Expected, *, root: Path) -> None:
    write_json_atomic(record_path(path), asdict(expected.record(sha256)), root=root)


# --- the cache directory ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheLocation:
    """Where one export's derived artefacts are cached: `directory`, below `root` (the directory the user
    named: the export, or a cache directory), written only below `root` and never through a link."""

    root: Path
    directory: Path
    origin: str  # for messages: "the export's .cache", "cache_dir=...", "$QBERT_CACHE_DIR=..."

    def path(self, name: str) -> Path:
        return self.directory / name

    def check(self) -> None:
        """Raise UnsafePathError where a part of the cache directory below `root` is a symbolic link."""
        check_no_links(self.directory, root=self.root)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the cache directory's lock (made if missing): one deriving writer at a time, threads included."""
        ensure_directory(self.directory, root=self.root)
        with exclusive_lock(self.directory / LOCK_NAME, root=self.root):
            yield


#: names a cache directory for every export a process loads (as `cache_dir=` does for one runner)
CACHE_DIR_ENV = "QBERT_CACHE_DIR"


def resolved_cache_dir(cache_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """(the cache directory a runner's options name, how it was named): `cache_dir`, else $QBERT_CACHE_DIR,
    else (None, ""): the export's own `.cache`. The same for every backend that derives something."""
    if cache_dir is not None:
        return Path(cache_dir), f"cache_dir={str(cache_dir)!r}"
    from_environment = os.environ.get(CACHE_DIR_ENV)
    if from_environment:
        return Path(from_environment), f"${CACHE_DIR_ENV}={from_environment!r}"
    return None, ""


def cache_location_for(
    export_dir: Path, info: ExportInfo, cache: bool, cache_dir: str | os.PathLike | None
) -> CacheLocation | None:
    """Where a runner with options `cache` and `cache_dir` caches what it derives from this export; None
    with cache=False."""
    if not cache:
        return None
    named, origin = resolved_cache_dir(cache_dir)
    return cache_location(export_dir, info, named, origin)


def cache_location(export_dir: Path, info: ExportInfo, cache_dir: Path | None, origin: str = "") -> CacheLocation:
    """The cache location of an export: `cache_dir`/<sha256[:16] of model.onnx> where a cache directory is
    named, else <export>/.cache/<sha256[:16]>; keyed by model.onnx so one cache directory serves many exports."""
    digest = info.onnx_sha256 or sha256_file(export_dir / MODEL_ONNX)
    if cache_dir is not None:
        return CacheLocation(cache_dir, cache_dir / digest[:16], origin or f"cache directory {cache_dir}")
    return CacheLocation(export_dir, export_dir / CACHE_DIR / digest[:16], f"the export's {CACHE_DIR}")


@dataclass
class Obtained:
    """A derived artefact ready to use: its bytes, their sha256, and how it was obtained."""

    data: bytes
    sha256: str
    status: CacheStatus
    detail: str
    path: Path | None  # the file it was read from or written to; None when it lives in memory only


def obtain(
    name: str,
    expected: Expected,
    make: Callable[[], bytes],
    location: CacheLocation | None,
    *,
    what: str,
    no_cache_reason: str = "caching is off (cache=False)",
    stale: Sequence[str] = (),
) -> Obtained:
    """The artefact `name` from the cache where its record matches, else made by `make()` and cached, else (the
    cache cannot be written) made and kept in memory. `what` names it in messages ("the CPU INT8 graph");
    `stale`: why a prebuilt one was not used, which makes a fresh one REBUILT rather than CREATED."""
    why_rebuilt = "; ".join(stale)
    if location is None:
        return _in_memory(make, what, no_cache_reason, why_rebuilt)
    path = location.path(name)
    try:
        location.check()
    except OSError as e:
        return _in_memory(make, what, f"the cache in {location.origin} cannot be used: {e}", why_rebuilt)
    data, problems = verify(path, expected)
    if data is not None:
        return Obtained(data, sha256_bytes(data), CacheStatus.REUSED, _detail(str(path), why_rebuilt), path)
    try:
        with location.lock():
            data, problems = verify(path, expected)  # another thread or process may have made it meanwhile
            if data is not None:
                return Obtained(data, sha256_bytes(data), CacheStatus.REUSED, _detail(str(path), why_rebuilt), path)
            data = make()
            write(path, data, expected, root=location.root)
    except OSError as e:  # read-only, full, not ours, or a link in the way (UnsafePathError)
        if data is None:
            return _in_memory(make, what, f"the cache in {location.origin} cannot be written: {e}", why_rebuilt)
        logger.info("keeping %s in memory: the cache in %s cannot be written (%s)", what, location.origin, e)
        return Obtained(data, sha256_bytes(data), CacheStatus.IN_MEMORY, f"the cache cannot be written: {e}", None)
    missing = problems == [f"{path} not found"]
    if missing and not stale:
        return Obtained(data, sha256_bytes(data), CacheStatus.CREATED, str(path), path)
    reasons = ([] if missing else problems) + list(stale)
    logger.warning("made %s again in %s: %s", what, path, "; ".join(reasons))
    return Obtained(data, sha256_bytes(data), CacheStatus.REBUILT, f"{path}: {'; '.join(reasons)}", path)


def _detail(where: str, why_rebuilt: str) -> str:
    return f"{where} (the prebuilt one was not used: {why_rebuilt})" if why_rebuilt else where


def _in_memory(make: Callable[[], bytes], what: str, why: str, why_rebuilt: str) -> Obtained:
    logger.info("deriving %s in memory: %s", what, why)
    data = make()
    detail = why + (f"; the prebuilt one was not used: {why_rebuilt}" if why_rebuilt else "")
    return Obtained(data, sha256_bytes(data), CacheStatus.IN_MEMORY, detail, None)
