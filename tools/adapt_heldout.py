"""Adapt the quickstart model to the demo's held-out task: prompt tuning vs LoRA vs full.

Reproduces the table of docs/plugins.md (``make adapt-demo``):

  JAX_PLATFORMS=cpu .venv/bin/python tools/adapt_heldout.py \
      --base_dir=/tmp/t5x_instruct_quickstart --out_dir=/tmp/t5x_instruct_adapt

Trains the quickstart model first if ``--base_dir`` holds no checkpoint, then runs each
method from that checkpoint with the same steps, batch size and data
(``demo_adapt_extract_day``), and reports exact match on the held-out task's test split,
the mean over the training tasks (what the model retains), and trainable parameters. Runs
that already have a ``summary.json`` are not repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Learning rates: the usual orders of magnitude for each method with AdamW (not tuned here).
METHODS: dict[str, dict] = {
    "prompt_tuning": {
        "gin_files": ["gin/plugins/prompt_tuning.gin"],
        "bindings": ["learning_rate_schedule.base_learning_rate = 0.1"],
    },
    "lora": {
        "gin_files": ["gin/plugins/lora.gin"],
        "bindings": ["learning_rate_schedule.base_learning_rate = 3e-3"],
    },
    "full": {"gin_files": [], "bindings": ["learning_rate_schedule.base_learning_rate = 1e-3"]},
}


def _train(gin_files: list[str], bindings: list[str], log_path: Path) -> None:
    cmd = [sys.executable, "-m", "t5x_instruct.train"]
    cmd += [f"--gin_file={f}" for f in gin_files]
    cmd += [f"--gin.{b}" for b in bindings]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        sys.exit(f"training failed (exit {result.returncode}); see {log_path}")


def _row(name: str, summary: dict, heldout_task: str, seconds: float | None) -> dict:
    per_task = summary["eval"]["per_task"]
    means = summary["eval"]["mean_exact_match"]
    return {
        "method": name,
        "trainable_params": summary.get("trainable_params"),
        "heldout_task_em": per_task[heldout_task]["exact_match"],
        "train_tasks_em": means.get("train_tasks"),
        "heldout_templates_em": means.get("heldout_templates"),
        "seconds": seconds,
    }


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base_dir", default="/tmp/t5x_instruct_quickstart")
    parser.add_argument("--out_dir", default="/tmp/t5x_instruct_adapt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--gin", action="append", default=[], help="extra binding for all runs")
    parser.add_argument("--report", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import tasks.demo  # registers the demo tasks (TensorFlow is imported here only)

    heldout_task = tasks.demo.HELDOUT_TASK
    base = Path(args.base_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (base / "summary.json").exists() and not (base / "checkpoints").is_dir():
        print(f"No quickstart run at {base}: training it first.", flush=True)
        base.mkdir(parents=True, exist_ok=True)
        _train(["gin/runs/quickstart.gin"], [f"MODEL_DIR = '{base}'"], base / "train.log")
    rows = []
    if (base / "summary.json").exists():  # a finished quickstart run reports its own scores
        base_summary = json.loads((base / "summary.json").read_text())
        rows.append(_row("none (quickstart model)", base_summary, heldout_task, None))
    for name in args.methods.split(","):
        method = METHODS[name]
        run_dir = out / name
        if not (run_dir / "summary.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            _train(
                ["gin/runs/quickstart.gin", "gin/runs/adapt_heldout.gin", *method["gin_files"]],
                [
                    f"MODEL_DIR = '{run_dir}'",
                    f"INITIAL_CHECKPOINT_PATH = '{base}'",
                    f"TRAIN_STEPS = {args.steps}",
                    *method["bindings"],
                    *args.gin,
                ],
                run_dir / "train.log",
            )
            (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
        seconds_file = run_dir / "seconds.txt"
        seconds = float(seconds_file.read_text()) if seconds_file.exists() else None
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append(_row(name, summary, heldout_task, seconds))
    table = _markdown(rows)
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n", encoding="utf-8")
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| method | trainable parameters | held-out task (test) | training tasks (test) "
        "| held-out templates (test) | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = "—" if r["trainable_params"] is None else f"{r['trainable_params']:,}"
        secs = "—" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        lines.append(
            f"| {r['method']} | {params} | {r['heldout_task_em']:.3f} | "
            f"{r['train_tasks_em']:.3f} | {r['heldout_templates_em']:.3f} | {secs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
