"""Run robustness drills on the quickstart config (issue 13), run as a user would.

- Damaged latest checkpoints: the rerun resumes from the newest intact one (with the losses of
  the uninterrupted run), sets each damaged folder aside with one warning, never deletes it.
- A save the storage refuses: one ``error:`` line, exit status 3, no tracebacks; the
  previous checkpoint is intact and a rerun resumes from it.
- An unwritable MODEL_DIR: one ``error:`` line before the model is built, exit status 2.

The oracle is one uninterrupted run, shared by the module. Training runs are CLI processes
(one CPU device, as ``tests/test_train_loop.py``), so stderr is what a user sees; the
drills that stop before training call the CLI entry in-process.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gin
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath
from helpers.xla_flags import xla_flags

from t5x_instruct import train as train_cli
from t5x_instruct.errors import STORAGE_ERROR_EXIT_CODE, StorageError
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training.metrics import read_metrics
from t5x_instruct.training.train_state import init_train_state

REPO = Path(__file__).resolve().parents[1]

RUN_ARGS = [
    "--gin_file=gin/runs/quickstart.gin",
    "--gin.TRAIN_STEPS=6",
    "--gin.BATCH_SIZE=8",
    "--gin.train.log_period=1",
    "--gin.train.checkpoint_period=2",
    "--gin.train.eval_period=0",
    "--gin.train.final_eval=False",
    "--gin.train.progress_bar=False",
]


def _main(model_dir: Path) -> int:
    """The CLI in-process, from a clean gin config (as a fresh process would start)."""
    gin.clear_config()
    try:
        return train_cli.main([*RUN_ARGS, f"--gin.MODEL_DIR={model_dir}"])
    finally:
        gin.clear_config()


def _cli(model_dir: Path, *prefix: str) -> subprocess.CompletedProcess:
    """``python <prefix> <RUN_ARGS> --gin.MODEL_DIR=...`` in a fresh process on one device."""
    import seqio  # noqa: F401  (the subprocess reads the demo task: skipped where seqio is not)

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    args = [*prefix, *RUN_ARGS, f"--gin.MODEL_DIR={model_dir}"]
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


_LOGGED = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (WARNING|ERROR|CRITICAL) ")


def _warnings_and_errors(stderr: str) -> list[str]:
    """The log lines of level WARNING and above (the CLI's format: time, level, logger)."""
    return [line for line in stderr.splitlines() if _LOGGED.match(line)]


def _losses(model_dir: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in read_metrics(str(model_dir))}


def _steps(model_dir: Path) -> list[int]:
    return sorted(int(d) for d in os.listdir(model_dir / "checkpoints") if d.isdigit())


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    """One uninterrupted run of 6 steps with checkpoints at 2, 4 and 6."""
    model_dir = tmp_path_factory.mktemp("oracle") / "run"
    result = _cli(model_dir, "-m", "t5x_instruct.train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(model_dir) == [2, 4, 6]
    assert sorted(_losses(model_dir)) == [1, 2, 3, 4, 5, 6]
    return model_dir


def _damage(step_dir: Path, kind: str) -> str:
    """Damage ``step_dir`` as ``kind`` says; returns the words the warning must contain."""
    data_files = sorted(
        (step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size
    )
    assert data_files, sorted(_listing(step_dir))  # the array data files orbax wrote
    biggest = data_files[-1]
    size = biggest.stat().st_size
    if kind == "data_file_deleted":
        biggest.unlink()
        return "state/"
    if kind == "data_file_truncated":
        biggest.write_bytes(biggest.read_bytes()[: size // 2])
        return "state/"
    if kind == "data_file_overwritten":
        biggest.write_bytes(np.random.default_rng(0).bytes(size))
        return "state/"
    if kind == "state_missing":
        shutil.rmtree(step_dir / "state")
        return "state/ missing"
    if kind == "state_metadata_missing":
        (step_dir / "state" / "_METADATA").unlink()
        return "state/_METADATA missing"
    if kind == "empty_step_dir":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
        return "empty folder"
    raise ValueError(kind)


# Each run damages the two newest checkpoints (6, then 4) in two ways: the run falls back
# past both to step 2; three runs cover the six kinds of damage.
DAMAGE_PAIRS = [
    ("data_file_deleted", "state_missing"),
    ("data_file_truncated", "state_metadata_missing"),
    ("data_file_overwritten", "empty_step_dir"),
]


@pytest.mark.parametrize("kinds", DAMAGE_PAIRS, ids="+".join)
def test_damaged_latest_checkpoints_resume_from_the_newest_intact_one(
    oracle, tmp_path, kinds
) -> None:
    model_dir = tmp_path / "run"
    shutil.copytree(oracle / "checkpoints", model_dir / "checkpoints")  # no metrics.jsonl
    shutil.copytree(oracle / "data_state", model_dir / "data_state")  # O(1) data resume
    damaged = {}
    for step, kind in zip((6, 4), kinds):
        folder = model_dir / "checkpoints" / str(step)
        reason = _damage(folder, kind)
        damaged[step] = (folder, reason, _listing(folder))

    result = _cli(model_dir, "-m", "t5x_instruct.train")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    logged = _warnings_and_errors(result.stderr)
    assert len(logged) == 2, logged  # one warning per damaged checkpoint, nothing else
    for line, (folder, reason, _) in zip(logged, damaged.values()):
        warning = line.split(" WARNING t5x_instruct.training.state_init: ", 1)[1]
        assert warning.startswith(f"Checkpoint {folder} is damaged (")
        assert reason in warning
        assert warning.endswith(f"moved it to {folder}.damaged and resuming from step 2.")
    assert f"Resumed from {model_dir / 'checkpoints'} at step 2" in result.stderr
    # Steps 3 to 6 ran again, with the uninterrupted run's losses.
    expected, got = _losses(oracle), _losses(model_dir)
    assert sorted(got) == [3, 4, 5, 6]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    # The damaged folders are kept as they were, beside the new steps 4 and 6 orbax saved.
    for folder, _, listing in damaged.values():
        assert _listing(Path(f"{folder}.damaged")) == listing
    assert _steps(model_dir) == [2, 4, 6]


def test_no_intact_checkpoint_is_one_error_and_changes_nothing(oracle, tmp_path, capsys) -> None:
    model_dir = tmp_path / "run"
    shutil.copytree(oracle / "checkpoints", model_dir / "checkpoints")
    for step in (2, 4, 6):
        (model_dir / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
    before = _listing(model_dir)

    assert _main(model_dir) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: MODEL_DIR has no intact checkpoint to resume from (")
    assert f"{model_dir}/checkpoints/6: state/_METADATA missing" in lines[0]
    assert f"{model_dir}/checkpoints/2: state/_METADATA missing" in lines[0]
    assert _listing(model_dir) == before  # nothing renamed, nothing trained


# The CLI in its own process; when it saves step `fail_at`, every file it writes from then on
# is limited to 64 KiB (RLIMIT_FSIZE, SIGXFSZ ignored): the kernel refuses orbax's writes
# (EFBIG) inside TensorStore's background threads, as a full disk does (ENOSPC).
_FULL_DISK = """
import resource, signal, sys
from t5x_instruct import train
from t5x_instruct.training import checkpoints
fail_at = int(sys.argv[1])
original = checkpoints.Checkpointer.save
def save(self, state, data_state, **kwargs):
    if int(state.step) == fail_at:
        self.wait()  # the previous checkpoint is complete: only this one meets the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
    return original(self, state, data_state, **kwargs)
checkpoints.Checkpointer.save = save
sys.exit(train.main(sys.argv[2:]))
"""


def test_storage_refusing_a_save_is_one_line_and_the_previous_checkpoint_resumes(
    oracle, tmp_path
) -> None:
    model_dir = tmp_path / "run"
    result = _cli(model_dir, "-c", _FULL_DISK, "4")
    assert result.returncode == STORAGE_ERROR_EXIT_CODE == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: saving checkpoint step 4 to {model_dir}/checkpoints failed: [Errno 27] File "
        "too large; the latest complete checkpoint is step 2 (rerun the same command to resume "
        "from it once there is space)."
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    assert _warnings_and_errors(result.stderr) == []
    assert _steps(model_dir) == [2]

    rerun = _cli(model_dir, "-m", "t5x_instruct.train")  # resumes from step 2
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from {model_dir / 'checkpoints'} at step 2" in rerun.stderr
    expected, got = _losses(oracle), _losses(model_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert _steps(model_dir) == [2, 4, 6]


def test_no_space_in_an_async_save_is_one_storage_error(tmp_path, monkeypatch, caplog) -> None:
    """ENOSPC raised in orbax's background commit (its JSON items are written from Python)."""
    state = init_train_state({"w": jnp.arange(4.0)}, optax.sgd(0.1))
    at = lambda step: state.replace(step=jnp.asarray(step, jnp.int32))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save(at(2), {"position": 2})
    ckpt.wait()
    path_type = type(epath.Path(tmp_path))
    write_text = path_type.write_text

    def full_disk(self, *args, **kwargs):
        if "/4.orbax-checkpoint-tmp/" in os.fspath(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(path_type, "write_text", full_disk)
    with pytest.raises(StorageError) as info:
        ckpt.save(at(4), {"position": 4})
        ckpt.save(at(6), {"position": 6})
    assert str(info.value) == (
        f"saving checkpoint step 4 to {tmp_path}/checkpoints failed: [Errno 28] No space left "
        "on device; the latest complete checkpoint is step 2 (rerun the same command to resume "
        "from it once there is space)."
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no duplicate logs
    monkeypatch.undo()
    assert ocp_steps(tmp_path) == [2]
    restored, data_state = ckpt_lib.Checkpointer(str(tmp_path)).restore(2, at(0))
    assert data_state == {"position": 2} and int(restored.step) == 2


def ocp_steps(model_dir: Path) -> list[int]:
    return sorted(ckpt_lib.ocp.utils.checkpoint_steps(model_dir / "checkpoints"))


def test_orbax_error_reports_name_the_os_reason() -> None:
    """TensorStore reports OS errors as ValueErrors (text of a real full-tmpfs save)."""
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "opt_state.0.count/0" in OCDBT database at local '
        'file "/m/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/'
        '": Failed writing: "/m/.../d/a4f1": Failed to write 128059 bytes to file 12: No space '
        "left on device [os_error_code='28']"
    )
    assert ckpt_lib.storage_reason(tensorstore) == "[Errno 28] No space left on device"
    wrapped = RuntimeError("background save failed")
    wrapped.__cause__ = tensorstore
    assert ckpt_lib.storage_reason(wrapped) == "[Errno 28] No space left on device"
    assert ckpt_lib.storage_reason(KeyError("params")) is None  # a bug keeps its traceback
    # A damaged step folder is described relative to it, by the innermost status.
    read = ValueError(
        'FAILED_PRECONDITION: Error reading "params.x/6.0" in OCDBT database at local file '
        '"/m/checkpoints/6/state/": Truncated Zstd-compressed stream; at byte 0'
    )
    outer = Exception("Encountered error while reading array index: (slice(0, 64, 1),).\nspec")
    outer.__cause__ = read
    assert ckpt_lib.describe_failure(outer, "/m/checkpoints/6") == (
        'FAILED_PRECONDITION: Error reading "params.x/6.0" in state/: Truncated Zstd-compressed '
        "stream; at byte 0"
    )


@pytest.mark.parametrize("where", ["under_a_file", "a_file", "read_only"])
def test_unwritable_model_dir_is_one_line_before_the_model_is_built(
    tmp_path, capsys, caplog, monkeypatch, where
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model_dir = {"under_a_file": blocker / "run", "a_file": blocker, "read_only": tmp_path}[where]
    if where == "read_only":  # chmod does not stop root (tests may run as root): the OS's error
        path_type = type(epath.Path(tmp_path))

        def denied(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(self))

        monkeypatch.setattr(path_type, "write_text", denied)
    caplog.set_level(logging.INFO, logger="t5x_instruct")

    assert _main(model_dir) == 2

    reason = {
        "under_a_file": "[Errno 20] Not a directory",
        "a_file": "it is a file, not a folder",
        "read_only": "[Errno 13] Permission denied",
    }[where]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: MODEL_DIR={model_dir} is not writable ({reason}); choose a folder you can "
        "write to, or fix its permissions."
    ]
    assert "Model:" not in caplog.text  # stopped before building the model
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".write_check")]


def test_the_writability_probe_on_an_object_store_leaves_nothing() -> None:
    from helpers.fake_object_store import fake_gcs, objects

    with fake_gcs():
        ckpt_lib.check_writable("gs://bucket/runs/a")
        assert objects() == {}


def _abandon_a_failed_read() -> None:
    """What TensorStore leaves when one of a step's reads fails: other failed read tasks
    nobody awaits (asyncio logs each with a traceback once it is garbage-collected)."""

    async def read() -> None:
        raise ValueError("DATA_LOSS: Error reading shard: truncated")

    loop = asyncio.new_event_loop()
    task = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task  # unreferenced and never awaited


def test_abandoned_failed_reads_are_not_logged_while_a_checkpoint_is_tested(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _abandon_a_failed_read()
        gc.collect()
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        "Task exception was never retrieved"
    ]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with ckpt_lib.read_failures_reported_once():
            _abandon_a_failed_read()
        gc.collect()
    assert caplog.records == []


_ABANDONED_READS = """
import gc
from t5x_instruct.training import checkpoints as ckpt_lib

class Pending:
    def __await__(self):
        yield

async def _read_array_index_and_device_put():  # as orbax's read of one shard ends
    try:
        await Pending()
    except BaseException as e:
        raise Exception("Encountered error while reading array index: (slice(0, 4, 1),)") from e

async def some_other_read():
    try:
        await Pending()
    except BaseException as e:
        raise Exception("an unrelated failure while closing") from e

ckpt_lib.quiet_reported_failures()
for make in (_read_array_index_and_device_put, some_other_read):
    coroutine = make()
    coroutine.send(None)  # suspended at its read, as when another read of the restore failed
    del coroutine  # closed by the garbage collector, unfinished
    gc.collect()
print("done")
"""


def test_reads_abandoned_by_a_failed_restore_are_not_reported_when_collected() -> None:
    # Python reports them through sys.unraisablehook whenever the collector meets them, which
    # may be after read_failures_reported_once has returned; other coroutines still report.
    result = subprocess.run(
        [sys.executable, "-c", _ABANDONED_READS],
        capture_output=True, text=True, check=True, cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert result.stdout == "done\n"
    ignored = [line for line in result.stderr.splitlines() if line.startswith("Exception ignored")]
    assert len(ignored) == 1 and "some_other_read" in ignored[0], result.stderr
    assert "an unrelated failure while closing" in result.stderr
    assert "reading array index" not in result.stderr
