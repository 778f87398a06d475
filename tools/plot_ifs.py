"""Plot the Instruction Following Score of a run (metrics.jsonl) and where the stop fires.

  .venv/bin/python tools/plot_ifs.py --model_dir=/tmp/run --out=docs/ifs_quickstart.png

Reads ``<name>/ifs``, ``<name>/ifs_partial``, ``<name>/ifs_full`` and ``<name>/empty``
from ``MODEL_DIR/metrics.jsonl`` (``empty`` from the run's ``responses_<step>.jsonl`` files
when not logged) and draws them against the training step (bottom axis) and the
training examples seen (top axis: step x batch size x ``--examples_per_row``, the mean
number of examples a packed row holds; 1 for unpacked data). The plateau rule of the
plug-in (``--epsilon``, ``--patience``, ``--min_score``) is re-applied to the logged values
to mark the eval where early stopping fires (or would have fired, for a run logged with
``IFS_EARLY_STOP = False``). Prints the series as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t5x_instruct.plugins.ifs.plugin import plateaued

SERIES = (("ifs", "IFS (all)", "-", "o", "tab:blue"),
          ("ifs_partial", "IFS partial", "--", "s", "tab:orange"),
          ("ifs_full", "IFS full", ":", "^", "tab:green"),
          ("empty", "empty responses", "-.", "x", "tab:gray"))  # fmt: skip


def read_series(model_dir: str, name: str = "ifs") -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of the plug-in ``name``'s logged IFS values."""
    out: dict[str, list[tuple[int, float]]] = {metric: [] for metric, *_ in SERIES}
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            for metric in out:
                key = f"{name}/{metric}"
                if key in record:
                    out[metric].append((int(record["step"]), float(record[key])))
    logged = {step for step, _ in out["empty"]}
    for step, _ in out["ifs"]:  # evals from before the plug-in logged it: count the files
        path = os.path.join(model_dir, name, f"responses_{step}.jsonl")
        if step not in logged and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            empty = sum(not r["response"].strip() for r in rows) / max(len(rows), 1)
            out["empty"].append((step, empty))
    out["empty"].sort()
    if not out["ifs"]:
        raise SystemExit(
            f"{model_dir}/metrics.jsonl has no '{name}/ifs' values: was the run trained with "
            "gin/plugins/ifs.gin and train.eval_period > 0?"
        )
    return out


def stop_step(
    points: Sequence[tuple[int, float]], patience: int, epsilon: float, min_score: float = 0.0
) -> int | None:
    """The first logged step at which the plug-in's plateau rule fires."""
    values: list[float] = []
    for step, value in points:
        values.append(value)
        if plateaued(values, patience, epsilon, min_score):
            return step
    return None


def batch_size_from_config(model_dir: str) -> int | None:
    """``train.batch_size`` from the run's ``config.gin`` (what the loop wrote)."""
    path = os.path.join(model_dir, "config.gin")
    if not os.path.exists(path):
        return None
    text = Path(path).read_text(encoding="utf-8")
    match = re.search(r"^train\.batch_size = %?(\w+)", text, re.MULTILINE)
    if match and not match.group(1).isdigit():  # a macro: train.batch_size = %BATCH_SIZE
        match = re.search(rf"^{match.group(1)} = (\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def plot(
    series: dict[str, list[tuple[int, float]]],
    out: str,
    *,
    examples_per_step: float,
    stop: int | None,
    rule: str,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.axhspan(0.90, 0.95, color="tab:green", alpha=0.12, label="paper's plateau (0.90-0.95)")
    for metric, label, style, marker, color in SERIES:
        points = series[metric]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, marker=marker, markersize=4, label=label, color=color)
    if stop is not None:
        ax.axvline(stop, color="tab:red", linewidth=1.2, linestyle="--")
        ax.annotate(f"early stop fires: step {stop}\n({rule})", xy=(stop, 0.5),
                    xytext=(-6, 0), textcoords="offset points", color="tab:red",
                    fontsize=8, ha="right")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of responses")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    top = ax.secondary_xaxis(
        "top", functions=(lambda s: s * examples_per_step, lambda e: e / examples_per_step)
    )
    top.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k")
    top.set_xlabel("training examples seen")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def table(series: dict[str, list[tuple[int, float]]], examples_per_step: float) -> str:
    rows = ["| step | examples seen | IFS | IFS partial | IFS full | empty |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    lookup = {m: dict(points) for m, points in series.items()}
    for step, value in series["ifs"]:
        cells = [f"{lookup[m][step]:.3f}" if step in lookup[m] else "—"
                 for m in ("ifs_partial", "ifs_full", "empty")]  # fmt: skip
        rows.append(f"| {step} | {step * examples_per_step:,.0f} | {value:.3f} | "
                    + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", default=None, help="PNG path (default MODEL_DIR/ifs.png)")
    parser.add_argument("--name", default="ifs", help="the plug-in's name (metric prefix)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="default: train.batch_size from MODEL_DIR/config.gin")  # fmt: skip
    parser.add_argument("--examples_per_row", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--min_score", type=float, default=0.0)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)

    series = read_series(args.model_dir, args.name)
    batch_size = args.batch_size or batch_size_from_config(args.model_dir)
    if batch_size is None:
        raise SystemExit("No --batch_size given and no train.batch_size in MODEL_DIR/config.gin.")
    per_step = batch_size * args.examples_per_row
    stop = stop_step(series["ifs"], args.patience, args.epsilon, args.min_score)
    rule = f"gain < {args.epsilon:g} over {args.patience} evals"
    out = args.out or os.path.join(args.model_dir, "ifs.png")
    title = args.title or f"Instruction Following Score: {os.path.basename(args.model_dir)}"
    plot(series, out, examples_per_step=per_step, stop=stop, rule=rule, title=title)
    print(table(series, per_step))
    print(f"\nearly stop ({rule}): " + (f"step {stop}" if stop is not None else "never"))
    print(f"wrote {out}")
    return {"stop_step": stop, "out": out, "examples_per_step": per_step}


if __name__ == "__main__":
    main(sys.argv[1:])
