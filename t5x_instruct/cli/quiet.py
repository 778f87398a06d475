"""A quiet start for the command lines: TensorFlow's C++ start-up chatter, absl/TF INFO logs
and SeqIO's per-run packing warning filtered out, so that the lines a user reads are the
run's own.

TensorFlow writes its start-up lines ("All log messages before absl::InitializeLog() ...",
"Could not find cuda drivers ...", cuDNN/cuFFT factory registrations) from C++ straight to
file descriptor 2 while it is imported, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so
:func:`import_tensorflow_quietly` captures that descriptor during the import and replays
every line that is not known noise. Gin's file-lookup lines are dropped where gin files are
parsed (:func:`t5x_instruct.gin_utils.parse_gin`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# C++ log lines: "I0000 00:00:1796033351.255362   32362 cudart_stub.cc:31] message".
_CPP_LINE = re.compile(r"^(?P<level>[IWEF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] (?P<msg>.*)$")
_NOISE_MESSAGES = re.compile(
    r"Unable to register (cuDNN|cuFFT|cuBLAS) factory|computation placer already registered"
    r"|TF-TRT Warning|Could not find cuda drivers|oneDNN custom operations"
)
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written"
# The second line of cpu_feature_guard's INFO message ("This TensorFlow binary is optimized").
_CPU_FEATURES_CONTINUATION = "To enable the following instructions:"
NOISY_LOGGERS = ("absl", "jax._src", "orbax", "tensorflow", "tensorflow_datasets")


def is_noise(line: str) -> bool:
    """Whether ``line`` (C-level stderr during TensorFlow's import) is known start-up noise:
    absl's pre-initialisation banner, C++ INFO lines, and the warnings that every CPU-only or
    every GPU machine prints (missing CUDA drivers, duplicate factory registrations)."""
    line = line.rstrip("\r\n")
    if line.startswith((_ABSL_PREAMBLE, _CPU_FEATURES_CONTINUATION)):
        return True
    match = _CPP_LINE.match(line)
    if match is None:
        return False
    return match["level"] == "I" or bool(_NOISE_MESSAGES.search(match["msg"]))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 (C and Python writes alike) and, on exit, replays the lines
    that are not :func:`is_noise`, in order. Meant for short stretches (an import)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable descriptor 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (if installed and not imported yet) with its start-up noise
    filtered; the data pipeline imports it anyway, so this only moves the import earlier."""
    if "tensorflow" in sys.modules:
        return
    # Without TensorFlow installed the core still runs: nothing to import, nothing to filter.
    with filtered_stderr(), contextlib.suppress(ImportError):
        importlib.import_module("tensorflow")


class _DropKnownAbslWarnings(logging.Filter):
    """SeqIO warns on every packed run that the ``*_pretokenized`` text features are dropped
    from packed batches, which is what packing means: not worth a line per run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_PACKING_WARNING)


_PACKING_WARNING = "Features not in `features_length` will be removed during packing"


def quiet_startup() -> None:
    """What every command line calls first: TF's C++ log level, absl/TF/JAX INFO loggers at
    WARNING (and SeqIO's per-run packing warning dropped), TensorFlow imported quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropKnownAbslWarnings) for f in absl_logger.filters):
        absl_logger.addFilter(_DropKnownAbslWarnings())
    import_tensorflow_quietly()
