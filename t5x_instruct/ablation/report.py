"""The sweep's results table: every variant's scores per eval group, seeds aggregated.

Read from files only (``sweep.json`` and each variant's ``summary.json``), so a report can
be made anywhere the run folders are, without TensorFlow. Groups, per run:

* ``held_in``: the variant's *training* tasks on held-out examples (``train_tasks`` eval
  tasks whose base task the variant trained on);
* ``unseen_tasks``: ``train_tasks`` eval tasks of task types this variant left out
  (leave-one-cluster-out / fewer task types make them held-out tasks);
* ``heldout_templates``: unseen phrasings of the variant's training tasks;
* ``heldout_task``: the task module's held-out tasks;
* ``heldout_templates_common``: held-out templates of the task types *every* variant trained
  on (only when the variants' training tasks differ): the like-for-like comparison when an
  axis changes which tasks are trained.

A task split by template scores the mean over its templates (each has the same examples);
for held-out tasks the report also gives T0's median and interquartile range over templates.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5x_instruct.ablation.resolve import match_base
from t5x_instruct.ablation.runner import MANIFEST, is_finished, variant_seconds
from t5x_instruct.errors import UserInputError

GROUPS: tuple[tuple[str, str], ...] = (
    ("held_in", "held-in"),
    ("heldout_templates", "held-out templates"),
    ("heldout_templates_common", "held-out templates, common tasks"),
    ("heldout_task", "held-out task"),
    ("unseen_tasks", "unseen task types"),
)


@dataclasses.dataclass
class RunResult:
    variant: str
    labels: dict[str, str]
    is_base: bool
    finished: bool
    seconds: float | None = None
    groups: dict[str, float | None] = dataclasses.field(default_factory=dict)
    parents: dict[str, float] = dataclasses.field(default_factory=dict)  # eval task -> score
    parent_groups: dict[str, str] = dataclasses.field(default_factory=dict)
    parent_bases: dict[str, str | None] = dataclasses.field(default_factory=dict)
    templates: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    metric: str = ""

    def template_stats(self, parent: str) -> tuple[float, float] | None:
        """(median, interquartile range) over a task's templates (numpy's linear rule)."""
        scores = self.templates.get(parent)
        if not scores:
            return None
        q1, median, q3 = np.percentile(scores, [25, 50, 75])
        return float(median), float(q3 - q1)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_result(record: dict[str, Any], run_dir: Path, metric: str | None = None) -> RunResult:
    """Scores of one variant from its ``summary.json`` (``finished=False`` if there is none)."""
    result = RunResult(record["name"], record["labels"], record["is_base"], is_finished(run_dir))
    result.seconds = variant_seconds(run_dir)
    if not result.finished:
        return result
    per_task = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["eval"][
        "per_task"
    ]
    trained = {c["base"] for c in record["components"]}
    entries = record["eval_tasks"] or [  # no eval set in the sweep: the run's own eval tasks
        {
            "task": t,
            "parent": t,
            "template": None,
            "group": v.get("group", "train_tasks"),
            "base": match_base(t, record["universe"]),
        }
        for t, v in per_task.items()
    ]
    by_parent: dict[str, list[tuple[int | None, float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for entry in entries:
        scores = per_task.get(entry["task"])
        if scores is None:
            continue
        name = metric or scores.get("primary_metric")
        if name not in scores:
            raise UserInputError(
                f"{run_dir / 'summary.json'}: task {entry['task']!r} has no metric {name!r} "
                f"(it has {sorted(k for k in scores if k not in ('group', 'primary_metric'))})."
            )
        result.metric = result.metric or name
        by_parent.setdefault(entry["parent"], []).append((entry["template"], float(scores[name])))
        info[entry["parent"]] = entry
    members: dict[str, list[float]] = {g: [] for g, _ in GROUPS}
    for parent, scored in by_parent.items():
        score = float(np.mean([s for _, s in scored]))
        entry = info[parent]
        result.parents[parent] = score
        if any(t is not None for t, _ in scored):
            result.templates[parent] = [s for _, s in sorted(scored, key=lambda x: x[0])]
        group = entry["group"]
        base_trained = entry["base"] in trained
        if group == "train_tasks":
            group = "held_in" if base_trained else "unseen_tasks"
        elif group == "heldout_templates" and not base_trained:
            group = "unseen_tasks"  # phrasings of a task type the variant never saw
        result.parent_groups[parent] = group
        result.parent_bases[parent] = entry["base"]
        members[group].append(score)
    result.groups = {g: _mean(v) for g, v in members.items()}
    return result


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise UserInputError(
            f"{path} does not exist: run `tools/ablate.py run` (or `commands`) for this sweep "
            "first, or pass the sweep's --out_dir."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def common_tasks(manifest: dict[str, Any]) -> list[str]:
    """Base tasks every variant trains on, when the variants' task sets differ (else [])."""
    sets = [[c["base"] for c in v["components"]] for v in manifest["variants"]]
    if not sets or all(set(s) == set(sets[0]) for s in sets):
        return []
    return [b for b in sets[0] if all(b in s for s in sets)]


def collect(out_dir: Path, metric: str | None = None) -> tuple[dict[str, Any], list[RunResult]]:
    manifest = load_manifest(out_dir)
    runs = [run_result(v, Path(out_dir) / v["name"], metric) for v in manifest["variants"]]
    common = set(common_tasks(manifest))
    for r in runs:
        scores = [
            score
            for p, score in r.parents.items()
            if r.parent_groups[p] == "heldout_templates" and r.parent_bases[p] in common
        ]
        if r.finished:
            r.groups["heldout_templates_common"] = _mean(scores)
    return manifest, runs


@dataclasses.dataclass
class ConfigRow:
    """One setting of the non-seed axes with its runs (one per seed)."""

    config: dict[str, str]
    runs: list[RunResult]
    is_base: bool

    @property
    def finished(self) -> list[RunResult]:
        return [r for r in self.runs if r.finished]

    def values(self, group: str) -> list[float]:
        return [r.groups[group] for r in self.finished if r.groups.get(group) is not None]

    def stat(self, group: str) -> tuple[float, float, int] | None:
        """(mean, sample standard deviation (0 for one seed), number of seeds)."""
        v = self.values(group)
        if not v:
            return None
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        return float(np.mean(v)), sd, len(v)

    def template_stat(self, parent: str) -> tuple[float, float] | None:
        """Seed means of the median and IQR over templates of ``parent``."""
        stats = [s for r in self.finished if (s := r.template_stats(parent)) is not None]
        if not stats:
            return None
        return float(np.mean([m for m, _ in stats])), float(np.mean([q for _, q in stats]))

    def parent_mean(self, parent: str, group: str | None = None) -> float | None:
        """Seed mean of one eval task (only runs where it counts in ``group``, if given)."""
        return _mean(
            [
                r.parents[parent]
                for r in self.finished
                if parent in r.parents and group in (None, r.parent_groups[parent])
            ]
        )

    @property
    def seconds(self) -> float | None:
        return _mean([r.seconds for r in self.finished if r.seconds is not None])


def config_rows(runs: Sequence[RunResult]) -> list[ConfigRow]:
    rows: dict[tuple, ConfigRow] = {}
    for r in runs:
        config = {k: v for k, v in r.labels.items() if k != "seed"}
        key = tuple(config.items())
        if key not in rows:
            rows[key] = ConfigRow(config, [], r.is_base)
        rows[key].runs.append(r)
    return list(rows.values())


def _present_groups(rows: Sequence[ConfigRow]) -> list[tuple[str, str]]:
    return [(g, title) for g, title in GROUPS if any(row.stat(g) for row in rows)]


def _heldout_parents(runs: Sequence[RunResult]) -> list[str]:
    out: list[str] = []
    for r in runs:
        for parent, group in r.parent_groups.items():
            if group == "heldout_task" and parent in r.templates and parent not in out:
                out.append(parent)
    return out


def _fmt(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "—"
    mean, sd, n = stat
    return f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}"


def _label(config: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items()) or "base"


def markdown_table(manifest: dict[str, Any], runs: Sequence[RunResult]) -> str:
    """The results table: seed mean ± sd per eval group, difference to the base variant,
    T0-style median [IQR] over templates per held-out task, and wall time."""
    rows = config_rows(runs)
    base = next((row for row in rows if row.is_base), None)
    groups = _present_groups(rows)
    parents = _heldout_parents(runs)
    metric = next((r.metric for r in runs if r.metric), "score").replace("_", " ")
    header = ["variant", "seeds"]
    for _, title in groups:
        header.append(title)
        if base is not None:
            header.append("Δ base")
    header += [f"{p}: median [IQR] over templates" for p in parents]
    header.append("train wall time")
    common = common_tasks(manifest)
    lines = [
        f"Metric: {metric} (test split); mean ± sample sd over seeds; Δ base: difference of "
        "seed means to the base variant"
        + (f" ({_label(base.config)})" if base and base.config else "")
        + "."
        + (f" Common tasks: {', '.join(common)}." if common else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            _label(row.config) + (" (base)" if row is base and row.config else ""),
            f"{len(row.finished)}/{len(row.runs)}",
        ]
        for g, _ in groups:
            stat = row.stat(g)
            cells.append(_fmt(stat))
            if base is not None:
                ref = base.stat(g)
                if row is base:
                    cells.append("—")
                else:
                    cells.append("—" if stat is None or ref is None else f"{stat[0] - ref[0]:+.3f}")
        for p in parents:
            ts = row.template_stat(p)
            cells.append("—" if ts is None else f"{ts[0]:.3f} [{ts[1]:.3f}]")
        secs = row.seconds
        cells.append("—" if secs is None else f"{secs / 60:.1f} min")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: Sequence[RunResult]) -> None:
    """``results.csv``: one row per configuration (seed statistics, Δ base, per-task means)."""
    rows = config_rows(runs)
    base = next((row for row in rows if row.is_base), None)
    axes = list(dict.fromkeys(k for row in rows for k in row.config))
    parents = list(dict.fromkeys(p for r in runs for p in r.parents))
    heldout = _heldout_parents(runs)
    fields = [*axes, "is_base", "seeds_finished", "seeds"]
    for g, _ in GROUPS:
        fields += [f"{g}_mean", f"{g}_sd", f"{g}_min", f"{g}_max", f"{g}_delta_base"]
    for p in heldout:
        fields += [f"{p}_template_median", f"{p}_template_iqr"]
    fields += [f"task:{p}" for p in parents] + ["train_seconds_mean"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            out: dict[str, Any] = {
                **row.config,
                "is_base": row.is_base,
                "seeds_finished": len(row.finished),
                "seeds": len(row.runs),
            }
            for g, _ in GROUPS:
                v = row.values(g)
                stat = row.stat(g)
                ref = base.stat(g) if base else None
                out.update(
                    {
                        f"{g}_mean": _num(stat[0] if stat else None),
                        f"{g}_sd": _num(stat[1] if stat else None),
                        f"{g}_min": _num(min(v) if v else None),
                        f"{g}_max": _num(max(v) if v else None),
                        f"{g}_delta_base": _num(stat[0] - ref[0] if stat and ref else None),
                    }
                )
            for p in heldout:
                ts = row.template_stat(p)
                out[f"{p}_template_median"] = _num(ts[0] if ts else None)
                out[f"{p}_template_iqr"] = _num(ts[1] if ts else None)
            for p in parents:
                out[f"task:{p}"] = _num(row.parent_mean(p))
            out["train_seconds_mean"] = _num(row.seconds)
            writer.writerow(out)


def write_runs_csv(path: Path, runs: Sequence[RunResult]) -> None:
    """``runs.csv``: one row per run (variant and seed), per-group and per-task scores."""
    axes = list(dict.fromkeys(k for r in runs for k in r.labels))
    parents = list(dict.fromkeys(p for r in runs for p in r.parents))
    fields = ["variant", *axes, "finished", *(g for g, _ in GROUPS)]
    fields += [f"task:{p}" for p in parents] + ["train_seconds"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in runs:
            out: dict[str, Any] = {"variant": r.variant, **r.labels, "finished": r.finished}
            out.update({g: _num(r.groups.get(g)) for g, _ in GROUPS})
            out.update({f"task:{p}": _num(r.parents.get(p)) for p in parents})
            out["train_seconds"] = _num(r.seconds)
            writer.writerow(out)


def _num(value: float | None) -> str:
    return (
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
    )


def write_report(
    out_dir: Path, *, plots: bool = True, metric: str | None = None
) -> dict[str, Path]:
    """Writes ``results.md``, ``results.csv``, ``runs.csv`` (and PNG plots) to ``out_dir``."""
    out_dir = Path(out_dir)
    manifest, runs = collect(out_dir, metric)
    paths = {
        "markdown": out_dir / "results.md",
        "csv": out_dir / "results.csv",
        "runs_csv": out_dir / "runs.csv",
    }
    paths["markdown"].write_text(markdown_table(manifest, runs), encoding="utf-8")
    write_csv(paths["csv"], runs)
    write_runs_csv(paths["runs_csv"], runs)
    if plots and any(r.finished for r in runs):
        from t5x_instruct.ablation.plots import plot_per_task, plot_score_vs_axes

        try:
            import matplotlib  # noqa: F401  (optional: only the plots need it)
        except ImportError:
            print(
                "No plots: matplotlib is not installed (pip install matplotlib).", file=sys.stderr
            )
            return paths
        for path in plot_score_vs_axes(manifest, runs, out_dir):
            paths[path.stem] = path
        paths["per_task"] = plot_per_task(runs, out_dir / "per_task.png")
    return paths
