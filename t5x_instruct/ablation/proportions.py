"""Effective sampling proportions of a mixture from its sources, rates, caps and formats.

The arithmetic (SeqIO samples each task with probability ``rate / sum of rates``):

* a task's rate is ``1`` (``rate: equal``) or ``min(n, cap)`` (``rate: examples``: T5's
  examples-proportional mixing with Flan's per-task ceiling; no cap means ``n``), times the
  product of every multiplier that names it (directly, by cluster or by source);
* ``formats`` split a task's rate over its format variants in the given ratio (Flan splits a
  data set's rate evenly over its zero-shot / few-shot / options variants);
* sources without weights mix all tasks by rate; sources *with* weights are a collection
  (Flan 2022): source ``s`` gets ``w_s / sum(w)`` of the samples, shared by its tasks in
  proportion to their rates. Sources left empty drop out of the weight sum.

Pure Python on plain numbers, so the numbers shown before a run are checkable by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence


class ZeroRateError(ValueError):
    """The rates (or source weights) of a mixture sum to zero."""


@dataclasses.dataclass(frozen=True)
class SourceTasks:
    name: str
    tasks: tuple[str, ...]
    weight: float | None = None


@dataclasses.dataclass(frozen=True)
class Component:
    """One task of a resolved mixture with its rate and sampling proportion."""

    source: str
    base: str  # the task as the sweep names it (before format / template variants)
    task: str  # the registered task sampled (format variant applied)
    format: str | None
    num_examples: int | None
    cap: int | None
    multiplier: float
    rate: float  # the task's share of its base rate (after the format split)
    proportion: float  # probability that a training example comes from this task


def task_rate(
    rate: str, num_examples: int | None, cap: int | None, multiplier: float, base: str
) -> float:
    """``1`` or ``min(n, cap)``, times ``multiplier``."""
    if rate == "equal":
        return float(multiplier)
    if num_examples is None:
        raise ValueError(f"Task {base!r}: examples-proportional rates need its size.")
    n = num_examples if cap is None else min(num_examples, cap)
    return float(n) * float(multiplier)


def effective_proportions(
    sources: Sequence[SourceTasks],
    *,
    rate: str = "examples",
    sizes: Mapping[str, int] | None = None,
    cap: int | None = None,
    task_caps: Mapping[str, int] | None = None,
    multipliers: Mapping[str, float] | None = None,
    formats: Mapping[str, float] | None = None,
    format_task: Callable[[str, str], str] | None = None,
) -> list[Component]:
    """Components of the mixture in source order, their proportions summing to one.

    ``multipliers`` and ``task_caps`` are per base task (already expanded from clusters and
    sources); ``format_task(base, format)`` names a base task's format variant.
    """
    if rate not in ("equal", "examples"):
        raise ValueError(f"rate must be 'equal' or 'examples', got {rate!r}.")
    sizes, task_caps, multipliers = sizes or {}, task_caps or {}, multipliers or {}
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise ValueError("Give every source a weight or none of them.")
    fmt_items = [(f, float(q)) for f, q in (formats or {}).items() if q > 0]
    fmt_total = sum(q for _, q in fmt_items)
    if formats is not None and fmt_total <= 0:
        raise ZeroRateError(f"The format ratios {dict(formats)} sum to zero.")

    rows: list[tuple[SourceTasks, dict]] = []
    for source in sources:
        for base in source.tasks:
            cap_t = task_caps.get(base, cap)
            mult = float(multipliers.get(base, 1.0))
            n = sizes.get(base)
            base_rate = task_rate(rate, n, cap_t, mult, base)
            variants = (
                [
                    (format_task(base, f) if format_task else f"{base}_{f}", f, q / fmt_total)
                    for f, q in fmt_items
                ]
                if formats is not None
                else [(base, None, 1.0)]
            )
            for task, fmt, share in variants:
                rows.append(
                    (
                        source,
                        dict(
                            source=source.name,
                            base=base,
                            task=task,
                            format=fmt,
                            num_examples=n,
                            cap=cap_t,
                            multiplier=mult,
                            rate=base_rate * share,
                        ),
                    )
                )
    source_totals: dict[str, float] = {}
    for source, row in rows:
        source_totals[source.name] = source_totals.get(source.name, 0.0) + row["rate"]
    if sum(source_totals.values()) <= 0:
        raise ZeroRateError("The task rates sum to zero: no task could ever be sampled.")
    if all(weighted) and sources:
        live = {s.name: float(s.weight) for s in sources if source_totals.get(s.name, 0.0) > 0}
        weight_total = sum(live.values())
        if weight_total <= 0:
            raise ZeroRateError("The weights of the sources that have tasks sum to zero.")
        share = {
            name: live[name] / weight_total / source_totals[name] if name in live else 0.0
            for name in source_totals
        }
    else:
        total = sum(source_totals.values())
        share = {name: 1.0 / total for name in source_totals}
    return [Component(**row, proportion=row["rate"] * share[row["source"]]) for _, row in rows]


def proportions_by(components: Sequence[Component], key: str) -> dict[str, float]:
    """Sum of proportions per ``source``, ``base`` or ``format`` (first-seen order)."""
    out: dict[str, float] = {}
    for c in components:
        name = getattr(c, key)
        out[str(name)] = out.get(str(name), 0.0) + c.proportion
    return out
