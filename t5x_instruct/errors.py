"""Errors caused by the user's input (config, task names, MODEL_DIR) or by the storage, not
by a bug.

The CLI prints these as one readable line and exits with status 2 (bad input) or
:data:`STORAGE_ERROR_EXIT_CODE` (storage failed mid-run); anything else keeps its traceback.
Each also subclasses the builtin type callers would expect (``ValueError``, ``OSError``).
"""

import errno
import os
import re
from collections.abc import Iterator

# Exit status of `python -m t5x_instruct.train` when writing a checkpoint failed (disk full,
# quota, permissions changed mid-run): not the user's input (2), not a bug (1).
STORAGE_ERROR_EXIT_CODE = 3


class UserInputError(ValueError):
    """Bad configuration or input; the message says what is at fault and how to fix it."""


class StorageError(OSError):
    """Writing MODEL_DIR failed mid-run (disk full, quota, permissions); the message names the
    step, the folder, the OS reason and the checkpoint a rerun resumes from."""


class DataUnavailableError(UserInputError, FileNotFoundError):
    """A data source that cannot be read (offline, missing path, data set not prepared); the
    message names the path and how to point the task at a local copy. Also a
    ``FileNotFoundError``, which callers catching missing files expect."""


class NotUtf8Error(UserInputError):
    """A text data file holds bytes that are not UTF-8; the message names file and line."""


def not_utf8(where: str, raw: bytes, exc: UnicodeDecodeError) -> NotUtf8Error:
    """The error for line ``raw`` at ``where`` (``'path:line'``) that failed to decode."""
    byte = raw[exc.start : exc.start + 1].hex()
    return NotUtf8Error(
        f"{where}: not UTF-8 text (byte 0x{byte} at column {exc.start + 1}); save the file as "
        "UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)."
    )


def _subclass_names(cls: type) -> set[str]:
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _subclass_names(sub)
    return names


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of a :class:`UserInputError`, also when it arrives wrapped in
    another exception's text (raised inside a ``tf.data`` generator, TensorFlow re-raises it
    as an ``InvalidArgumentError`` whose message holds ``"<ErrorName>: <message>"``); else
    ``None`` (a bug: keep the traceback)."""
    if isinstance(exc, UserInputError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    names = _subclass_names(UserInputError)
    for line in str(exc).splitlines():
        head, sep, rest = line.partition(": ")
        name = head.rsplit(" ", 1)[-1].rsplit(".", 1)[-1]  # "{{node}} pkg.mod.NameError"
        if sep and name in names and rest.strip():
            return rest.strip()
    return None


# ------------------------------------------------------------------ storage failures

# TensorStore reports OS errors as ValueErrors with the code in the message.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# TensorStore status codes that mean "the storage refused" (object stores give no errno).
_STORAGE_STATUS = re.compile(
    r"^(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAUTHENTICATED|UNAVAILABLE|DEADLINE_EXCEEDED):"
)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def storage_reason(exc: BaseException) -> str | None:
    """``'[Errno 28] No space left on device'`` when ``exc`` (or its cause) is the storage
    refusing a write or read; ``None`` for anything else (a bug keeps its traceback)."""
    for err in exception_chain(exc):
        if isinstance(err, StorageError | UserInputError):
            continue
        if isinstance(err, OSError):
            if err.errno:
                return f"[Errno {err.errno}] {err.strerror or os.strerror(err.errno)}"
            return first_line(f"{type(err).__name__}: {err}")
        text = str(err)
        match = _OS_ERROR_CODE.search(text)
        if match:
            code = int(match.group(1))
            return f"[Errno {code}] {os.strerror(code)}"
        if _STORAGE_STATUS.match(text):
            return first_line(text)
    return None


def first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# errno values meaning "the storage refused the write", not "the program asked for the wrong
# file": disk full, quota, file size limit, read-only file system, I/O error.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})

# How every storage failure mid-run ends its one line: what is safe and what to do.
RERUN_HINT = (
    "checkpoints already written are kept (rerun the same command to resume from the latest "
    "one once there is space)."
)


def storage_failure_message(exc: BaseException) -> str | None:
    """One line for a write MODEL_DIR's storage refused outside a checkpoint save (summary,
    config, exports), or ``None``. Checkpoint and metrics writes raise :class:`StorageError`
    themselves, with the step."""
    if isinstance(exc, StorageError):
        return first_line(str(exc))
    for err in exception_chain(exc):
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            where = f"writing {err.filename}" if err.filename else "writing to MODEL_DIR"
            return f"{where} failed: {storage_reason(err)}; {RERUN_HINT}"
    return None
