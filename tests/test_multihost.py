"""Multi-host training through the real CLI: 2 CPU processes x 4 devices on localhost, joined
by ``jax.distributed`` (gloo collectives), against the same run as 1 process x 8 devices.

Each 2-process run is ``t5x_instruct.train.main`` with ``--coordinator_address=...
--num_processes=2 --process_id=i`` on a one-layer T5 for 4 steps, reading the demo task
through seqio; a job runs several in turn, to pay process start-up (TensorFlow) once. The
oracle is the same command in one process over 8 devices: process count must not change the
math, so the losses agree to 1e-6 (fp32; only the collectives' summation order differs).
The drills here are the CLI's (SIGTERM on one host, a full disk on process 0, process 0
alone writing the run's files); ``tests/test_multihost_core.py`` is the short 2-process test
of the core (the data-parallel and FSDP layouts, checkpoints), without TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import seqio  # noqa: F401  (the CLI subprocesses read the demo task through seqio)
from helpers.xla_flags import xla_flags

from t5x_instruct import train as train_cli
from t5x_instruct.errors import STORAGE_ERROR_EXIT_CODE
from t5x_instruct.runtime.preemption import PREEMPTED_EXIT_CODE
from t5x_instruct.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 4

# A one-layer T5 with 8 heads on one demo task; the demo vocabulary needs 640 ids. Two data
# shards in every run: the 2-process default, set explicitly for the 1-process oracle.
COMMON = [
    "--gin_file=gin/runs/quickstart.gin",
    "--gin.MIXTURE_OR_TASK_NAME='demo_arithmetic'",  # one task: its pipeline builds fast
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    "--gin.BATCH_SIZE=8",
    "--gin.T5Config.emb_dim=64",
    "--gin.T5Config.num_heads=8",
    "--gin.T5Config.head_dim=8",
    "--gin.T5Config.mlp_dim=128",
    "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
    "--gin.train.data_shards=2",
    "--gin.train.log_period=1",
    "--gin.train.checkpoint_period=100",
    "--gin.train.eval_period=0",
    "--gin.train.final_eval=False",
    "--gin.train.progress_bar=False",
    "--gin.train.async_checkpointing=False",
]
# Data-parallel: every device its own rows. (FSDP across hosts: tests/test_multihost_core.py;
# layouts where hosts share rows, e.g. tensor across hosts: the row assignment tests in
# tests/test_distributed_setup.py.)
LAYOUTS = {
    "data": ["--gin.MeshConfig.data=8", "--gin.standard_logical_axis_rules.parallelism='data'"],
}

# One process of a job, running several training runs in turn (process start-up, TensorFlow
# and jax.distributed are paid once). argv[1]: JSON list of [CLI args, sigterm_at, full_at];
# with sigterm_at=n and T5XI_SIGTERM=1 the process sends itself SIGTERM after logging step n
# (as a scheduler preempting one host would), then stalls so the other host runs ahead into
# the next step's collectives; with full_at=n, process 0's metrics write at step n fails as a
# full disk makes it. Exits with the first non-zero status, else 0.
_PROCESS = """
import errno, json, os, signal, sys, time
from t5x_instruct import train
from t5x_instruct.training import metrics
original, original_append = metrics.MetricsWriter.write, metrics.MetricsWriter._append
for args, hit, full in json.loads(sys.argv[1]):
    def append(self, line, full=full):  # process 0's file write (the writer's only caller)
        if json.loads(line)["step"] == full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original_append(self, line)
    metrics.MetricsWriter._append = append
    def write(self, step, values, hit=hit):
        out = original(self, step, values)
        if step == hit and os.environ.get("T5XI_SIGTERM") == "1":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(3)
        return out
    metrics.MetricsWriter.write = write
    code = train.main(args)
    print(f"run finished with status {code}", file=sys.stderr, flush=True)
    if code:
        sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(
    runs: list[tuple[Path, str, int, int]], *, sigterm_process: int | None = None
) -> list[subprocess.CompletedProcess]:
    """``runs`` (model dir, layout, SIGTERM step or 0, full-disk step or 0) one after another
    in a 2-process job on localhost; returns both processes' results."""
    port = _free_port()
    keep = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE")  # the session's cache
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k.startswith(keep)}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices=4))
    procs = []
    for index in range(2):
        flags = [
            f"--coordinator_address=localhost:{port}", "--num_processes=2",
            f"--process_id={index}",
        ]  # fmt: skip
        plan = [
            ([*COMMON, *LAYOUTS[layout], f"--gin.MODEL_DIR={model_dir}", *flags], hit, full)
            for model_dir, layout, hit, full in runs
        ]
        extra = {"T5XI_SIGTERM": "1"} if index == sigterm_process else {}
        command = [sys.executable, "-c", _PROCESS, json.dumps(plan)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(command, cwd=REPO, env={**env, **extra}, **pipes))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL: jax.distributed's notifier turns SIGTERM into a notice
    return results


def _one_process(model_dir: Path, layout: str) -> int:
    """The same CLI in this pytest process (1 process x the 8 devices conftest makes)."""
    return train_cli.main([*COMMON, *LAYOUTS[layout], f"--gin.MODEL_DIR={model_dir}"])


def _losses(model_dir: Path) -> dict[int, float]:
    records = read_metrics(str(model_dir))
    steps = [int(r["step"]) for r in records]
    assert len(steps) == len(set(steps)), f"a step was logged twice (two writers?): {steps}"
    return {int(r["step"]): r["loss"] for r in records}


def _assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected) == list(range(1, TRAIN_STEPS + 1))
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-6), step


def _checkpoint_steps(model_dir: Path) -> list[int]:
    return sorted(int(d) for d in os.listdir(model_dir / "checkpoints") if d.isdigit())


def _stderr(results: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- process {i}:\n{r.stderr[-2500:]}" for i, r in enumerate(results))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Losses of the 1-process x 8-device run per layout (computed once, on demand)."""
    cache: dict[str, dict[int, float]] = {}

    def losses(layout: str) -> dict[int, float]:
        if layout not in cache:
            model_dir = tmp_path_factory.mktemp(f"oracle_{layout}")
            assert _one_process(model_dir, layout) == 0
            cache[layout] = _losses(model_dir)
        return cache[layout]

    return losses


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One 2-process job: a data-parallel run that process 1 preempts with SIGTERM after
    step 1. Also returns the run's files as the job left them (a resume adds its own)."""
    model_dir = tmp_path_factory.mktemp("two_processes") / "data"
    results = _two_processes([(model_dir, "data", 1, 0)], sigterm_process=1)
    files = {
        "tb": os.listdir(model_dir / "tb"),
        "config.gin": (model_dir / "config.gin").exists(),
        "metrics steps": [int(r["step"]) for r in read_metrics(str(model_dir))],
    }
    return model_dir, results, files


def test_process_0_alone_writes_the_run_files(job) -> None:
    _, results, files = job
    assert [r.returncode for r in results] == [PREEMPTED_EXIT_CODE] * 2, _stderr(results)
    assert len(files["tb"]) == 1, files  # one TensorBoard event file
    assert files["config.gin"]
    steps = files["metrics steps"]  # one writer: each step logged once, in order
    assert steps and steps == list(range(1, steps[-1] + 1)), files


def test_sigterm_on_one_process_saves_the_same_step_everywhere_and_resumes_exactly(
    job, oracle, tmp_path
) -> None:
    preempted, first, _ = job
    assert [r.returncode for r in first] == [PREEMPTED_EXIT_CODE] * 2, _stderr(first)
    saved = [re.findall(r"SIGTERM received: saving step (\d+)", r.stderr) for r in first]
    assert saved[0] and saved[0] == saved[1], _stderr(first)  # both hosts, the same step
    step = int(saved[0][0])
    assert 1 <= step < TRAIN_STEPS  # the step after the furthest any process had reached
    assert _checkpoint_steps(preempted) == [step]
    state = os.listdir(preempted / "checkpoints" / str(step) / "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state), state
    assert not (preempted / "summary.json").exists()
    other_count = tmp_path / "resumed_by_one_process"
    shutil.copytree(preempted, other_count)

    # Resumed by both processes: the losses an uninterrupted 1-process run has. Then, in the
    # same job, a run whose process 0 finds the disk full at step 2: both processes stop
    # there with exit status 3 (process 1 does not wait in step 3's collectives).
    full_disk = tmp_path / "full_disk"
    resumed = _two_processes([(preempted, "data", 0, 0), (full_disk, "data", 0, 2)])
    for r in resumed:
        assert r.stderr.count("run finished with status 0") == 1, _stderr(resumed)
    assert [r.returncode for r in resumed] == [STORAGE_ERROR_EXIT_CODE] * 2, _stderr(resumed)
    assert "failed at step 2: [Errno 28] No space left on device" in resumed[0].stderr
    assert "writing metrics at step 2 failed on process 0" in resumed[1].stderr
    assert "Traceback" not in resumed[1].stderr, _stderr(resumed)
    assert [r["step"] for r in read_metrics(str(full_disk))] == [1]
    assert all("Resumed from" in r.stderr for r in resumed)
    # Each data shard's iterator checkpoint (written by the process owning it) was restored.
    assert all("restored the tf.data iterators" in r.stderr for r in resumed), _stderr(resumed)
    assert not any("Data position: skipping" in r.stderr for r in resumed)
    expected = oracle("data")
    _assert_same_losses(_losses(preempted), expected)

    # Resumed by a different process count (1 x 8 devices reads both data shards).
    assert _one_process(other_count, "data") == 0
    _assert_same_losses(_losses(other_count), expected)


def test_sigterm_exit_code_is_distinct_from_success_and_bad_input() -> None:
    assert PREEMPTED_EXIT_CODE not in (0, 1, 2, -signal.SIGTERM, 128 + signal.SIGTERM)
