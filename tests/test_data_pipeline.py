"""Training input pipeline: determinism, per-host sharding, resumable iteration, clear errors."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

import tasks.demo
from t5x_instruct import data

LENGTHS = tasks.demo.TASK_FEATURE_LENGTHS
MIXTURE = tasks.demo.TRAIN_MIXTURE


def _take(ds_or_it, n: int) -> list[dict[str, np.ndarray]]:
    it = ds_or_it.as_numpy_iterator() if hasattr(ds_or_it, "as_numpy_iterator") else ds_or_it
    return [next(it) for _ in range(n)]


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _rows(ds) -> collections.Counter:
    return collections.Counter(
        (tuple(b["encoder_input_tokens"][i]), tuple(b["decoder_target_tokens"][i]))
        for b in ds.as_numpy_iterator()
        for i in range(len(b["encoder_input_tokens"]))
    )


def test_same_seed_gives_identical_batches_and_other_seed_differs():
    kw = dict(task_feature_lengths=LENGTHS, batch_size=8, shuffle=True)
    first = _take(data.get_dataset(MIXTURE, seed=3, **kw), 5)
    _assert_same(first, _take(data.get_dataset(MIXTURE, seed=3, **kw), 5))
    other = _take(data.get_dataset(MIXTURE, seed=4, **kw), 5)
    assert any(
        not np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
        for a, b in zip(first, other, strict=True)
    )
    batch = first[0]
    assert set(batch) == {
        "encoder_input_tokens",
        "decoder_target_tokens",
        "decoder_input_tokens",
        "decoder_loss_weights",
    }
    assert batch["encoder_input_tokens"].shape == (8, LENGTHS["inputs"])
    assert batch["decoder_target_tokens"].shape == (8, LENGTHS["targets"])
    assert all(v.dtype == np.int32 for v in batch.values())


def test_shards_partition_the_examples():
    kw = dict(
        task_feature_lengths=LENGTHS, split="validation", batch_size=1, shuffle=True, seed=0,
        num_epochs=1,
    )  # fmt: skip
    full = _rows(data.get_dataset("demo_contains", **kw))
    shards = [
        _rows(data.get_dataset("demo_contains", shard_id=i, num_shards=2, **kw)) for i in range(2)
    ]
    assert sum(full.values()) == 200
    assert shards[0] + shards[1] == full  # together exactly the unsharded examples...
    assert not set(shards[0]) & set(shards[1])  # ...and no example on both hosts
    assert sum(shards[0].values()) == sum(shards[1].values()) == 100


def test_data_iterator_resume_equals_uninterrupted_run():
    kw = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=11, pack=True)
    uninterrupted = data.DataIterator(MIXTURE, **kw)
    expected = _take(uninterrupted, 12)

    run = data.DataIterator(MIXTURE, **kw)
    _take(run, 7)
    state = json.loads(json.dumps(run.state()))  # checkpoints store it as JSON
    assert state["batches_consumed"] == 7

    resumed = data.DataIterator.from_state(state)
    _assert_same(_take(resumed, 5), expected[7:])
    assert resumed.state()["batches_consumed"] == 12

    fresh = data.DataIterator(MIXTURE, **kw)  # the trainer's path: rebuild from config, restore
    fresh.restore(state)
    _assert_same(_take(fresh, 5), expected[7:])

    other = data.DataIterator(MIXTURE, **{**kw, "batch_size": 8})
    with pytest.raises(ValueError, match="batch_size"):
        other.restore(state)
    assert set(resumed.element_spec) == set(expected[0])


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean: demo_instructions") as e:
        data.get_dataset("demo_instrutions", task_feature_lengths=LENGTHS, batch_size=2)
    assert "demo_instrutions" in str(e.value)
    with pytest.raises(ValueError, match="demo_sentiment"):
        data.get_eval_examples("demo_sentimnet")


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="model_type='prefix_lm'"):
        data.get_dataset(MIXTURE, task_feature_lengths=LENGTHS, batch_size=2, model_type="decoder")
    with pytest.raises(ValueError, match="no split 'train'"):
        data.get_dataset(tasks.demo.HELDOUT_TASK, task_feature_lengths=LENGTHS, batch_size=2)
    with pytest.raises(ValueError, match="shard_id=2"):
        data.get_dataset(MIXTURE, task_feature_lengths=LENGTHS, batch_size=2, shard_id=2)
    with pytest.raises(ValueError, match="lacks \\['targets'\\]"):
        data.get_dataset(MIXTURE, task_feature_lengths={"inputs": 8}, batch_size=2)
    with pytest.raises(ValueError, match="Unknown model_type"):
        data.get_feature_converter("bert", pack=False)


def test_vocabularies():
    sp = data.get_vocabulary("sentencepiece", tasks.demo.VOCAB_PATH)
    assert (sp.pad_id, sp.eos_id, sp.unk_id, sp.vocab_size) == (0, 1, 2, 600)
    assert sp.decode(sp.encode("Reverse the list: cat, dog.")) == "Reverse the list: cat, dog."
    byte = data.get_vocabulary("byte")
    assert byte.decode(byte.encode("héllo")) == "héllo"
    with pytest.raises(ValueError, match="needs path"):
        data.get_vocabulary("sentencepiece")
    with pytest.raises(FileNotFoundError, match=r"missing\.model"):
        data.get_vocabulary("sentencepiece", "/nonexistent/missing.model")
