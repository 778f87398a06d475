"""Multi-host training without TPUs: 2 CPU processes x 4 devices on localhost, joined by
``jax.distributed`` (gloo collectives), against the same run as 1 process x 8 devices.

Each 2-process run is the real CLI (``t5x_instruct.train.main`` with ``--coordinator_address=...
--num_processes=2 --process_id=i``) on a one-layer T5 for 4 steps; one job runs two of them
in turn, to pay process start-up once. The oracle is the same command in one process over 8
devices: sharding and process count must not change the math,
so the losses agree to 1e-6 (fp32; only the collectives' summation order differs).
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

from t5x_instruct import train as train_cli
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
# data: every device its own rows; fsdp: parameters sharded across both hosts. (Layouts where
# hosts share rows, e.g. tensor across hosts, are covered by the row assignment tests in
# tests/test_distributed_setup.py; one more 2-process run here costs a quarter of this file.)
LAYOUTS = {
    "data": ["--gin.MeshConfig.data=8", "--gin.standard_logical_axis_rules.parallelism='data'"],
    "fsdp": ["--gin.MeshConfig.data=1", "--gin.MeshConfig.fsdp=8"],
}

# One process of a job, running several training runs in turn (process start-up, TensorFlow
# and jax.distributed are paid once). argv[1]: JSON list of [CLI args, sigterm_at]; with
# sigterm_at=n and T5XI_SIGTERM=1 the process sends itself SIGTERM after logging step n (as a
# scheduler preempting one host would), then stalls so the other host runs ahead into the next
# step's collectives. Exits with the first non-zero status, else 0.
_PROCESS = """
import json, os, signal, sys, time
from t5x_instruct import train
from t5x_instruct.training import metrics
original = metrics.MetricsWriter.write
for args, hit in json.loads(sys.argv[1]):
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
    runs: list[tuple[Path, str, int]], *, sigterm_process: int | None = None
) -> list[subprocess.CompletedProcess]:
    """``runs`` (model dir, layout, SIGTERM step or 0) one after another in a 2-process job
    on localhost; returns both processes' results."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = []
    for index in range(2):
        flags = [
            f"--coordinator_address=localhost:{port}", "--num_processes=2",
            f"--process_id={index}",
        ]  # fmt: skip
        plan = [
            ([*COMMON, *LAYOUTS[layout], f"--gin.MODEL_DIR={model_dir}", *flags], hit)
            for model_dir, layout, hit in runs
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
    """One 2-process job: an fsdp run, then a data-parallel run that process 1 preempts with
    SIGTERM after step 1."""
    root = tmp_path_factory.mktemp("two_processes")
    dirs = {layout: root / layout for layout in ("fsdp", "data")}
    runs = [(dirs["fsdp"], "fsdp", 0), (dirs["data"], "data", 1)]
    return dirs, _two_processes(runs, sigterm_process=1)


def test_two_processes_match_one_process(job, oracle) -> None:
    layout = "fsdp"
    dirs, results = job
    for r in results:  # the first run finished (the second is the preempted one)
        assert r.stderr.count("run finished with status 0") == 1, _stderr(results)
    model_dir = dirs[layout]
    _assert_same_losses(_losses(model_dir), oracle(layout))
    # Process 0 alone writes the run's files: one TensorBoard file, one config.gin.
    assert len(os.listdir(model_dir / "tb")) == 1
    assert (model_dir / "config.gin").exists()
    # Both processes wrote their array shards into the one checkpoint.
    state = os.listdir(model_dir / "checkpoints" / str(TRAIN_STEPS) / "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state), state


def test_sigterm_on_one_process_saves_the_same_step_everywhere_and_resumes_exactly(
    job, oracle, tmp_path
) -> None:
    dirs, first = job
    preempted = dirs["data"]
    assert [r.returncode for r in first] == [PREEMPTED_EXIT_CODE] * 2, _stderr(first)
    saved = [re.findall(r"SIGTERM received: saving step (\d+)", r.stderr) for r in first]
    assert saved[0] and saved[0] == saved[1], _stderr(first)  # both hosts, the same step
    step = int(saved[0][0])
    assert 1 < step < TRAIN_STEPS
    assert _checkpoint_steps(preempted) == [step]
    state = os.listdir(preempted / "checkpoints" / str(step) / "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state), state
    assert not (preempted / "summary.json").exists()
    other_count = tmp_path / "resumed_by_one_process"
    shutil.copytree(preempted, other_count)

    # Resumed by both processes: the losses an uninterrupted 1-process run has.
    resumed = _two_processes([(preempted, "data", 0)])
    assert [r.returncode for r in resumed] == [0, 0], _stderr(resumed)
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
