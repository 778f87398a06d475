"""O(1) data-position resume: tf.data iterator checkpoints per data shard, skip as fallback.

Oracles: an uninterrupted iterator's batches (numpy equality) and an uninterrupted training
run's losses. Every test also checks which path positioned the data (skipped batches or the
loop's log line), so a silent fall back to skipping would fail them.
"""

from __future__ import annotations

import json
import logging
import shutil

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks.demo
from t5x_instruct import data
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.runtime import host_data
from t5x_instruct.training.loop import train
from t5x_instruct.training.metrics import read_metrics
from t5x_instruct.training.train_state import ModelSpec

LENGTHS = tasks.demo.TASK_FEATURE_LENGTHS
MIXTURE = tasks.demo.TRAIN_MIXTURE
RESTORED = "restored the tf.data iterators"
SKIPPING = "Data position: skipping"


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_iterator_checkpoint_resumes_packed_mixture_exactly_without_skipping(tmp_path) -> None:
    kw = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=5, pack=True)
    expected = _take(data.DataIterator(MIXTURE, **kw), 9)  # the uninterrupted stream

    run = data.DataIterator(MIXTURE, **kw)
    _take(run, 6)
    folder = str(tmp_path / "shard_0")
    assert run.save(folder, {"step": 6}) is None
    state = json.loads(json.dumps(run.state()))  # as the orbax JSON item stores it
    _assert_same(_take(run, 2), expected[6:8])  # saving does not move the iterator

    resumed = data.DataIterator(MIXTURE, **kw)
    assert resumed.restore(state, folder, {"step": 6}) is None
    _assert_same(_take(resumed, 3), expected[6:9])
    assert resumed.skipped_batches == 0 and resumed.batches_consumed == 9


def test_unusable_checkpoints_fall_back_to_skipping_exactly(tmp_path) -> None:
    task = "demo_arithmetic"  # one task: cheaper pipelines than the mixture
    kw = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=5, pack=True)
    expected = _take(data.DataIterator(task, **kw), 8)
    it = data.DataIterator(task, **kw)
    _take(it, 3)
    folder = str(tmp_path / "3")
    assert it.save(folder, {"step": 3}) is None
    state = it.state()

    missing = data.DataIterator(task, **kw)
    reason = missing.restore(state, str(tmp_path / "absent"), {"step": 3})
    assert reason.startswith("no iterator checkpoint at"), reason
    _assert_same(_take(missing, 1), expected[3:4])
    assert missing.skipped_batches == 3

    # A checkpoint of another position (a step whose orbax save never committed) is refused.
    stale = data.DataIterator(task, **kw)
    reason = stale.restore({**state, "batches_consumed": 4}, folder, {"step": 4})
    assert "another position" in reason and "batches_consumed" in reason, reason
    _assert_same(_take(stale, 1), expected[4:5])
    assert stale.skipped_batches == 4

    # A run resumed by skipping writes restorable checkpoints again (one pipeline graph).
    again = str(tmp_path / "5")
    assert stale.save(again) is None
    later = data.DataIterator.from_state(stale.state(), again)
    _assert_same(_take(later, 3), expected[5:8])
    assert later.skipped_batches == 0


GENERATOR_TASK = "test_data_resume_from_generator"


@pytest.fixture
def generator_task():
    """A task whose source is a Python generator, which tf.data cannot checkpoint."""
    vocab = seqio.PassThroughVocabulary(size=64)
    spec = tf.TensorSpec([None], tf.int32)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed
        rows = ({"inputs": [i % 50 + 2, 7], "targets": [i % 9 + 2]} for i in range(400))
        return tf.data.Dataset.from_generator(
            lambda: rows, output_signature={"inputs": spec, "targets": spec}
        )

    seqio.TaskRegistry.remove(GENERATOR_TASK)
    seqio.TaskRegistry.add(
        GENERATOR_TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
    )
    yield GENERATOR_TASK
    seqio.TaskRegistry.remove(GENERATOR_TASK)


def test_uncheckpointable_source_warns_once_and_resumes_by_skipping(
    tmp_path, caplog, generator_task
) -> None:
    kw = dict(task_feature_lengths={"inputs": 8, "targets": 4}, batch_size=2, shuffle=False)
    expected = _take(data.DataIterator(generator_task, **kw), 4)

    def make(shard_id: int) -> data.DataIterator:
        return data.DataIterator(generator_task, **kw)

    batches = host_data.ShardedBatches(make, 1, [0])
    _take(batches, 2)
    caplog.set_level(logging.INFO, logger="t5x_instruct")
    batches.save_iterators(str(tmp_path / "2"), step=2)
    batches.save_iterators(str(tmp_path / "2"), step=2)
    warnings = [r for r in caplog.records if "cannot checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "tf.data cannot checkpoint" in warnings[0].getMessage()
    assert not (tmp_path / "2" / "shard_0").exists()  # nothing half-written is left

    resumed = host_data.ShardedBatches(make, 1, [0])
    assert resumed.restore(batches.state(), str(tmp_path / "2"), step=2) is False
    assert SKIPPING in caplog.text
    _assert_same([b[0] for b in _take(resumed, 2)], expected[2:4])


def test_owned_shards_go_to_the_lowest_process_reading_them() -> None:
    class Device:
        def __init__(self, process_index: int) -> None:
            self.process_index = process_index

    class Sharding:  # 4 devices on 2 processes; device i holds rows [2i, 2i+2) of 8
        def __init__(self) -> None:
            self.device_set = {Device(i // 2) for i in range(4)}

        def devices_indices_map(self, shape):
            order = sorted(self.device_set, key=lambda d: (d.process_index, id(d)))
            return {d: (slice(2 * i, 2 * i + 2),) for i, d in enumerate(order)}

    sharding = Sharding()
    # 2 shards of 4 rows: process 0 reads shard 0, process 1 shard 1.
    assert host_data.owned_shards(sharding, 8, 2, process_index=0) == [0]
    assert host_data.owned_shards(sharding, 8, 2, process_index=1) == [1]
    # 1 shard read by both: process 0 writes it.
    assert host_data.owned_shards(sharding, 8, 1, process_index=0) == [0]
    assert host_data.owned_shards(sharding, 8, 1, process_index=1) == []


TINY_T5 = T5Config(
    vocab_size=640, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip


def _train(model_dir, steps: int) -> None:
    gin.clear_config()
    gin.parse_config(["make_optimizer.name = 'adamw'"])
    train(
        model_dir=str(model_dir),
        mixture_or_task_name="demo_arithmetic",
        task_feature_lengths=dict(LENGTHS),
        train_steps=steps,
        batch_size=8,
        data_shards=2,  # two shard folders per step, one pipeline each
        log_period=1,
        checkpoint_period=3,
        final_eval=False,
        progress_bar=False,
        model_spec=ModelSpec.create(lambda: build_model(TINY_T5)),
    )


def _losses(model_dir) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in read_metrics(str(model_dir))}


def test_interrupted_training_resumes_from_iterator_checkpoints_with_identical_losses(
    tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="t5x_instruct")
    _train(tmp_path / "straight", 6)
    expected = _losses(tmp_path / "straight")

    run = tmp_path / "run"
    _train(run, 3)
    assert sorted(p.name for p in (run / "data_state" / "3").iterdir()) == ["shard_0", "shard_1"]
    fallback = tmp_path / "fallback"
    shutil.copytree(run, fallback)
    shutil.rmtree(fallback / "data_state")

    caplog.clear()
    _train(run, 6)
    assert RESTORED in caplog.text and SKIPPING not in caplog.text, caplog.text
    assert _losses(run) == expected  # bit-identical: same batches, same math
    # Only the steps orbax keeps have data-state folders.
    checkpoints = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert sorted(int(p.name) for p in (run / "data_state").iterdir()) == checkpoints == [3, 6]

    caplog.clear()
    _train(fallback, 6)
    assert SKIPPING in caplog.text and "no iterator checkpoint" in caplog.text, caplog.text
    assert RESTORED not in caplog.text
    assert _losses(fallback) == expected
