"""Raw evaluation examples per task, for metrics by decoding or by scoring.

The trainer decodes ``inputs_array(length)`` (encoder inputs, or the prefix of a prefix-LM),
turns each output row into text with ``decode``, and calls ``score`` which applies the task's
own SeqIO postprocessor (given the example, as SeqIO does) and predict-metric fns. Tasks with
score-metric fns (rank classification, ``_score_eval``) are evaluated from per-row model
log-likelihoods instead: see :mod:`t5x_instruct.data.scoring`.

Inputs longer than the eval length are truncated exactly as the training pipeline truncates
them (SeqIO's ``append_eos_after_trim`` keeps the first ``length - 1`` ids and the EOS), with
a count in the log naming the task; never an error mid-run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from t5x_instruct.data.registry import get_mixture_or_task, leaf_tasks, task_group

log = logging.getLogger(__name__)
_logged_truncations: set[tuple[str, str, str, int]] = set()


def trim_tokens(tokens: np.ndarray, length: int, eos_id: int | None) -> np.ndarray:
    """``tokens`` cut to ``length`` ids as SeqIO's training pipeline cuts them: with an
    ``eos_id`` (a feature whose task appends EOS after trimming) the first ``length - 1`` ids
    and the EOS, else the first ``length`` ids."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}.")
    if len(tokens) <= length:
        return tokens
    if eos_id is None:
        return tokens[:length]
    return np.concatenate([tokens[: length - 1], np.asarray([eos_id], tokens.dtype)])


def _is_fn(step: Any, fn: Callable[..., Any]) -> bool:
    while isinstance(step, functools.partial):
        step = step.func
    return step is fn


def trim_eos_ids(task: seqio.Task) -> dict[str, int | None]:
    """Per output feature, the EOS id its training pipeline re-appends after trimming
    (``append_eos_after_trim`` on an ``add_eos`` feature), else ``None`` (plain cut)."""
    after_trim = any(
        _is_fn(p, seqio.preprocessors.append_eos_after_trim) for p in task.preprocessors
    )
    return {
        name: feature.vocabulary.eos_id if after_trim and feature.add_eos else None
        for name, feature in task.output_features.items()
    }


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """One task's evaluation split: token ids, texts, the raw examples, and how to score.

    Attributes:
      task_name: the SeqIO task.
      group: evaluation group (``train_tasks``, ``heldout_templates`` or ``heldout_task``).
      split: the split the examples come from.
      input_tokens: per example, the 1-D int32 ``inputs`` ids ending in EOS (unpadded, untrimmed).
      inputs_text: the untokenised inputs (for logging samples).
      targets_text: the untokenised targets, as written in the data.
      vocabulary: the task's output vocabulary (decoding predictions).
      postprocess_fn: the task's SeqIO postprocessor (identity when it has none).
      metric_fns: the task's predict-metric fns ``(targets, predictions)``.
      score_metric_fns: the task's score-metric fns ``(targets, scores)``.
      examples: per example, every feature SeqIO's pipeline produced (numpy arrays and
        bytes, e.g. rank classification's ``idx`` and ``is_correct``), handed to the
        postprocessor as ``example=`` like SeqIO's evaluator does.
      target_tokens: per example, the 1-D int32 ``targets`` ids (unpadded, untrimmed).
      trim_eos: per feature, the EOS id re-appended after trimming (see :func:`trim_tokens`).
    """

    task_name: str
    group: str
    split: str
    input_tokens: tuple[np.ndarray, ...]
    inputs_text: tuple[str, ...]
    targets_text: tuple[str, ...]
    vocabulary: seqio.Vocabulary
    postprocess_fn: Callable[..., Any]
    metric_fns: tuple[Callable[..., dict[str, float]], ...]
    score_metric_fns: tuple[Callable[..., dict[str, float]], ...] = ()
    examples: tuple[Mapping[str, Any], ...] = ()
    target_tokens: tuple[np.ndarray, ...] = ()
    trim_eos: Mapping[str, int | None] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets_text)

    @property
    def needs_decoding(self) -> bool:
        """The task has predict metrics (decode, then :meth:`score`)."""
        return bool(self.metric_fns)

    @property
    def needs_scoring(self) -> bool:
        """The task has score metrics (model log-likelihoods, then :meth:`score_from_scores`)."""
        return bool(self.score_metric_fns)

    @property
    def max_input_length(self) -> int:
        return max((len(t) for t in self.input_tokens), default=0)

    def num_truncated(self, length: int, feature: str = "inputs") -> int:
        """How many examples' ``feature`` ids are longer than ``length``."""
        tokens = self.input_tokens if feature == "inputs" else self.target_tokens
        return sum(len(t) > length for t in tokens)

    def trimmed_tokens(self, feature: str, length: int) -> list[np.ndarray]:
        """Per example, the unpadded ``feature`` ids (``'inputs'`` or ``'targets'``) cut to
        ``length`` as in training; a cut is counted in the log once per task and length."""
        tokens = self.input_tokens if feature == "inputs" else self.target_tokens
        if len(tokens) != len(self):
            raise ValueError(f"Eval task {self.task_name!r} kept no {feature!r} token ids.")
        cut = self.num_truncated(length, feature)
        key = (self.task_name, self.split, feature, length)
        if cut and key not in _logged_truncations:
            _logged_truncations.add(key)
            log.warning(
                "Eval task %r (%s): %d of %d %s are longer than %d tokens; truncated as in "
                "training.", self.task_name, self.split, cut, len(tokens), feature, length,
            )  # fmt: skip
        eos = self.trim_eos.get(feature)
        return [trim_tokens(row, length, eos) for row in tokens]

    def _array(self, feature: str, length: int) -> np.ndarray:
        rows = self.trimmed_tokens(feature, length)
        out = np.zeros((len(rows), length), dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def inputs_array(self, length: int) -> np.ndarray:
        """``[num_examples, length]`` int32 inputs, right-padded with 0; longer inputs are
        truncated as in training (counted in the log, once per task and length)."""
        return self._array("inputs", length)

    def targets_array(self, length: int) -> np.ndarray:
        """``[num_examples, length]`` int32 targets, truncated and padded like the inputs."""
        return self._array("targets", length)

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str:
        """Text of one decoded row, up to (excluding) the first EOS; padding ids are dropped."""
        ids = [int(i) for i in np.asarray(token_ids).reshape(-1)]
        eos = self.vocabulary.eos_id
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return self.vocabulary.decode([i for i in ids if i != self.vocabulary.pad_id])

    def example(self, index: int) -> Mapping[str, Any]:
        """The raw features of example ``index`` (``{}`` if none were kept)."""
        return self.examples[index] if self.examples else {}

    def postprocess(self, output: Any, *, is_target: bool, index: int | None = None) -> Any:
        """The task's SeqIO postprocessor, given example ``index`` as ``example=``."""
        example = self.example(index) if index is not None else {}
        return self.postprocess_fn(output, example=example, is_target=is_target)

    def postprocessed_targets(self) -> list[Any]:
        """Every target through the postprocessor with its example (SeqIO's targets)."""
        return [
            self.postprocess(t, is_target=True, index=i) for i, t in enumerate(self.targets_text)
        ]

    def score(self, predictions: Sequence[str]) -> dict[str, float]:
        """The task's predict metrics of ``predictions`` (decoded text, one per example)."""
        self._check_count(predictions, "predictions")
        targets = self.postprocessed_targets()
        preds = [self.postprocess(p, is_target=False, index=i) for i, p in enumerate(predictions)]
        return self._metrics(self.metric_fns, targets=targets, predictions=preds)

    def score_from_scores(self, scores: Sequence[float]) -> dict[str, float]:
        """The task's score metrics (e.g. rank-classification accuracy) of per-example model
        log-likelihoods of the targets, in example order (not postprocessed, as in SeqIO)."""
        self._check_count(scores, "scores")
        targets = self.postprocessed_targets()
        return self._metrics(self.score_metric_fns, targets=targets, scores=list(scores))

    def _check_count(self, values: Sequence[Any], what: str) -> None:
        if len(values) != len(self):
            raise ValueError(
                f"Eval task {self.task_name!r}: {len(values)} {what} for {len(self)} examples."
            )

    @staticmethod
    def _metrics(fns: Sequence[Callable[..., Any]], **kwargs: list) -> dict[str, float]:
        """Calls each metric fn with SeqIO's keywords (``targets`` and ``predictions`` or
        ``scores``)."""
        results: dict[str, float] = {}
        for fn in fns:
            results.update({k: float(v) for k, v in fn(**kwargs).items()})
        return results


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _example_index(ex: Mapping[str, Any]) -> int | None:
    """Rank-classification rows carry ``idx = [example, choice]``: the example they belong to."""
    idx = ex.get("idx")
    if idx is None or np.ndim(idx) != 1 or np.size(idx) != 2:
        return None
    return int(np.asarray(idx)[0])


def task_eval_examples(
    task: seqio.Task, split: str, max_examples: int | None = None
) -> EvalExamples:
    """The :class:`EvalExamples` of one task (see :func:`get_eval_examples`)."""
    for feature in ("inputs", "targets"):
        if feature not in task.output_features:
            raise ValueError(f"Eval task {task.name!r} has no {feature!r} feature.")
    ds = task.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    tokens, target_tokens, inputs_text, targets_text, examples = [], [], [], [], []
    seen: set[int] = set()
    for ex in ds.as_numpy_iterator():
        if max_examples is not None:
            # Rows of one multiple-choice example stay together: count examples, not rows.
            index = _example_index(ex)
            key = index if index is not None else len(examples)
            if key not in seen and len(seen) >= max_examples:
                break
            seen.add(key)
        tokens.append(np.asarray(ex["inputs"], dtype=np.int32))
        target_tokens.append(np.asarray(ex["targets"], dtype=np.int32))
        inputs_text.append(_as_text(ex.get("inputs_pretokenized", b"")))
        if "targets_pretokenized" not in ex:
            raise ValueError(
                f"Eval task {task.name!r} does not keep 'targets_pretokenized'; tokenise with "
                "seqio.preprocessors.tokenize(copy_pretokenized=True)."
            )
        targets_text.append(_as_text(ex["targets_pretokenized"]))
        examples.append(ex)
    if not targets_text:
        raise ValueError(f"Eval task {task.name!r} has no examples in split {split!r}.")
    return EvalExamples(
        task_name=task.name,
        group=task_group(task.name),
        split=split,
        input_tokens=tuple(tokens),
        inputs_text=tuple(inputs_text),
        targets_text=tuple(targets_text),
        vocabulary=task.output_features["targets"].vocabulary,
        postprocess_fn=task.postprocess_fn,  # identity when the task has none
        metric_fns=tuple(task.predict_metric_fns),
        score_metric_fns=tuple(task.score_metric_fns),
        examples=tuple(examples),
        target_tokens=tuple(target_tokens),
        trim_eos=trim_eos_ids(task),
    )


def get_eval_examples(
    mixture_or_task_name: str, split: str = "validation", *, max_examples: int | None = None
) -> list[EvalExamples]:
    """Evaluation examples of a task, or of every task in a mixture that has ``split``.

    Args:
      mixture_or_task_name: a registered task or mixture (e.g. ``'demo_eval'``).
      split: usually ``'validation'`` during training and ``'test'`` at the end.
      max_examples: cap per task (the first examples, in data order; a multiple-choice
        example's rows count once), for quick evals.

    Returns:
      One :class:`EvalExamples` per task, sorted by task name; unshuffled and unpacked. Route
      ``needs_decoding`` ones to a decoder and ``needs_scoring`` ones to a scorer.
    """
    get_mixture_or_task(mixture_or_task_name)  # clear error for unknown names
    tasks = [t for t in leaf_tasks(mixture_or_task_name) if split in t.splits]
    if not tasks:
        raise ValueError(f"No task of {mixture_or_task_name!r} has a {split!r} split.")
    return [task_eval_examples(t, split, max_examples) for t in sorted(tasks, key=lambda t: t.name)]
