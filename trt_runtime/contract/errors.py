"""The one base of the project's documented errors, its stable codes and the exit statuses of the commands.

Every error a user can cause or meet (a bad argument, a damaged file, a machine that cannot run what was asked)
is a subclass of `QbertError` and of the builtin that says whose fault it is (`ValueError`: the input or a file
is wrong; `RuntimeError`: this machine or build cannot do it; `OSError`: a file cannot be written). Each class
has a stable `code` (callers and tests branch on it; messages may change) and the `exit_code` a command line
exits with when it stops on it (docs/errors.md lists them all):

- 0: done;
- 1: the work ran but its result failed a check (an export that does not reproduce PyTorch, a graph TensorRT's
  parser would refuse, an engine build TensorRT failed);
- 2: anything to fix before running again: arguments, inputs, files, the output path, this machine.

Command lines print `error: <message>` on stderr and exit with the error's code (`report`); an `OSError` that
is not one of ours (a read that failed) is shown the same way, with exit 2 (`as_qbert_error`).

Standard library only: models, the exporter and the torch-free runtime all derive from it.
"""

from __future__ import annotations

import sys
from typing import ClassVar

#: the exit status for "validation failed" (docs/errors.md); every other error exits with BAD_INPUT
VALIDATION_FAILED = 1
BAD_INPUT = 2


class QbertError(Exception):
    """Base of every documented error of the project; `code` is stable, `exit_code` is what a command exits with."""

    code: ClassVar[str] = "qbert-error"
    exit_code: ClassVar[int] = BAD_INPUT


class FileError(QbertError, OSError):
    """A file or directory could not be read or written as asked; the message names it, says why and the fix.

    An OSError (with the original `errno` and `filename`), so code that copes with an unwritable path (the
    runtime's caches fall back to memory) treats it as any other."""

    code: ClassVar[str] = "file-error"

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # type: ignore[misc]
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def as_qbert_error(error: BaseException) -> QbertError | None:
    """The documented error for `error`: itself where it is one, a FileError for a plain OSError (which then
    names its file), else None (a bug: let the traceback show)."""
    if isinstance(error, QbertError):
        return error
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return FileError(f"{where}{error.strerror or error}", error.errno, error.filename)
    return None


def report(error: BaseException, *, prefix: str = "") -> int:
    """Print `error: <prefix><message>` on stderr; the exit status for it (2 unless the class says otherwise).

    For command lines: `except Exception as e: return report(e)` re-raises what is not a documented error."""
    documented = as_qbert_error(error)
    if documented is None:
        raise error
    print(f"error: {prefix}{documented}", file=sys.stderr)
    return documented.exit_code
