"""Benchmark: time to resume the training data stream at step N, old skip path vs iterator
checkpoint.

The quickstart's data (``demo_instructions``, inputs 48 / targets 8, packed, batch 32, seed
0, one data shard). Measured per step N, each in a fresh process after one untimed warm-up
pipeline (imports, example generation and vocabulary loading are paid once per process by
both paths alike), from building the pipeline to holding the first batch:

* ``skip``: what a resume cost before iterator checkpoints: rebuild the pipeline,
  ``ds.skip(N)``, first batch (``DataIterator`` did exactly this).
* ``checkpoint``: ``DataIterator.restore`` from the ``tf.data`` iterator checkpoint written at
  batch N (:meth:`DataIterator.save`, what the trainer writes per data shard), first batch;
  asserts that nothing was skipped and that the batch equals the skip path's.
* ``fresh``: step 0, no positioning: the floor both share.

The checkpoints are made once (cached in ``--work_dir``) by drawing N batches through a
``DataIterator``; that time is also what the fallback (no usable checkpoint) costs.

    .venv/bin/python tools/bench_data_resume.py                      # steps 100 and 10000
    .venv/bin/python tools/bench_data_resume.py --modes checkpoint --repeats 3  # cached ckpts
    .venv/bin/python tools/bench_data_resume.py --steps 100 --work_dir /tmp/bdr
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIG = dict(
    task_feature_lengths={"inputs": 48, "targets": 8},
    batch_size=32,
    model_type="encoder_decoder",
    pack=True,
    shuffle=True,
    seed=0,
    shard_id=0,
    num_shards=1,
)
MIXTURE = "demo_instructions"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def prepare(steps: list[int], work_dir: str) -> dict[int, dict[str, float]]:
    """Iterator checkpoints at every step in ``steps`` (reused when already there)."""
    import tasks.demo  # noqa: F401  (registers the demo tasks)
    from t5x_instruct.data import DataIterator

    out: dict[int, dict[str, float]] = {}
    todo = [n for n in steps if not os.path.exists(os.path.join(work_dir, str(n), "info.json"))]
    for n in sorted(set(steps) - set(todo)):
        with open(os.path.join(work_dir, str(n), "info.json")) as f:
            out[n] = json.load(f)
    if not todo:
        return out
    it = DataIterator(MIXTURE, **CONFIG)
    start, cpu = time.perf_counter(), _cpu()
    for n in sorted(todo):
        while it.batches_consumed < n:
            next(it)
        drawn, drawn_cpu = time.perf_counter() - start, _cpu() - cpu
        folder = os.path.join(work_dir, str(n))
        save_start = time.perf_counter()
        reason = it.save(os.path.join(folder, "shard_0"), {"step": n})
        if reason is not None:
            raise SystemExit(f"cannot checkpoint the demo pipeline: {reason}")
        out[n] = {
            "draw_seconds": drawn,
            "draw_cpu_seconds": drawn_cpu,
            "save_seconds": time.perf_counter() - save_start,
            "checkpoint_bytes": _folder_bytes(folder),
        }
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(out[n], f)
        print(f"prepared step {n}: {out[n]}", file=sys.stderr, flush=True)
    return out


def measure(mode: str, step: int, work_dir: str) -> dict[str, float]:
    """One timed resume in this (fresh) process; returns seconds and the first batch's sum."""
    import tasks.demo  # noqa: F401
    from t5x_instruct.data import DataIterator
    from t5x_instruct.data.pipeline import DatasetConfig, _build

    warm = DataIterator(MIXTURE, **CONFIG)
    next(warm)
    del warm
    start, cpu = time.perf_counter(), _cpu()
    if mode == "skip":  # the pre-checkpoint DataIterator: rebuild, ds.skip(n), next
        batch = next(_build(DatasetConfig(MIXTURE, **CONFIG)).skip(step).as_numpy_iterator())
    else:
        it = DataIterator(MIXTURE, **CONFIG)
        if mode == "checkpoint":
            state = {"batches_consumed": step, "config": it.config.to_dict()}
            folder = os.path.join(work_dir, str(step), "shard_0")
            reason = it.restore(state, folder, {"step": step})
            if reason is not None:
                raise SystemExit(f"the checkpoint was not used: {reason}")
        batch = next(it)
        if it.skipped_batches:
            raise SystemExit(f"{mode} skipped {it.skipped_batches} batches")
    seconds, cpu_seconds = time.perf_counter() - start, _cpu() - cpu
    checksum = int(sum(int(v.astype("int64").sum()) for v in batch.values()))
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "checksum": checksum}


def _in_subprocess(mode: str, step: int, work_dir: str, repeats: int) -> dict[str, float]:
    """The run with the median wall time of ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        command = [sys.executable, os.path.abspath(__file__), "--measure", mode, str(step)]
        result = subprocess.run(
            [*command, "--work_dir", work_dir], capture_output=True, text=True, check=False
        )
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def _cell(run: dict[str, float] | None) -> str:
    return "—" if run is None else f"{run['seconds']:.1f} / {run['cpu_seconds']:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="100,10000", help="comma-separated resume steps")
    parser.add_argument("--modes", default="skip,checkpoint", help="of skip, checkpoint")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per figure")
    parser.add_argument("--work_dir", default="/tmp/bench_data_resume")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.work_dir)))
        return
    steps = sorted(int(s) for s in args.steps.split(","))
    modes = args.modes.split(",")
    os.makedirs(args.work_dir, exist_ok=True)
    prepared = prepare(steps, args.work_dir)
    fresh = _in_subprocess("fresh", 0, args.work_dir, args.repeats)
    rows = []
    for n in steps:
        got = {m: _in_subprocess(m, n, args.work_dir, args.repeats) for m in modes}
        if len({r["checksum"] for r in got.values()}) > 1:
            raise SystemExit(f"step {n}: the restored first batch differs from the skip path's")
        rows.append((n, got.get("skip"), got.get("checkpoint"), prepared[n]))
        print(f"step {n}: {got}", file=sys.stderr, flush=True)

    print(f"\n{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, median of {args.repeats} process(es)")  # fmt: skip
    print(f"Fresh start (step 0, no positioning): {_cell(fresh)} s wall / CPU\n")
    print("| resume at step | skip (old): wall / CPU s | checkpoint (new): wall / CPU s "
          "| checkpoint size | save | drawing N batches (fallback) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for n, skip, ckpt, prep in rows:
        print(
            f"| {n:,} | {_cell(skip)} | {_cell(ckpt)} "
            f"| {prep['checkpoint_bytes'] / 2**20:.1f} MiB | {prep['save_seconds']:.1f} s "
            f"| {prep['draw_seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
