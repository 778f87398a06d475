"""Rank classification: score every answer choice, predict the most likely one (T0's eval).

A multiple-choice example ``{inputs, answer_choices, targets}`` becomes one row per choice
(:func:`rank_classification`); the model scores each row by the log-likelihood of its
``targets`` (the choice) given ``inputs``; :func:`rank_classification_accuracy` groups the rows
back by example and counts the example right when the best-scoring choice is a correct one.
Rows carry ``idx = [example index, choice index]`` and ``is_correct``, which
:func:`rank_classification_postprocessor` hands to the metric as the SeqIO "target".

Ties are broken towards the lowest choice index (like ``argmax``), so the metric is a pure
function of its inputs. An example may have several correct choices (any counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

RankTarget = tuple[tuple[int, int], bool]


@seqio.map_over_dataset
def _strip_choices(ex: Mapping[str, tf.Tensor], choices_key: str) -> dict[str, tf.Tensor]:
    out = dict(ex)
    out[choices_key] = tf.strings.strip(ex[choices_key])
    return out


def rank_classification(
    dataset: tf.data.Dataset,
    *,
    choices_key: str = "answer_choices",
    inputs_key: str = "inputs",
    targets_key: str = "targets",
) -> tf.data.Dataset:
    """Expands each example into one row per answer choice.

    Args:
      dataset: examples with a string ``inputs``, a 1-D string ``answer_choices`` and the
        correct answer in ``targets``: a string (one correct choice) or a 1-D string tensor
        (several correct choices). Comparison ignores surrounding whitespace.
      choices_key, inputs_key, targets_key: the feature names.

    Returns:
      Rows ``{'idx': int32[2], 'inputs': str, 'targets': choice, 'is_correct': bool}``,
      ``sum(len(choices))`` of them, in example then choice order. The example index is the
      position in ``dataset`` (so evaluate unshuffled).
    """
    dataset = _strip_choices(dataset, choices_key=choices_key)

    def expand(index: tf.Tensor, ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        choices = ex[choices_key]
        n = tf.shape(choices)[0]
        correct = tf.reshape(tf.strings.strip(ex[targets_key]), [-1])
        is_correct = tf.reduce_any(tf.equal(choices[:, None], correct[None, :]), axis=1)
        idx = tf.stack(
            [tf.fill([n], tf.cast(index, tf.int32)), tf.range(n, dtype=tf.int32)], axis=1
        )
        return tf.data.Dataset.from_tensor_slices(
            {
                "idx": idx,
                inputs_key: tf.fill([n], ex[inputs_key]),
                "targets": choices,
                "is_correct": is_correct,
            }
        )

    return dataset.enumerate().flat_map(expand)


def rank_classification_postprocessor(
    output: Any, example: Mapping[str, Any] | None = None, is_target: bool = False
) -> Any:
    """SeqIO postprocess fn: a target becomes ``((example, choice), is_correct)``; model
    outputs (scores) pass through."""
    if not is_target:
        return output
    if example is None:
        raise ValueError("rank_classification_postprocessor needs the example for targets.")
    idx = np.asarray(example["idx"]).reshape(-1)
    return (int(idx[0]), int(idx[1])), bool(example["is_correct"])


def rank_classification_accuracy(
    targets: Sequence[RankTarget], scores: Sequence[float]
) -> dict[str, float]:
    """Accuracy (0..1) over examples from per-row targets and log-likelihood ``scores``.

    ``targets[i]`` is ``((example_index, choice_index), is_correct)`` for row ``i``. An
    example is right when its highest-scoring choice is correct; among equal scores the
    lowest choice index wins, and a NaN score ranks last. Raises ``ValueError`` on length
    mismatch or a repeated row.
    """
    if len(targets) != len(scores):
        raise ValueError(
            f"rank_classification_accuracy: {len(targets)} targets but {len(scores)} scores."
        )
    examples: dict[int, dict[int, tuple[float, bool]]] = {}
    for ((example, choice), correct), score in zip(targets, scores, strict=True):
        rows = examples.setdefault(int(example), {})
        if int(choice) in rows:
            raise ValueError(
                f"rank_classification_accuracy: example {example} choice {choice} appears twice."
            )
        value = float(score)
        rows[int(choice)] = (-math.inf if math.isnan(value) else value, bool(correct))
    if not examples:
        return {"accuracy": 0.0}
    right = 0
    for rows in examples.values():
        best = min(rows, key=lambda c: (-rows[c][0], c))
        right += rows[best][1]
    return {"accuracy": right / len(examples)}
