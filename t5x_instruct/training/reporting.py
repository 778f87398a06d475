"""Evaluation results for people: the per-task table, group means and sample generations.

Tasks measure different things (exact match, ROUGE, BLEU, rank-classification accuracy), so
each task is shown by its *primary* metric (the first metric of its first metric fn) and
group means are taken per metric over the tasks that report it: a task without exact match
never turns a group's mean exact match into NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from t5x_instruct.training.evaluation import EvalResult


def group_means(results: Sequence[EvalResult]) -> dict[str, dict[str, float]]:
    """``{group: {metric: mean over the group's tasks that report metric}}``."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in results:
        for metric, value in r.metrics.items():
            values.setdefault(r.group, {}).setdefault(metric, []).append(float(value))
    return {
        group: {metric: float(np.mean(v)) for metric, v in metrics.items()}
        for group, metrics in values.items()
    }


def summarise(results: Sequence[EvalResult]) -> dict[str, Any]:
    """Per-task metrics (with the primary metric's name), per-group means of every metric,
    and ``mean_exact_match`` per group over the tasks that have exact match."""
    per_task = {
        r.name: {
            "group": r.group,
            "primary_metric": r.primary_metric,
            **r.metrics,
            "num_examples": r.num_examples,
        }
        for r in results
    }
    means = group_means(results)
    return {
        "per_task": per_task,
        "means": means,
        "mean_exact_match": {
            group: m["exact_match"] for group, m in means.items() if "exact_match" in m
        },
    }


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """A :func:`summarise` result as scalars: ``eval/<task>/<metric>`` and
    ``eval_mean/<group>/<metric>`` (what metrics.jsonl and TensorBoard hold)."""
    out: dict[str, float] = {}
    for task, entry in summary["per_task"].items():
        for metric, value in entry.items():
            if metric not in ("group", "primary_metric", "num_examples"):
                out[f"eval/{task}/{metric}"] = float(value)
    for group, metrics in summary["means"].items():
        for metric, value in metrics.items():
            out[f"eval_mean/{group}/{metric}"] = float(value)
    return out


def print_eval_table(results: Sequence[EvalResult], *, samples_per_group: int = 2) -> None:
    """A per-task table (primary metric) grouped by train tasks / held-out templates /
    held-out task, then each group's mean of every metric and a few samples."""
    width = max([len(r.name) for r in results] + [10])
    print(f"\n{'task':<{width}}  {'group':<18} {'metric':<14} {'value':>8} {'n':>5}")
    print("-" * (width + 50))
    for r in sorted(results, key=lambda r: (r.group, r.name)):
        metric = r.primary_metric or "-"
        print(
            f"{r.name:<{width}}  {r.group:<18} {metric:<14} {r.primary_value:>8.3f} "
            f"{r.num_examples:>5}"
        )
    print("-" * (width + 50))
    for group, metrics in group_means(results).items():
        for metric, value in metrics.items():
            label = f"mean ({group})"
            print(f"{label:<{width + 20}} {metric:<14} {value:>8.3f}")
    print("\nSample generations:")
    shown: dict[str, int] = {}
    for r in results:
        for inp, pred, target in r.samples:
            if shown.get(r.group, 0) >= samples_per_group:
                break
            shown[r.group] = shown.get(r.group, 0) + 1
            mark = "ok " if " ".join(pred.split()) == " ".join(target.split()) else "bad"
            print(f"  [{mark}] ({r.name}) {inp}\n        -> {pred!r} (target {target!r})")
