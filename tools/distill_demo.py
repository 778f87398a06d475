"""Distil the quickstart model into a smaller T5: CE alone vs each KD loss vs on-policy.

Reproduces the table of docs/distillation.md (``make distill-demo``):

  JAX_PLATFORMS=cpu .venv/bin/python tools/distill_demo.py \
      --teacher_dir=/tmp/t5x_instruct_quickstart --out_dir=/tmp/t5x_instruct_distill

Trains the quickstart model (the teacher) first if ``--teacher_dir`` holds no run. Every
student group then trains the same smaller T5 (``STUDENT``: emb 64, the quickstart's other
shapes) from scratch for the same steps on the same batches (``demo_instructions``,
unpacked, as on-policy sampling needs), and is evaluated like the quickstart (exact match on
the test split: held-out examples of the training tasks, held-out templates, the held-out
task). ``offline_topk`` first writes the teacher's top-k store and ``seqkd`` the teacher's
greedy outputs as a JSONL task. Groups with a ``summary.json`` are not rerun.
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
LENGTHS = {"inputs": 48, "targets": 8}

# The student: the quickstart model at half width (its other shapes unchanged).
STUDENT = [
    "T5Config.emb_dim = 64",
    "T5Config.num_heads = 4",
    "T5Config.head_dim = 16",
    "T5Config.mlp_dim = 128",
]
KD = ["gin/plugins/distillation.gin"]

# name -> (extra gin files, bindings); every KD group uses kd_weight 0.5 and tau 1.
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "ce": ([], []),
    "forward_kl": (KD, ["KD_DIVERGENCE = 'forward_kl'"]),
    "reverse_kl": (KD, ["KD_DIVERGENCE = 'reverse_kl'"]),
    "jsd_0.5": (KD, ["KD_DIVERGENCE = 'jsd'", "KD_BETA = 0.5"]),
    "skew_kl_0.1": (KD, ["KD_DIVERGENCE = 'skew_kl'", "KD_ALPHA = 0.1"]),
    "skew_reverse_kl_0.1": (KD, ["KD_DIVERGENCE = 'skew_reverse_kl'", "KD_ALPHA = 0.1"]),
    "on_policy_jsd_0.5": (
        KD,
        [
            "KD_DIVERGENCE = 'jsd'",
            "KD_BETA = 0.5",
            "ON_POLICY_FRACTION = 0.5",
            f"Distillation.on_policy_max_length = {LENGTHS['targets']}",
        ],
    ),
    "offline_topk16": (KD, ["KD_DIVERGENCE = 'forward_kl'"]),  # + the store, see below
    "seqkd": ([], []),  # + the teacher-decoded task, see below
}
DEFAULT_GROUPS = ",".join(GROUPS)


def _run(cmd: list[str], log_path: Path) -> None:
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        sys.exit(f"failed (exit {result.returncode}); see {log_path}")


def _train(gin_files: list[str], bindings: list[str], log_path: Path) -> None:
    cmd = [sys.executable, "-m", "t5x_instruct.train"]
    cmd += [f"--gin_file={f}" for f in gin_files]
    cmd += [f"--gin.{b}" for b in bindings]
    _run(cmd, log_path)


def _teacher_data(group: str, teacher: Path, out: Path) -> tuple[list[str], list[str]]:
    """Extra gin files / bindings of the groups that need offline teacher data (made once)."""
    tool_args = [
        "--gin_file=gin/runs/quickstart.gin", f"--teacher_checkpoint={teacher}",
        "--task=demo_instructions", "--split=train",
        f"--inputs_length={LENGTHS['inputs']}", f"--targets_length={LENGTHS['targets']}",
    ]  # fmt: skip
    if group.startswith("offline_topk"):
        store = out / "teacher_topk16"
        if (
            not (store / "manifest.json").exists()
            or '"complete": true' not in (store / "manifest.json").read_text()
        ):
            _run([sys.executable, "tools/teacher_topk.py", *tool_args, "--k=16",
                  f"--out_dir={store}"], out / "teacher_topk.log")  # fmt: skip
        return [], [
            f"Distillation.topk_dir = '{store}'",
            "Distillation.teacher_config = None",
            "Distillation.teacher_checkpoint = None",
        ]
    if group == "seqkd":
        data = out / "demo_seqkd.jsonl"
        if not Path(f"{data}.gin").exists():
            _run([sys.executable, "tools/distill_sequences.py", *tool_args, f"--out={data}"],
                 out / "distill_sequences.log")  # fmt: skip
        return [f"{data}.gin"], []
    return [], []


def _row(name: str, summary: dict, seconds: float | None) -> dict:
    means = summary["eval"]["mean_exact_match"]
    return {
        "group": name,
        "params": summary.get("params"),
        "train_tasks": means.get("train_tasks"),
        "heldout_templates": means.get("heldout_templates"),
        "heldout_task": means.get("heldout_task"),
        "seconds": seconds,
    }


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| group | parameters | training tasks (test) | held-out templates (test) "
        "| held-out task (test) | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        secs = "—" if r["seconds"] is None else f"{r['seconds'] / 60:.0f} min"
        cells = [f"{r[k]:.3f}" if r[k] is not None else "—"
                 for k in ("train_tasks", "heldout_templates", "heldout_task")]  # fmt: skip
        lines.append(f"| {r['group']} | {r['params']:,} | {' | '.join(cells)} | {secs} |")
    return "\n".join(lines)


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher_dir", default="/tmp/t5x_instruct_quickstart")
    parser.add_argument("--out_dir", default="/tmp/t5x_instruct_distill")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--groups", default=DEFAULT_GROUPS, help=f"of {list(GROUPS)}")
    parser.add_argument("--gin", action="append", default=[], help="extra binding for all runs")
    parser.add_argument("--report", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)

    teacher = Path(args.teacher_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (teacher / "summary.json").exists():
        print(f"No quickstart run at {teacher}: training the teacher first.", flush=True)
        teacher.mkdir(parents=True, exist_ok=True)
        _train(["gin/runs/quickstart.gin"], [f"MODEL_DIR = '{teacher}'"], teacher / "train.log")
    rows = [_row("teacher (quickstart model)", json.loads((teacher / "summary.json").read_text()),
                 None)]  # fmt: skip
    for name in args.groups.split(","):
        if name not in GROUPS:
            sys.exit(f"--groups: unknown group {name!r}; expected some of {list(GROUPS)}")
        files, bindings = GROUPS[name]
        run_dir = out / name
        if not (run_dir / "summary.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            extra_files, extra_bindings = _teacher_data(name, teacher, out)
            start = time.perf_counter()
            _train(
                ["gin/runs/quickstart.gin", *files, *extra_files],
                [
                    f"MODEL_DIR = '{run_dir}'",
                    f"TRAIN_STEPS = {args.steps}",
                    *([f"TEACHER_CHECKPOINT = '{teacher}'"] if files else []),
                    "train.pack = False",
                    "train.eval_period = 0",
                    "train.checkpoint_period = 100000",
                    "train.progress_bar = False",
                    *STUDENT,
                    *bindings,
                    *extra_bindings,
                    *args.gin,
                ],
                run_dir / "train.log",
            )
            (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
        seconds_file = run_dir / "seconds.txt"
        seconds = float(seconds_file.read_text()) if seconds_file.exists() else None
        rows.append(_row(name, json.loads((run_dir / "summary.json").read_text()), seconds))
    table = _markdown(rows)
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
