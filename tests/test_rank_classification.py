"""Rank classification: one row per answer choice, and accuracy from per-row log-likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_instruct.data.rank_classification import (
    rank_classification,
    rank_classification_accuracy,
    rank_classification_postprocessor,
)


def _rows(examples: list[dict]) -> list[dict]:
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "inputs": tf.TensorSpec([], tf.string),
            "answer_choices": tf.TensorSpec([None], tf.string),
            "targets": tf.TensorSpec([None], tf.string)
            if isinstance(examples[0]["targets"], list)
            else tf.TensorSpec([], tf.string),
        },
    )
    return list(rank_classification(ds).as_numpy_iterator())


def test_expansion_gives_one_row_per_choice_with_index_and_correctness():
    examples = [
        {"inputs": "q0", "answer_choices": ["yes", "no"], "targets": "no"},
        {"inputs": "q1", "answer_choices": ["a", "b", "c"], "targets": " a "},  # stripped
        {"inputs": "q2", "answer_choices": ["w", "x", "y", "z"], "targets": "z"},
    ]
    rows = _rows(examples)
    assert len(rows) == 2 + 3 + 4
    assert [tuple(r["idx"]) for r in rows] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3),
    ]  # fmt: skip
    assert [r["inputs"] for r in rows] == [b"q0"] * 2 + [b"q1"] * 3 + [b"q2"] * 4
    assert [r["targets"].decode() for r in rows] == ["yes", "no", "a", "b", "c", "w", "x", "y", "z"]
    assert [bool(r["is_correct"]) for r in rows] == [
        False, True, True, False, False, False, False, False, True,
    ]  # fmt: skip
    assert all(r["idx"].dtype == np.int32 for r in rows)


def test_expansion_with_several_correct_answers():
    rows = _rows(
        [
            {
                "inputs": "q",
                "answer_choices": ["red", "blue", "green"],
                "targets": ["green", "red"],
            },
            {"inputs": "r", "answer_choices": ["x", "y"], "targets": ["nothing"]},
        ]
    )
    assert [bool(r["is_correct"]) for r in rows] == [True, False, True, False, False]


def _t(example: int, choice: int, correct: bool):
    return ((example, choice), correct)


def test_accuracy_on_hand_made_examples_with_tie_and_multi_correct():
    targets = [
        # 0: correct choice (1) scores highest -> right
        _t(0, 0, False), _t(0, 1, True), _t(0, 2, False),
        # 1: a wrong choice scores highest -> wrong
        _t(1, 0, True), _t(1, 1, False),
        # 2: tie between wrong choice 0 and correct choice 1 -> lowest index (wrong) wins
        _t(2, 0, False), _t(2, 1, True),
        # 3: tie between correct choice 0 and wrong choice 1 -> right
        _t(3, 0, True), _t(3, 1, False),
        # 4: two correct choices; the best is the second correct one -> right
        _t(4, 0, True), _t(4, 1, False), _t(4, 2, True),
    ]  # fmt: skip
    scores = [
        -3.0, -1.0, -2.0,
        -0.5, -0.1,
        -2.0, -2.0,
        -1.0, -1.0,
        -4.0, -2.0, -1.5,
    ]  # fmt: skip
    result = rank_classification_accuracy(targets, scores)
    assert result == {"accuracy": pytest.approx(3 / 5)}
    # Row order does not matter (rows are grouped by example index).
    order = np.random.default_rng(0).permutation(len(targets))
    shuffled = rank_classification_accuracy([targets[i] for i in order], [scores[i] for i in order])
    assert shuffled == result


def test_nan_scores_rank_last_and_bad_inputs_raise():
    assert rank_classification_accuracy([_t(0, 0, False), _t(0, 1, True)], [math.nan, -9.0]) == {
        "accuracy": 1.0
    }
    assert rank_classification_accuracy([], []) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="2 targets but 1 scores"):
        rank_classification_accuracy([_t(0, 0, True), _t(0, 1, False)], [0.0])
    with pytest.raises(ValueError, match="example 0 choice 1 appears twice"):
        rank_classification_accuracy([_t(0, 1, True), _t(0, 1, False)], [0.0, 1.0])


def test_postprocessor_and_seqio_metric_wiring():
    example = {"idx": np.array([7, 2], np.int32), "is_correct": np.bool_(True)}
    assert rank_classification_postprocessor(b"x", example=example, is_target=True) == (
        (7, 2),
        True,
    )
    assert rank_classification_postprocessor(-1.25, example=example) == -1.25
    vocab = seqio.ByteVocabulary()
    task = seqio.Task(
        "rank_classification_wiring_test",
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["validation"]),
        output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)},
        postprocess_fn=rank_classification_postprocessor,
        metric_fns=[rank_classification_accuracy],
    )
    assert list(task.score_metric_fns) == [rank_classification_accuracy]
    assert not task.predict_metric_fns
