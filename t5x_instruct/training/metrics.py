"""Metrics to the console, TensorBoard event files and ``metrics.jsonl``.

``model_dir`` may be local or an object store (:mod:`t5x_instruct.runtime.paths`). Objects
cannot be appended to, so there ``metrics.jsonl`` is rewritten whole at every write (a few
thousand short lines for a long run) and event files are re-uploaded at every flush.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_instruct.errors import RERUN_HINT, StorageError, first_line, storage_reason
from t5x_instruct.runtime import paths


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class MetricsWriter:
    """One JSON object per logged step, plus TensorBoard scalars under ``{model_dir}/tb``.

    On resume, records past the restored step are dropped from ``metrics.jsonl`` so the file
    reads as one run, not as the interrupted run followed by its replay. With
    ``enabled=False`` (every process but the first of a multi-host run) nothing is written
    and :meth:`write` only returns the record.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        resume_step: int = 0,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._file: Any = None
        self._tb = None
        if not enabled:
            return
        root = paths.makedirs(paths.resolve(model_dir, what="MODEL_DIR"))
        self.path = root / "metrics.jsonl"
        self._local = paths.is_local(root)
        self._lines = self._kept_lines(resume_step)
        if self._local:
            paths.write_text_atomic(self.path, "".join(self._lines))
            self._file = open(os.fspath(self.path), "a", encoding="utf-8")  # noqa: SIM115
        elif self._lines or self.path.exists():
            self.path.write_text("".join(self._lines), encoding="utf-8")
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            paths.register_tensorboard_writers()
            self._tb = SummaryWriter(logdir=os.fspath(root / "tb"))
            self._tb_errors = _report_event_write_errors(self._tb)

    def _kept_lines(self, step: int) -> list[str]:
        if not self.path.exists():
            return []
        lines = paths.read_text(self.path).splitlines(keepends=True)
        return [
            line if line.endswith("\n") else line + "\n"
            for line in lines
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        record = {"step": int(step), **{k: _to_float(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        try:
            self._append(json.dumps(record) + "\n")
            if self._tb is not None:
                for name, value in record.items():
                    if name != "step":
                        self._tb.add_scalar(name, value, global_step=step)
                self._tb.flush()
                if self._tb_errors:  # raised in tensorboardX's writer thread
                    raise self._tb_errors[0]
        except OSError as exc:  # disk full, quota...: one line, not a traceback per writer
            self._abandon()
            reason = storage_reason(exc) or first_line(f"{type(exc).__name__}: {exc}")
            raise StorageError(
                f"writing metrics to {self.path.parent} failed at step {step}: {reason}; "
                f"{RERUN_HINT}"
            ) from exc
        return record

    def _append(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self.path.write_text("".join(self._lines), encoding="utf-8")

    def _abandon(self) -> None:
        """Drop the writers after a storage failure without flushing again: tensorboardX's
        exit hook would otherwise retry the flush and print the same error once more."""
        for file_writer in (getattr(self._tb, "all_writers", None) or {}).values():
            events = file_writer.event_writer
            if not events._closed:
                events._worker.stop()  # drains its queue (failures recorded), then joins
                events._closed = True  # its close() and atexit hook: no-op, no second flush
        self._tb = None
        if self._file is not None:
            with contextlib.suppress(OSError):  # its buffered line is lost with the disk
                self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict[str, float]]:
    text = paths.read_text(paths.resolve(model_dir, what="MODEL_DIR") / "metrics.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _report_event_write_errors(writer: Any) -> list[OSError]:
    """Failed event writes of tensorboardX's background thread, kept for the caller.

    tensorboardX writes and flushes events from a daemon thread, where a full disk would end
    the thread with a traceback on stderr and the caller would never know; its writes and
    flushes now record the error instead, and :meth:`MetricsWriter.write` raises it.
    """
    errors: list[OSError] = []
    file_writer = writer._get_file_writer()  # created lazily otherwise, racing the thread
    events = file_writer.event_writer._ev_writer

    def guard(method: Any) -> Any:
        def guarded(*args: Any) -> Any:
            try:
                return method(*args)
            except OSError as exc:
                errors.append(exc)
                return None

        return guarded

    # Both run in the thread (write, and a flush every flush_secs) and flush also in ours.
    events._write_serialized_event = guard(events._write_serialized_event)
    events.flush = guard(events.flush)
    return errors


def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX's writer module tries ``import torch`` at import time, only to accept torch
    tensors as values; we log Python floats, and importing torch costs ~1 s and ~200 MiB per
    run. Blocking the import (``sys.modules['torch'] = None`` makes it raise ImportError,
    which tensorboardX catches) for the duration of that import avoids it.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter
