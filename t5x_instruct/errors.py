"""Errors caused by the user's input (config, task names, MODEL_DIR) or by the storage, not
by a bug.

The CLI prints these as one readable line and exits with status 2 (bad input) or
:data:`STORAGE_ERROR_EXIT_CODE` (storage failed mid-run); anything else keeps its traceback.
Each also subclasses the builtin type callers would expect (``ValueError``, ``OSError``).
"""

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
