"""PNG plots of a sweep: score against each swept axis per eval group, and per-task bars.

matplotlib is imported when a plot is drawn (it is a test/optional dependency), with the
non-interactive Agg backend so that plots render on machines without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5x_instruct.ablation.report import GROUPS, RunResult, config_rows


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_vs_axes(
    manifest: dict[str, Any], runs: Sequence[RunResult], out_dir: Path
) -> list[Path]:
    """``score_vs_<axis>.png`` for every non-seed axis with several values: one panel per
    eval group; x = the axis' values in file order; one line per setting of the other axes
    (in ``one_at_a_time`` sweeps: the others at their base value). Error bars: seed sd;
    dots: single seeds."""
    plt = _pyplot()
    rows = config_rows(runs)
    groups = [(g, t) for g, t in GROUPS if any(row.values(g) for row in rows)]
    paths = []
    for axis in manifest["axes"]:
        setting, labels = axis["setting"], axis["labels"]
        if setting == "seed" or len(labels) < 2 or not groups:
            continue
        lines: dict[tuple, dict[str, Any]] = {}
        for row in rows:
            others = tuple((k, v) for k, v in row.config.items() if k != setting)
            if manifest["mode"] == "one_at_a_time" and any(
                v != manifest["base"].get(k) for k, v in others
            ):
                continue
            lines.setdefault(others, {})[row.config.get(setting)] = row
        shown = [row for by_label in lines.values() for row in by_label.values()]
        axis_groups = [(g, t) for g, t in groups if any(row.stat(g) for row in shown)]
        if not axis_groups:
            continue
        ncols = min(3, len(axis_groups))
        nrows = -(-len(axis_groups) // ncols)
        fig, panels = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
        for panel in panels.flat[len(axis_groups) :]:
            panel.set_visible(False)
        for panel, (group, title) in zip(panels.flat, axis_groups):
            for others, by_label in lines.items():
                xs, means, sds, dots = [], [], [], []
                for i, label in enumerate(labels):
                    row = by_label.get(label)
                    stat = row.stat(group) if row else None
                    if stat is None:
                        continue
                    xs.append(i)
                    means.append(stat[0])
                    sds.append(stat[1])
                    dots += [(i, v) for v in row.values(group)]
                if not xs:
                    continue
                name = ", ".join(f"{k}={v}" for k, v in others) or setting
                panel.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=name)
                if dots:
                    panel.scatter(*zip(*dots), s=10, color="gray", alpha=0.6, zorder=3)
            panel.set_xticks(range(len(labels)), labels)
            panel.set_xlabel(setting)
            panel.set_title(title)
            panel.set_ylim(-0.02, 1.02)
            panel.grid(alpha=0.3)
        for row_panels in panels:
            row_panels[0].set_ylabel(next((r.metric for r in runs if r.metric), "score"))
        if len(lines) > 1:
            panels.flat[0].legend(fontsize=7)
        fig.suptitle(f"{manifest['sweep']}: score vs {setting}")
        fig.tight_layout()
        path = out_dir / f"score_vs_{setting}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_per_task(runs: Sequence[RunResult], path: Path) -> Path:
    """Grouped bars: each eval task (template-split tasks: mean over templates) per
    configuration (seed mean), one panel per eval group; a task counts in a configuration's
    panel only where it belongs to that group (a type the variant did not train on is in
    "unseen task types", not "held-in")."""
    plt = _pyplot()
    rows = config_rows(runs)
    panels_spec = []
    for group, title in GROUPS:
        parents = list(
            dict.fromkeys(p for r in runs for p, g in r.parent_groups.items() if g == group)
        )
        if parents:
            panels_spec.append((group, title, parents))
    fig, axes = plt.subplots(
        len(panels_spec), 1, figsize=(12, 3.2 * len(panels_spec)), squeeze=False
    )
    width = 0.8 / max(len(rows), 1)
    for panel, (group, title, parents) in zip(axes[:, 0], panels_spec):
        short = _short_names(parents)
        for j, row in enumerate(rows):
            values = [row.parent_mean(p, group) for p in parents]
            heights = [np.nan if v is None else v for v in values]
            label = ", ".join(f"{k}={v}" for k, v in row.config.items()) or "base"
            panel.bar(
                np.arange(len(parents)) + j * width - 0.4 + width / 2, heights, width, label=label
            )
        panel.set_xticks(range(len(parents)), short, rotation=30, ha="right", fontsize=8)
        panel.set_title(title)
        panel.set_ylim(0, 1.02)
        panel.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", fontsize=8, ncol=min(3, len(rows)))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight() * -(-len(rows) // 3)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short_names(names: Sequence[str]) -> list[str]:
    """Task names without their shared ``prefix_``; ``_heldout_templates`` is dropped when
    every name has it, else written ``(held-out tpl)``."""
    tail = "_heldout_templates"
    if all(n.endswith(tail) for n in names):
        out = [n.removesuffix(tail) for n in names]
    else:
        out = [n.removesuffix(tail) + " (held-out tpl)" if n.endswith(tail) else n for n in names]
    prefix = out[0].split("_", 1)[0] + "_" if out and "_" in out[0] else ""
    if prefix and all(n.startswith(prefix) for n in out):
        out = [n[len(prefix) :] for n in out]
    return out
