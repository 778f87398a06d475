"""What a model scorer needs for score-metric tasks (rank classification, P3 ``_score_eval``).

A rank-classification task has one *row* per (example, answer choice): the example's inputs
and one choice as targets, ``idx = [example, choice]`` and ``is_correct``
(:mod:`t5x_instruct.data.rank_classification`). A scorer computes each row's log-likelihood
of its targets (T5X ``score_batch``: the sum of target-token log-probabilities where
``decoder_loss_weights`` is 1) and hands the row scores back to :meth:`ScoreExamples.metrics`,
which applies the task's own postprocessor and score-metric fns (accuracy: the best-scoring
choice of each example is a correct one).

:func:`get_score_examples` gives, per task, the rows (:class:`EvalExamples`), the rows grouped
per example (:class:`RankClassificationExample`: candidate target ids per choice and which are
correct), and :meth:`ScoreExamples.batches`: the rows as model features made by SeqIO's own
feature converter (exactly the training features, unpacked), with the row index of each batch
row (-1 on the padding rows of the last batch). The batches fit
:func:`t5x_instruct.decoding.scoring.score_batch`: its ``sequence_scores`` of the rows with
``rows >= 0`` are the row scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from t5x_instruct.data.evaluation import EvalExamples, task_eval_examples
from t5x_instruct.data.feature_converters import get_feature_converter, required_task_features
from t5x_instruct.data.registry import get_mixture_or_task, leaf_tasks


@dataclasses.dataclass(frozen=True)
class RankClassificationExample:
    """One multiple-choice example: its prompt and every candidate answer as token ids.

    ``input_tokens`` and ``choice_tokens`` are unpadded, untrimmed and end in EOS, as the task
    tokenises them; ``rows`` are the positions of the choices in :attr:`ScoreExamples.rows`.
    """

    index: int
    inputs_text: str
    input_tokens: np.ndarray
    choices_text: tuple[str, ...]
    choice_tokens: tuple[np.ndarray, ...]
    is_correct: tuple[bool, ...]
    rows: tuple[int, ...]

    @property
    def correct_choices(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.is_correct) if c)


@dataclasses.dataclass(frozen=True)
class ScoreBatch:
    """Model features of ``batch_size`` rows; ``rows[i]`` is the row index of batch row ``i``
    in :attr:`ScoreExamples.rows`, or -1 for a padding row (a copy of the batch's first row,
    so no kernel sees an all-padding sequence; drop its score)."""

    features: dict[str, np.ndarray]
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class ScoreExamples:
    """One score-metric task's split: its rows and, for rank classification, the examples."""

    rows: EvalExamples
    examples: tuple[RankClassificationExample, ...]

    @property
    def task_name(self) -> str:
        return self.rows.task_name

    @property
    def group(self) -> str:
        return self.rows.group

    @property
    def split(self) -> str:
        return self.rows.split

    def __len__(self) -> int:
        """Number of rows (one per example and choice)."""
        return len(self.rows)

    def batches(
        self, *, model_type: str, task_feature_lengths: Mapping[str, int], batch_size: int
    ) -> list[ScoreBatch]:
        """Every row as model features of ``model_type``, ``batch_size`` rows per batch.

        Rows are truncated as in training (counted in the log) and converted by the same
        SeqIO feature converter as training batches (unpacked); the last batch is padded with
        copies of its first row (``rows == -1``) so every batch has one shape.
        """
        if model_type == "decoder":
            raise ValueError(
                f"Score task {self.task_name!r} needs inputs; model_type='decoder' (plain LM on "
                "targets) has none. Use 'prefix_lm' or 'encoder_decoder'."
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        lengths = {k: int(task_feature_lengths[k]) for k in required_task_features(model_type)}
        inputs = self.rows.trimmed_tokens("inputs", lengths["inputs"])
        targets = self.rows.trimmed_tokens("targets", lengths["targets"])
        ds = tf.data.Dataset.from_generator(
            lambda: ({"inputs": i, "targets": t} for i, t in zip(inputs, targets)),
            output_signature={
                "inputs": tf.TensorSpec([None], tf.int32),
                "targets": tf.TensorSpec([None], tf.int32),
            },
        )
        converted = list(
            get_feature_converter(model_type, pack=False)(ds, lengths).as_numpy_iterator()
        )
        out = []
        for start in range(0, len(converted), batch_size):
            chunk = converted[start : start + batch_size]
            rows = np.arange(start, start + len(chunk), dtype=np.int32)
            features = {k: np.stack([c[k] for c in chunk]) for k in chunk[0]}
            if len(chunk) < batch_size:
                pad = batch_size - len(chunk)
                features = {
                    k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)])
                    for k, v in features.items()
                }
                rows = np.concatenate([rows, np.full(pad, -1, np.int32)])
            out.append(ScoreBatch(features, rows))
        return out

    def metrics(self, scores: Sequence[float]) -> dict[str, float]:
        """The task's score metrics (e.g. ``{'accuracy': ...}``) of per-row log-likelihoods,
        in row order."""
        return self.rows.score_from_scores(scores)

    def choice_scores(self, scores: Sequence[float]) -> list[tuple[float, ...]]:
        """Per-row scores regrouped per example (choice order)."""
        if len(scores) != len(self):
            raise ValueError(f"Task {self.task_name!r}: {len(scores)} scores for {len(self)} rows.")
        return [tuple(float(scores[r]) for r in ex.rows) for ex in self.examples]


def group_rank_classification(rows: EvalExamples) -> tuple[RankClassificationExample, ...]:
    """The rows of a rank-classification task grouped per example (empty if the rows carry no
    ``idx`` / ``is_correct``)."""
    if not rows.examples or any("idx" not in e or "is_correct" not in e for e in rows.examples):
        return ()
    order: dict[int, list[int]] = {}
    for r, ex in enumerate(rows.examples):
        order.setdefault(int(np.asarray(ex["idx"])[0]), []).append(r)
    out = []
    for index, members in order.items():
        members.sort(key=lambda r: int(np.asarray(rows.examples[r]["idx"])[1]))
        first = members[0]
        out.append(
            RankClassificationExample(
                index=index,
                inputs_text=rows.inputs_text[first],
                input_tokens=rows.input_tokens[first],
                choices_text=tuple(rows.targets_text[r] for r in members),
                choice_tokens=tuple(rows.target_tokens[r] for r in members),
                is_correct=tuple(bool(rows.examples[r]["is_correct"]) for r in members),
                rows=tuple(members),
            )
        )
    return tuple(out)


def get_score_examples(
    mixture_or_task_name: str, split: str = "validation", *, max_examples: int | None = None
) -> list[ScoreExamples]:
    """Score-metric tasks of a task or mixture, ready for a model scorer.

    Args:
      mixture_or_task_name: a registered task or mixture (e.g. ``'t0_eval_score_eval'``).
      split: the split to read.
      max_examples: cap per task on examples (all choices of an example are kept).

    Returns:
      One :class:`ScoreExamples` per task with score-metric fns and ``split``, sorted by name.
    """
    get_mixture_or_task(mixture_or_task_name)  # clear error for unknown names
    tasks = [
        t for t in leaf_tasks(mixture_or_task_name) if t.score_metric_fns and split in t.splits
    ]
    if not tasks:
        raise ValueError(
            f"No task of {mixture_or_task_name!r} has score metrics and a {split!r} split."
        )
    out = []
    for task in sorted(tasks, key=lambda t: t.name):
        rows = task_eval_examples(task, split, max_examples)
        out.append(ScoreExamples(rows, group_rank_classification(rows)))
    return out
