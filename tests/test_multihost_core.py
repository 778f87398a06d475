"""Multi-host training through the core, fast: 2 CPU processes x 4 devices joined by
``jax.distributed`` (gloo) on localhost, against 1 process x 8 devices.

Each process feeds only the data shards its devices hold (``host_data``), trains a one-layer
T5 under the data-parallel and the FSDP layout, both processes write one checkpoint, and both
resume from it. No TensorFlow, no gin: this is the short 2-process test (it runs in both CI
environments); ``tests/test_multihost.py`` drills the real CLI (seqio data, SIGTERM, full
disk) in ~5 minutes. The oracle is the same run in this pytest process over its 8 devices:
the process count must not change the math, so the losses agree to 1e-6 (fp32; only the
collectives' summation order differs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import multihost_core as worker
from helpers.xla_flags import xla_flags

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Both processes' results (one JSON object each) and the job's checkpoint root."""
    root = tmp_path_factory.mktemp("two_processes")
    address = f"localhost:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices=4))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.multihost_core", address, "2", str(i), root],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"process {len(outputs)}:\n{err[-3000:]}"
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return root, outputs


@pytest.mark.parametrize("layout", sorted(worker.LAYOUTS))
def test_two_processes_train_and_resume_as_one_process_does(job, layout, tmp_path) -> None:
    root, outputs = job
    oracle = worker.run(layout, tmp_path / "one_process")
    assert len(oracle["losses"]) == worker.STEPS
    # Each process read only its own data shard (the rows its 4 devices hold).
    assert [out[layout]["shards"] for out in outputs] == [[0], [1]]
    assert oracle["shards"] == [0, 1]
    for out in outputs:
        assert out[layout]["losses"] == pytest.approx(oracle["losses"], rel=1e-6)
        # Resumed by both processes from the checkpoint both wrote: the uninterrupted losses.
        assert out[layout]["resumed"] == out[layout]["losses"][worker.SAVE_AT :]
    # Both processes wrote their array shards into the one checkpoint.
    state = os.listdir(root / layout / "checkpoints" / str(worker.SAVE_AT) / "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state), state


@pytest.mark.parametrize("layout", sorted(worker.LAYOUTS))
def test_a_two_process_checkpoint_resumes_in_one_process(job, layout, tmp_path) -> None:
    root, outputs = job
    resumed = worker.run(layout, root / layout)  # 1 process x 8 devices reads both shards
    assert "losses" not in resumed  # only the resumed part ran
    assert resumed["resumed"] == pytest.approx(outputs[0][layout]["resumed"], rel=1e-6)
