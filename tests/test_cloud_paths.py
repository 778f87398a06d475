"""MODEL_DIR and result files on an object store (a fake in-memory ``gs://`` bucket).

The fake (``tests/helpers/fake_object_store.py``) is fsspec's memory filesystem under the
``gs`` protocol, with no folders, appends or renames, as a bucket: the code takes its real
``gs://`` path (epath -> fsspec) without a network. Orbax's arrays are written by
TensorStore's own GCS driver, which this fake cannot serve, so checkpoints are not run here.
"""

from __future__ import annotations

import json

import pytest
from helpers.fake_object_store import fake_gcs, objects

from t5x_instruct.errors import UserInputError
from t5x_instruct.inference.files import ChunkedJsonl, atomic_write_text
from t5x_instruct.inference.model_setup import model_dir_of
from t5x_instruct.runtime import paths
from t5x_instruct.training.checkpoints import Checkpointer
from t5x_instruct.training.metrics import MetricsWriter, read_metrics

RUN = "gs://bucket/runs/a"


@pytest.fixture
def bucket():
    with fake_gcs():
        yield


def test_metrics_and_tensorboard_on_an_object_store(bucket) -> None:
    writer = MetricsWriter(RUN)
    for step in (1, 2, 3):
        writer.write(step, {"loss": step / 10})
    writer.close()
    # A resumed run at step 2 drops step 3's record before appending its own.
    writer = MetricsWriter(RUN, resume_step=2)
    writer.write(3, {"loss": 0.7})
    writer.close()
    assert read_metrics(RUN) == [
        {"step": 1, "loss": 0.1},
        {"step": 2, "loss": 0.2},
        {"step": 3, "loss": 0.7},
    ]
    stored = objects()
    events = [k for k in stored if k.startswith(f"{RUN}/tb/events.out.tfevents")]
    assert events and all(b"loss" in stored[k] for k in events)


def test_a_writer_that_is_not_process_zero_writes_nothing(bucket) -> None:
    writer = MetricsWriter(RUN, enabled=False)
    assert writer.write(1, {"loss": 0.5}) == {"step": 1, "loss": 0.5}
    writer.close()
    assert objects() == {}


def test_resumable_chunks_and_atomic_files_on_an_object_store(bucket) -> None:
    output = f"{RUN}/infer/predict/task.jsonl"
    chunks = ChunkedJsonl(output, num_records=3, chunk_size=2, manifest={"source": "x"})
    chunks.open()
    assert chunks.pending() == [0, 1]
    chunks.write_chunk(0, [{"i": 0}, {"i": 1}])
    # A rerun sees chunk 0 done, and refuses another job's manifest.
    again = ChunkedJsonl(output, num_records=3, chunk_size=2, manifest={"source": "x"})
    again.open()
    assert again.pending() == [1]
    other = ChunkedJsonl(output, num_records=3, chunk_size=2, manifest={"source": "y"})
    with pytest.raises(UserInputError, match="holds the results of another job"):
        other.open()
    again.write_chunk(1, [{"i": 2}])
    again.finish()
    lines = paths.read_text(output).splitlines()
    assert [json.loads(line) for line in lines] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert sorted(paths.listdir(f"{RUN}/infer/predict/task.chunks")) == ["manifest.json"]
    atomic_write_text(f"{RUN}/summary.json", "{}")
    assert objects()[f"{RUN}/summary.json"] == b"{}"


def test_model_dir_of_a_gs_step_folder(bucket) -> None:
    atomic_write_text(f"{RUN}/checkpoints/40/state/_METADATA", "{}")
    assert model_dir_of(f"{RUN}/checkpoints/40") == RUN
    assert model_dir_of(f"{RUN}/checkpoints") == RUN


@pytest.mark.parametrize("model_dir", ["memory://run", "hdfs://cluster/run", "ftp://x/y"])
def test_model_dir_on_an_unknown_scheme_is_one_clear_error(model_dir) -> None:
    scheme = model_dir.split("://")[0]
    with pytest.raises(UserInputError, match=f"MODEL_DIR='{model_dir}': unsupported scheme "):
        Checkpointer(model_dir)
    with pytest.raises(UserInputError, match=f"unsupported scheme '{scheme}://'"):
        MetricsWriter(model_dir)


def test_object_stores_checkpoints_cannot_use_and_missing_filesystems() -> None:
    with pytest.raises(UserInputError, match="use a local path or gs://"):
        paths.resolve("s3://bucket/run", what="MODEL_DIR", for_checkpoints=True)
    # s3fs is not a dependency: the error names the package to install.
    with pytest.raises(UserInputError, match="needs the 's3fs' package"):
        paths.resolve("s3://bucket/metrics", what="output")


def test_local_paths_resolve_as_before(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert str(paths.resolve("run")) == str(tmp_path / "run")
    assert str(paths.resolve(f"file://{tmp_path}/x")) == str(tmp_path / "x")
    assert paths.scheme("gs://b/x") == "gs" and paths.scheme("/tmp/x") is None
