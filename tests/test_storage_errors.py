"""A full disk outside checkpoint saves (metrics, TensorBoard, summary, config) is one line.

Checkpoint saves are drilled in test_checkpoint_damage.py; here the other writers. The
storage is made to refuse writes for real: RLIMIT_FSIZE caps every file at its current size
(SIGXFSZ ignored), so the kernel answers EFBIG as a full disk answers ENOSPC.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from t5x_instruct.errors import StorageError, storage_failure_message

REPO = Path(__file__).resolve().parents[1]

_WRITE_UNTIL_FULL = """
import os, resource, signal, sys
from t5x_instruct.errors import StorageError
from t5x_instruct.training.metrics import MetricsWriter
writer = MetricsWriter(sys.argv[1])
for step in range(1, 4):
    writer.write(step, {"loss": 1.0 / step})
largest = max(os.path.getsize(os.path.join(d, f))
              for d, _, files in os.walk(sys.argv[1]) for f in files)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
try:
    for step in range(4, 200):  # one record may still fit in a file's slack
        writer.write(step, {"loss": 1.0 / step, "padding": 0.0})
except StorageError as exc:
    print("error:", exc, file=sys.stderr)
    writer.close()
    sys.exit(3)
sys.exit(0)
"""


def test_metrics_on_a_full_disk_is_one_line_without_thread_tracebacks(tmp_path) -> None:
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_UNTIL_FULL, os.fspath(run)],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]  # no thread or exit-hook tracebacks
    assert lines[0].startswith(f"error: writing metrics to {run} failed at step ")
    assert "[Errno 27] File too large; checkpoints already written are kept" in lines[0]
    kept = (run / "metrics.jsonl").read_text().splitlines()
    assert kept[:3] == [f'{{"step": {s}, "loss": {1.0 / s}}}' for s in (1, 2, 3)]


def test_storage_failure_message_names_the_file_and_keeps_bugs_as_tracebacks() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/a/summary.json")
    assert storage_failure_message(full) == (
        "writing /runs/a/summary.json failed: [Errno 28] No space left on device; checkpoints "
        "already written are kept (rerun the same command to resume from the latest one once "
        "there is space)."
    )
    wrapped = RuntimeError("export failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert storage_failure_message(wrapped).startswith(
        "writing to MODEL_DIR failed: [Errno 122] Disk quota exceeded;"
    )
    assert storage_failure_message(StorageError("saving step 4 failed\nmore")) == (
        "saving step 4 failed"
    )
    # A missing file or a bug is not the storage refusing: the traceback stays.
    assert storage_failure_message(FileNotFoundError(errno.ENOENT, "gone", "x")) is None
    assert storage_failure_message(KeyError("params")) is None
