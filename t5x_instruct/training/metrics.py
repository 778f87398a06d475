"""Metrics to the console, TensorBoard event files and ``metrics.jsonl``.

``model_dir`` may be local or an object store (:mod:`t5x_instruct.runtime.paths`). Objects
cannot be appended to, so there ``metrics.jsonl`` is rewritten whole at every write (a few
thousand short lines for a long run) and event files are re-uploaded at every flush.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

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
        line = json.dumps(record) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self.path.write_text("".join(self._lines), encoding="utf-8")
        if self._tb is not None:
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(name, value, global_step=step)
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict[str, float]]:
    text = paths.read_text(paths.resolve(model_dir, what="MODEL_DIR") / "metrics.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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
