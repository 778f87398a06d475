"""Evaluation results for people: the per-task table, group means and sample generations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from t5x_instruct.training.evaluation import EvalResult


def summarise(results: Sequence[EvalResult]) -> dict[str, Any]:
    per_task = {
        r.name: {"group": r.group, **r.metrics, "num_examples": r.num_examples} for r in results
    }
    groups: dict[str, list[float]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r.exact_match)
    return {
        "per_task": per_task,
        "mean_exact_match": {g: float(np.mean(v)) for g, v in groups.items()},
    }


def print_eval_table(results: Sequence[EvalResult], *, samples_per_group: int = 2) -> None:
    """A per-task table grouped by train tasks / held-out templates / held-out task."""
    width = max([len(r.name) for r in results] + [10])
    print(f"\n{'task':<{width}}  {'group':<18} {'exact_match':>11} {'n':>5}")
    print("-" * (width + 38))
    for r in sorted(results, key=lambda r: (r.group, r.name)):
        print(f"{r.name:<{width}}  {r.group:<18} {r.exact_match:>11.3f} {r.num_examples:>5}")
    print("-" * (width + 38))
    for group, summary in summarise(results)["mean_exact_match"].items():
        print(f"{'mean (' + group + ')':<{width + 20}} {summary:>11.3f}")
    print("\nSample generations:")
    shown: dict[str, int] = {}
    for r in results:
        for inp, pred, target in r.samples:
            if shown.get(r.group, 0) >= samples_per_group:
                break
            shown[r.group] = shown.get(r.group, 0) + 1
            mark = "ok " if " ".join(pred.split()) == " ".join(target.split()) else "bad"
            print(f"  [{mark}] ({r.name}) {inp}\n        -> {pred!r} (target {target!r})")
