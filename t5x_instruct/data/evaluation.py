"""Raw evaluation examples for exact-match evaluation by greedy decoding, per task.

The trainer greedy-decodes ``inputs_array(length)`` (encoder inputs, or the prefix of a
prefix-LM), turns each output row into text with ``decode``, and calls ``score`` which applies
the task's own SeqIO postprocessor and predict-metric fns (``exact_match`` for the demo tasks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import seqio

from t5x_instruct.data.registry import get_mixture_or_task, leaf_tasks, task_group


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """One task's evaluation split: token ids to decode from and target strings to compare.

    Attributes:
      task_name: the SeqIO task.
      group: evaluation group (``train_tasks``, ``heldout_templates`` or ``heldout_task``).
      split: the split the examples come from.
      input_tokens: per example, the 1-D int32 ``inputs`` ids ending in EOS (unpadded).
      inputs_text: the untokenised inputs (for logging samples).
      targets_text: the untokenised targets, as written in the data.
      vocabulary: the task's output vocabulary (decoding predictions).
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

    def __len__(self) -> int:
        return len(self.targets_text)

    @property
    def max_input_length(self) -> int:
        return max((len(t) for t in self.input_tokens), default=0)

    def inputs_array(self, length: int) -> np.ndarray:
        """``[num_examples, length]`` int32 inputs, right-padded with 0.

        Raises ``ValueError`` naming the task if an example does not fit (no silent truncation:
        a cut prompt would be scored as a model error).
        """
        if self.max_input_length > length:
            raise ValueError(
                f"Eval task {self.task_name!r} ({self.split}) has inputs of up to "
                f"{self.max_input_length} tokens, longer than length={length}."
            )
        out = np.zeros((len(self), length), dtype=np.int32)
        for i, tokens in enumerate(self.input_tokens):
            out[i, : len(tokens)] = tokens
        return out

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str:
        """Text of one decoded row, up to (excluding) the first EOS; padding ids are dropped."""
        ids = [int(i) for i in np.asarray(token_ids).reshape(-1)]
        eos = self.vocabulary.eos_id
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return self.vocabulary.decode([i for i in ids if i != self.vocabulary.pad_id])

    def postprocess(self, text: str, *, is_target: bool) -> Any:
        """The task's SeqIO postprocessor (the demo tasks strip whitespace)."""
        return self.postprocess_fn(text, example={}, is_target=is_target)

    def score(self, predictions: Sequence[str]) -> dict[str, float]:
        """The task's metrics of ``predictions`` (decoded text, one per example, in order)."""
        if len(predictions) != len(self):
            raise ValueError(
                f"Eval task {self.task_name!r}: {len(predictions)} predictions for "
                f"{len(self)} examples."
            )
        targets = [self.postprocess(t, is_target=True) for t in self.targets_text]
        preds = [self.postprocess(p, is_target=False) for p in predictions]
        results: dict[str, float] = {}
        for fn in self.metric_fns:
            results.update({k: float(v) for k, v in fn(targets=targets, predictions=preds).items()})
        return results


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _task_examples(task: seqio.Task, split: str, max_examples: int | None) -> EvalExamples:
    for feature in ("inputs", "targets"):
        if feature not in task.output_features:
            raise ValueError(f"Eval task {task.name!r} has no {feature!r} feature.")
    ds = task.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    if max_examples is not None:
        ds = ds.take(max_examples)
    tokens, inputs_text, targets_text = [], [], []
    for ex in ds.as_numpy_iterator():
        tokens.append(np.asarray(ex["inputs"], dtype=np.int32))
        inputs_text.append(_as_text(ex.get("inputs_pretokenized", b"")))
        if "targets_pretokenized" not in ex:
            raise ValueError(
                f"Eval task {task.name!r} does not keep 'targets_pretokenized'; tokenise with "
                "seqio.preprocessors.tokenize(copy_pretokenized=True)."
            )
        targets_text.append(_as_text(ex["targets_pretokenized"]))
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
    )


def get_eval_examples(
    mixture_or_task_name: str, split: str = "validation", *, max_examples: int | None = None
) -> list[EvalExamples]:
    """Evaluation examples of a task, or of every task in a mixture that has ``split``.

    Args:
      mixture_or_task_name: a registered task or mixture (e.g. ``'demo_eval'``).
      split: usually ``'validation'`` during training and ``'test'`` at the end.
      max_examples: cap per task (the first examples, in data order), for quick evals.

    Returns:
      One :class:`EvalExamples` per task, sorted by task name; unshuffled and unpacked.
    """
    get_mixture_or_task(mixture_or_task_name)  # clear error for unknown names
    tasks = [t for t in leaf_tasks(mixture_or_task_name) if split in t.splits]
    if not tasks:
        raise ValueError(f"No task of {mixture_or_task_name!r} has a {split!r} split.")
    return [_task_examples(t, split, max_examples) for t in sorted(tasks, key=lambda t: t.name)]
