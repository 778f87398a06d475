"""Eval examples: the real example reaches postprocessors, long inputs are truncated as the
training pipeline truncates them, and score (rank-classification) tasks give a scorer its
rows, choices and model-feature batches. Oracles: UTF-8 byte ids by hand, SeqIO's own
training pipeline for truncation and features, hand-counted accuracies."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks.demo
from t5x_instruct import data
from t5x_instruct.data.metrics import exact_match
from t5x_instruct.data.rank_classification import (
    rank_classification,
    rank_classification_accuracy,
    rank_classification_postprocessor,
)

VOCAB = seqio.ByteVocabulary()
RC_TASK = "eval_examples_test_rank_classification"
PLAIN_TASK = "eval_examples_test_plain_eos"
RC_EXAMPLES = [
    {"inputs": "Is it red?", "answer_choices": ["yes", "no"], "targets": "no"},
    {"inputs": "Pick", "answer_choices": ["a", "bb", "cccc"], "targets": "bb"},
    {"inputs": "Q", "answer_choices": ["x", "y"], "targets": "x"},
]


def _ids(text: str) -> list[int]:
    """The byte vocabulary by hand: UTF-8 bytes shifted past pad/eos/unk, then EOS (1)."""
    return [b + 3 for b in text.encode("utf-8")] + [1]


def _source(rows: list[dict], signature: dict) -> seqio.DataSource:
    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=signature)

    return seqio.FunctionDataSource(dataset_fn, splits=["validation"])


def _features() -> dict[str, seqio.Feature]:
    return {"inputs": seqio.Feature(VOCAB, add_eos=True), "targets": seqio.Feature(VOCAB)}


@pytest.fixture(scope="module")
def rc_task():
    signature = {
        "inputs": tf.TensorSpec([], tf.string),
        "answer_choices": tf.TensorSpec([None], tf.string),
        "targets": tf.TensorSpec([], tf.string),
    }
    seqio.TaskRegistry.remove(RC_TASK)
    task = seqio.TaskRegistry.add(
        RC_TASK,
        source=_source(RC_EXAMPLES, signature),
        output_features=_features(),
        preprocessors=[
            rank_classification,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        postprocess_fn=rank_classification_postprocessor,
        metric_fns=[rank_classification_accuracy],
    )
    yield task
    seqio.TaskRegistry.remove(RC_TASK)


def test_score_examples_group_choices_with_their_token_ids(rc_task):
    (scored,) = data.get_score_examples(RC_TASK, "validation")
    assert len(scored) == 7 and scored.task_name == RC_TASK
    assert [e.index for e in scored.examples] == [0, 1, 2]
    for example, raw in zip(scored.examples, RC_EXAMPLES):
        assert example.inputs_text == raw["inputs"]
        assert example.input_tokens.tolist() == _ids(raw["inputs"])
        assert example.choices_text == tuple(raw["answer_choices"])
        assert [c.tolist() for c in example.choice_tokens] == [
            _ids(c) for c in raw["answer_choices"]
        ]
        assert example.is_correct == tuple(c == raw["targets"] for c in raw["answer_choices"])
    assert [e.rows for e in scored.examples] == [(0, 1), (2, 3, 4), (5, 6)]
    assert [e.correct_choices for e in scored.examples] == [(1,), (1,), (0,)]


def test_score_batches_are_the_training_features_with_row_ids(rc_task):
    (scored,) = data.get_score_examples(RC_TASK, "validation")
    lengths = {"inputs": 8, "targets": 4}
    batches = scored.batches(
        model_type="encoder_decoder", task_feature_lengths=lengths, batch_size=3
    )
    assert [b.rows.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, -1, -1]]
    # By hand: "Is it red?" is 10 bytes + EOS, cut to its first 7 bytes and EOS; "cccc" + EOS
    # to "ccc" + EOS; the decoder reads the targets shifted right behind a 0.
    rows = [(i, c) for i in (0, 1, 2) for c in RC_EXAMPLES[i]["answer_choices"]]
    enc = np.zeros((9, 8), np.int32)
    tgt = np.zeros((9, 4), np.int32)
    for r, (i, choice) in enumerate(rows):
        ids = _ids(RC_EXAMPLES[i]["inputs"])
        ids = ids if len(ids) <= 8 else ids[:7] + [1]
        enc[r, : len(ids)] = ids
        t = _ids(choice)
        t = t if len(t) <= 4 else t[:3] + [1]
        tgt[r, : len(t)] = t
    features = {k: np.concatenate([b.features[k] for b in batches]) for k in batches[0].features}
    for v in features.values():  # padding rows repeat the last batch's first row
        np.testing.assert_array_equal(v[7:], v[[6, 6]])
    enc[7:], tgt[7:] = enc[6], tgt[6]
    np.testing.assert_array_equal(features["encoder_input_tokens"], enc)
    np.testing.assert_array_equal(features["decoder_target_tokens"], tgt)
    np.testing.assert_array_equal(features["decoder_input_tokens"][:, 1:], tgt[:, :-1])
    np.testing.assert_array_equal(features["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(features["decoder_loss_weights"], (tgt != 0).astype(np.int32))
    # The training pipeline (SeqIO truncating and converting the same rows) agrees exactly,
    # for both model families that read inputs.
    for model_type in ("encoder_decoder", "prefix_lm"):
        train = list(
            data.get_dataset(
                RC_TASK, task_feature_lengths=lengths, split="validation", batch_size=1,
                shuffle=False, num_epochs=1, model_type=model_type,
            ).as_numpy_iterator()
        )  # fmt: skip
        ours = scored.batches(model_type=model_type, task_feature_lengths=lengths, batch_size=7)
        assert ours[0].rows.tolist() == list(range(7))
        for key in train[0]:
            expected = np.concatenate([b[key] for b in train])
            np.testing.assert_array_equal(ours[0].features[key], expected, err_msg=key)
    with pytest.raises(ValueError, match="model_type='decoder'"):
        scored.batches(model_type="decoder", task_feature_lengths=lengths, batch_size=2)


def test_a_scorer_gets_rank_classification_accuracy_from_row_scores(rc_task):
    (scored,) = data.get_score_examples(RC_TASK, "validation")
    lengths = {"inputs": 8, "targets": 4}
    # A stand-in model giving every target token log-probability -1: the shortest choice wins.
    scores = np.zeros(len(scored))
    for batch in scored.batches(
        model_type="encoder_decoder", task_feature_lengths=lengths, batch_size=4
    ):
        per_row = -batch.features["decoder_loss_weights"].sum(axis=1)
        real = batch.rows >= 0
        scores[batch.rows[real]] = per_row[real]
    assert scores.tolist() == [-4, -3, -2, -3, -4, -2, -2]
    # Example 0: "no" (3 ids) beats "yes" (4): right. Example 1: "a" beats "bb": wrong.
    # Example 2: "x" and "y" tie; the lower choice index, "x", wins: right.
    assert scored.metrics(scores.tolist()) == {"accuracy": pytest.approx(2 / 3)}
    assert scored.choice_scores(scores.tolist()) == [(-4, -3), (-2, -3, -4), (-2, -2)]
    with pytest.raises(ValueError, match="3 scores for 7 rows"):
        scored.choice_scores([0.0, 0.0, 0.0])


def test_score_tasks_in_eval_examples_postprocess_with_the_real_example(rc_task):
    (ev,) = data.get_eval_examples(RC_TASK, "validation")
    assert ev.needs_scoring and not ev.needs_decoding
    assert ev.postprocessed_targets() == [
        ((0, 0), False), ((0, 1), True), ((1, 0), False), ((1, 1), True), ((1, 2), False),
        ((2, 0), True), ((2, 1), False),
    ]  # fmt: skip
    assert ev.examples[3]["inputs_pretokenized"] == b"Pick"
    # Best choices: 0 (wrong), 1 (right), 0 (right).
    assert ev.score_from_scores([1, 0, 0, 1, 0, 1, 0]) == {"accuracy": pytest.approx(2 / 3)}
    # A cap counts examples, never cutting one's choices apart.
    (capped,) = data.get_score_examples(RC_TASK, "validation", max_examples=2)
    assert len(capped) == 5 and [e.rows for e in capped.examples] == [(0, 1), (2, 3, 4)]
    with pytest.raises(ValueError, match="No task of 'demo_eval' has score metrics"):
        data.get_score_examples("demo_eval", "validation")


def test_postprocessor_receives_the_example_of_each_prediction_and_target():
    calls = []

    def postprocess(output, example=None, is_target=False):
        calls.append((output, example["inputs_pretokenized"].decode(), is_target))
        return output.strip()

    rows = [{"inputs": f"in{i}", "targets": f"out{i}"} for i in range(3)]
    signature = {k: tf.TensorSpec([], tf.string) for k in ("inputs", "targets")}
    name = "eval_examples_test_postprocess"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=_source(rows, signature), output_features=_features(),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        postprocess_fn=postprocess, metric_fns=[exact_match],
    )  # fmt: skip
    try:
        (ev,) = data.get_eval_examples(name, "validation")
        assert ev.needs_decoding and not ev.needs_scoring
        assert ev.score([" out0", "out1 ", "nope"]) == {"exact_match": pytest.approx(2 / 3)}
        assert sorted(calls) == sorted(
            [(f"out{i}", f"in{i}", True) for i in range(3)]
            + [(" out0", "in0", False), ("out1 ", "in1", False), ("nope", "in2", False)]
        )
    finally:
        seqio.TaskRegistry.remove(name)


def _training_inputs(task_name: str, length: int, n: int) -> np.ndarray:
    """The inputs SeqIO's pipeline builds for training at ``length`` (the oracle)."""
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(
        sequence_length={"inputs": length, "targets": 64}, split="validation", shuffle=False
    )
    rows = [ex["inputs"] for ex in ds.take(n).as_numpy_iterator()]
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def test_long_eval_inputs_are_truncated_as_in_training(caplog):
    name = tasks.demo.HELDOUT_TASK
    (ev,) = data.get_eval_examples(name, "validation", max_examples=10)
    with caplog.at_level(logging.WARNING):
        short = ev.inputs_array(6)
    np.testing.assert_array_equal(short, _training_inputs(name, 6, 10))
    assert (short[:, -1] == 1).all()  # append_eos_after_trim: the EOS survives the cut
    assert f"{name!r}" in caplog.text and "10 of 10 inputs are longer than 6" in caplog.text
    assert ev.num_truncated(6) == 10 and ev.num_truncated(10_000) == 0
    targets = ev.targets_array(2)
    assert (targets[:, 1] == 1).all()


def test_a_task_appending_eos_before_trimming_loses_it_as_in_training():
    rows = [{"inputs": "abcdefgh", "targets": "t"}, {"inputs": "ab", "targets": "u"}]
    signature = {k: tf.TensorSpec([], tf.string) for k in ("inputs", "targets")}
    seqio.TaskRegistry.remove(PLAIN_TASK)
    seqio.TaskRegistry.add(
        PLAIN_TASK, source=_source(rows, signature), output_features=_features(),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        metric_fns=[exact_match],
    )  # fmt: skip
    try:
        (ev,) = data.get_eval_examples(PLAIN_TASK, "validation")
        got = ev.inputs_array(4)
        np.testing.assert_array_equal(got, _training_inputs(PLAIN_TASK, 4, 2))
        assert got.tolist() == [_ids("abcd")[:4], _ids("ab") + [0]]
    finally:
        seqio.TaskRegistry.remove(PLAIN_TASK)
