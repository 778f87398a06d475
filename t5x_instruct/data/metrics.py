"""Postprocessing and metrics shared by instruction tasks (SeqIO postprocess and metric fns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def strip_whitespace(output: str | bytes, example: Any = None, is_target: bool = False) -> str:
    """Decoded text with surrounding whitespace removed and inner runs collapsed to one space.

    Accepts bytes because SeqIO hands pretokenized targets over as ``bytes``.
    """
    del example, is_target
    if isinstance(output, bytes):
        output = output.decode("utf-8")
    return " ".join(output.split())


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Fraction (0..1) of predictions equal to their target, as a SeqIO metric fn."""
    if len(targets) != len(predictions):
        raise ValueError(f"exact_match: {len(targets)} targets but {len(predictions)} predictions.")
    if not targets:
        return {"exact_match": 0.0}
    hits = sum(t == p for t, p in zip(targets, predictions, strict=True))
    return {"exact_match": hits / len(targets)}
