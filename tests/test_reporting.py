"""Eval reports over tasks with different metrics: per-metric group means, primary metrics.

Oracle: means computed by hand from the listed values."""

from __future__ import annotations

import math

import pytest

from t5x_instruct.training.evaluation import EvalResult
from t5x_instruct.training.reporting import flat_metrics, print_eval_table, summarise


def _result(name: str, group: str, **metrics: float) -> EvalResult:
    return EvalResult(name, group, dict(metrics), num_examples=4, samples=[("in", "out", "out")])


RESULTS = [
    _result("qa", "train_tasks", exact_match=0.5, f1=0.75),
    _result("summarize", "train_tasks", rouge1=0.4, rouge2=0.2, rougeL=0.3),
    _result("translate", "train_tasks", bleu=12.5),
    _result("pick_score_eval", "heldout_task", accuracy=0.25),
    _result("extract", "heldout_task", exact_match=1.0),
]


def test_group_means_are_per_metric_and_never_nan():
    summary = summarise(RESULTS)
    assert summary["means"] == {
        "train_tasks": {"exact_match": 0.5, "f1": 0.75, "rouge1": 0.4, "rouge2": 0.2,
                        "rougeL": 0.3, "bleu": 12.5},
        "heldout_task": {"accuracy": 0.25, "exact_match": 1.0},
    }  # fmt: skip
    # Only tasks that have exact match count towards it (T5X users' headline number).
    assert summary["mean_exact_match"] == {"train_tasks": 0.5, "heldout_task": 1.0}
    assert not any(math.isnan(v) for m in summary["means"].values() for v in m.values())
    primary = {name: entry["primary_metric"] for name, entry in summary["per_task"].items()}
    assert primary == {"qa": "exact_match", "summarize": "rouge1", "translate": "bleu",
                       "pick_score_eval": "accuracy", "extract": "exact_match"}  # fmt: skip
    flat = flat_metrics(summary)
    assert flat["eval/summarize/rougeL"] == 0.3
    assert flat["eval_mean/heldout_task/accuracy"] == 0.25
    assert not any(k.endswith(("/group", "/primary_metric", "/num_examples")) for k in flat)


def test_table_shows_each_task_by_its_primary_metric(capsys):
    print_eval_table(RESULTS)
    out = capsys.readouterr().out
    assert "translate" in out and "bleu" in out and "12.500" in out
    assert "mean (heldout_task)" in out and "accuracy" in out
    assert "nan" not in out


def test_a_task_without_metrics_has_no_primary_metric():
    result = _result("no_metrics", "train_tasks")
    assert result.primary_metric is None and math.isnan(result.primary_value)
    assert summarise([result])["means"] == {}
    assert result.exact_match != result.exact_match  # NaN, as before for such tasks
    assert pytest.approx(0.5) == RESULTS[0].primary_value
