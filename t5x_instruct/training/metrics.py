"""Metrics to the console, TensorBoard event files and ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class MetricsWriter:
    """One JSON object per logged step, plus TensorBoard scalars under ``{model_dir}/tb``.

    On resume, records past the restored step are dropped from ``metrics.jsonl`` so the file
    reads as one run, not as the interrupted run followed by its replay.
    """

    def __init__(self, model_dir: str, *, resume_step: int = 0, tensorboard: bool = True) -> None:
        os.makedirs(model_dir, exist_ok=True)
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=os.path.join(model_dir, "tb"))

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        record = {"step": int(step), **{k: _to_float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(name, value, global_step=step)
            self._tb.flush()
        return record

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict[str, float]]:
    path = os.path.join(model_dir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
