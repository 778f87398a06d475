"""The Instruction Following Score plug-in (AlShikh et al. 2023): a metric and a stop rule.

At each eval the model (current parameters, the run's own decoder: ``ctx.evaluator``)
answers a fixed instruction set of full and partial instructions; a response-tone classifier
labels each response answer-like or continuation-like. Logged (``metrics.jsonl``,
TensorBoard) as ``<name>/ifs`` (fraction answer-like), ``<name>/ifs_partial``,
``<name>/ifs_full`` and ``<name>/empty`` (fraction of empty responses, which count as not
answer-like). After each eval the plug-in asks the loop to stop (which saves) once
the score has plateaued: :func:`plateaued`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.base import Action, EvalContext, Plugin
from t5x_instruct.plugins.ifs.classifier import (
    INSTRUCTIONS_FILE,
    VOCAB_FILE,
    ResponseClassifier,
    ToneClassifier,
    Vocabulary,
    decode_row,
    encode_rows,
    read_classifier_config,
)
from t5x_instruct.plugins.ifs.data import Instruction, read_instructions

log = logging.getLogger(__name__)

METRICS = ("ifs", "ifs_partial", "ifs_full")


def plateaued(
    values: Sequence[float], patience: int, epsilon: float, min_score: float = 0.0
) -> bool:
    """True when the best of the last ``patience`` values is less than ``epsilon`` above the
    best value before them (and the latest value is at least ``min_score``).

    Needs ``patience + 1`` values; with ``patience=k`` the rule reads "k evals in a row
    brought no improvement of ``epsilon`` over the best so far" (Keras-style patience).
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}.")
    if len(values) <= patience:
        return False
    recent, before = values[-patience:], values[:-patience]
    return max(recent) - max(before) < epsilon and values[-1] >= min_score


def ifs_scores(kinds: Sequence[str], answer_like: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """IFS over all responses and over the partial / full instructions' responses.

    A split with no instruction is left out (rather than logged as NaN).
    """
    kinds_arr = np.asarray(kinds)
    answer = np.asarray(answer_like, bool)
    if kinds_arr.shape != answer.shape or not len(answer):
        raise ValueError(f"{len(kinds_arr)} kinds for {len(answer)} labels.")
    out = {"ifs": float(answer.mean())}
    for kind in ("partial", "full"):
        chosen = kinds_arr == kind
        if chosen.any():
            out[f"ifs_{kind}"] = float(answer[chosen].mean())
    return out


@dataclasses.dataclass
class InstructionSource:
    """The instruction set as an eval source: what ``GreedyEvaluator.predict`` decodes."""

    instructions: tuple[Instruction, ...]
    vocabulary: Vocabulary
    task_name: str = "ifs"
    group: str = "ifs"
    _warned: set[int] = dataclasses.field(default_factory=set, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def inputs_text(self) -> list[str]:
        return [i.inputs for i in self.instructions]

    @property
    def targets_text(self) -> list[str]:
        return [""] * len(self)

    @property
    def kinds(self) -> list[str]:
        return [i.kind for i in self.instructions]

    def inputs_array(self, length: int) -> np.ndarray:
        rows = encode_rows(self.vocabulary, self.inputs_text, length)
        cut = sum(len(self.vocabulary.encode(t)) + 1 > length for t in self.inputs_text)
        if cut and length not in self._warned:
            self._warned.add(length)
            log.warning(
                "IFS: %d of %d instructions are longer than %d tokens; truncated as in training.",
                cut, len(self), length,
            )  # fmt: skip
        return rows

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str:
        return decode_row(self.vocabulary, token_ids)

    def score(self, predictions: Sequence[str]) -> dict[str, float]:
        del predictions
        return {}


@gin.configurable
class InstructionFollowingScore(Plugin):
    """IFS at every eval, and early stopping when it plateaus.

    Settings:
      classifier_dir: a directory written by ``tools/train_ifs_classifier.py`` (checkpoint,
        ``ifs_classifier.json``, ``spiece.model``, ``instructions.jsonl``).
      instructions: an instruction-set JSONL (default: the classifier directory's).
      vocabulary: the *trained model's* vocabulary (a SeqIO vocabulary, e.g.
        ``@get_vocabulary()``, or a SentencePiece path); default: the classifier's, which is
        right when both were trained on the same data (the demo).
      max_instructions: use only the first N instructions (quicker evals).
      threshold: a response is answer-like when ``p(answer) >= threshold``.
      early_stop: ask the loop to stop when ``monitor`` has plateaued.
      monitor: ``'ifs'``, ``'ifs_partial'`` or ``'ifs_full'``.
      plateau_epsilon / plateau_evals: stop when the best of the last ``plateau_evals``
        evals is less than ``plateau_epsilon`` above the best before them (:func:`plateaued`).
      min_score: never stop while the latest ``monitor`` value is below this.
      write_responses: write each eval's responses and labels to
        ``MODEL_DIR/<name>/responses_<step>.jsonl``.
      classifier: a :class:`ResponseClassifier` object instead of ``classifier_dir``.
      name: the plug-in's name (metric prefix).
    """

    def __init__(
        self,
        classifier_dir: str | None = None,
        *,
        instructions: str | None = None,
        vocabulary: Any = None,
        max_instructions: int | None = None,
        threshold: float = 0.5,
        early_stop: bool = True,
        monitor: str = "ifs",
        plateau_epsilon: float = 0.01,
        plateau_evals: int = 3,
        min_score: float = 0.0,
        write_responses: bool = True,
        classifier: ResponseClassifier | None = None,
        name: str = "ifs",
    ) -> None:
        where = f"plug-in {name!r} (InstructionFollowingScore)"
        if classifier_dir is not None and not isinstance(classifier_dir, str | os.PathLike):
            # gin hands over a placeholder when the macro is still %gin.REQUIRED.
            raise UserInputError(
                f"{where}: IFS_CLASSIFIER_DIR is not set; pass --gin.IFS_CLASSIFIER_DIR=<dir "
                "written by tools/train_ifs_classifier.py>."
            )
        if (classifier is None) == (classifier_dir is None):
            raise UserInputError(
                f"{where}: give exactly one of classifier_dir (gin: IFS_CLASSIFIER_DIR) or "
                "classifier."
            )
        if classifier_dir is not None:
            read_classifier_config(classifier_dir)  # fail at start-up, not at the first eval
        if instructions is None and classifier_dir is None:
            raise UserInputError(f"{where}: `instructions` is required without classifier_dir.")
        if monitor not in METRICS:
            raise UserInputError(f"{where}: monitor={monitor!r} must be one of {METRICS}.")
        if not (isinstance(plateau_evals, int) and plateau_evals >= 1):
            raise UserInputError(f"{where}: plateau_evals={plateau_evals!r} must be an int >= 1.")
        if not plateau_epsilon >= 0:
            raise UserInputError(f"{where}: plateau_epsilon={plateau_epsilon} must be >= 0.")
        if not 0.0 < threshold < 1.0:
            raise UserInputError(f"{where}: threshold={threshold} must be in (0, 1).")
        if max_instructions is not None and max_instructions < 1:
            raise UserInputError(f"{where}: max_instructions={max_instructions} must be >= 1.")
        self.name = name
        self.classifier_dir = classifier_dir
        self.instructions_path = instructions or os.path.join(classifier_dir, INSTRUCTIONS_FILE)
        self.vocabulary = vocabulary
        self.max_instructions = max_instructions
        self.threshold = threshold
        self.early_stop = early_stop
        self.monitor = monitor
        self.plateau_epsilon = float(plateau_epsilon)
        self.plateau_evals = plateau_evals
        self.min_score = float(min_score)
        self.write_responses = write_responses
        self.classifier = classifier
        self.history: list[tuple[int, float]] = []  # (step, monitor) at each periodic eval
        self.stopped_at: int | None = None
        self.last_responses: list[str] = []
        self._source: InstructionSource | None = None
        self._history_loaded = False

    # ---------------------------------------------------------------- set-up

    def _resolve_vocabulary(self) -> Vocabulary:
        vocabulary = self.vocabulary
        if vocabulary is None:
            if self.classifier_dir is None:
                raise UserInputError(
                    f"plug-in {self.name!r}: set InstructionFollowingScore.vocabulary (the "
                    "trained model's vocabulary) when no classifier_dir is given."
                )
            vocabulary = os.path.join(self.classifier_dir, VOCAB_FILE)
        if isinstance(vocabulary, str):
            from t5x_instruct.data.vocabularies import make_vocabulary  # lazy: seqio

            binding = "InstructionFollowingScore.vocabulary"
            vocabulary = make_vocabulary("sentencepiece", vocabulary, binding=binding)
        return vocabulary

    def source(self) -> InstructionSource:
        """The instruction set, tokenized with the trained model's vocabulary (built once)."""
        if self._source is None:
            items = read_instructions(self.instructions_path)[: self.max_instructions]
            self._source = InstructionSource(tuple(items), self._resolve_vocabulary())
            counts = {k: self._source.kinds.count(k) for k in ("full", "partial")}
            log.info("IFS: %d instructions from %s (%s)", len(items), self.instructions_path,
                     counts)  # fmt: skip
        return self._source

    def _classifier(self) -> ResponseClassifier:
        if self.classifier is None:
            self.classifier = ToneClassifier.load(self.classifier_dir)
        return self.classifier

    def _load_history(self, model_dir: str, step: int) -> None:
        """On resume, earlier evals' values come back from ``metrics.jsonl`` (the loop has
        already dropped records past the restored step)."""
        self._history_loaded = True
        path = os.path.join(model_dir, "metrics.jsonl")
        if self.history or not os.path.exists(path):
            return
        key = f"{self.name}/{self.monitor}"
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if key in record and record.get("step", 0) < step:
                    self.history.append((int(record["step"]), float(record[key])))

    # ---------------------------------------------------------------- hooks

    def classify(self, responses: Sequence[str]) -> np.ndarray:
        """Answer-like per response; an empty response (immediate EOS) answers nothing."""
        answer = np.zeros(len(responses), bool)
        nonempty = [i for i, r in enumerate(responses) if r.strip()]
        if nonempty:
            probs = self._classifier().answer_probability([responses[i] for i in nonempty])
            answer[nonempty] = np.asarray(probs) >= self.threshold
        return answer

    def eval_metrics(self, ctx: EvalContext) -> dict[str, float]:
        if not self._history_loaded:
            self._load_history(ctx.model_dir, ctx.step)
        source = self.source()
        rows = ctx.evaluator.predict(ctx.params, source)
        responses = [source.decode(row) for row in rows]
        answer = self.classify(responses)
        scores = ifs_scores(source.kinds, answer)
        # Empty responses count as not answer-like; their share tells them apart from
        # responses the classifier judged continuation-like.
        scores["empty"] = float(np.mean([not r.strip() for r in responses]))
        self.last_responses = responses
        if self.write_responses and jax.process_index() == 0:
            self._write_responses(ctx.model_dir, ctx.step, source, responses, answer)
        return scores

    def after_eval(self, step: int, metrics: Mapping[str, float]) -> Action:
        value = metrics.get(f"{self.name}/{self.monitor}")
        if value is None:
            return Action.CONTINUE
        self.history.append((step, float(value)))
        values = [v for _, v in self.history]
        if self.early_stop and plateaued(
            values, self.plateau_evals, self.plateau_epsilon, self.min_score
        ):
            self.stopped_at = step
            log.info(
                "IFS plateaued at step %d: best %s of the last %d evals %.4f vs %.4f before "
                "(epsilon %.4g); stopping.", step, self.monitor, self.plateau_evals,
                max(values[-self.plateau_evals :]), max(values[: -self.plateau_evals]),
                self.plateau_epsilon,
            )  # fmt: skip
            return Action.STOP
        return Action.CONTINUE

    def _write_responses(
        self,
        model_dir: str,
        step: int,
        source: InstructionSource,
        responses: Sequence[str],
        answer: np.ndarray,
    ) -> None:
        folder = os.path.join(model_dir, self.name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"responses_{step}.jsonl"), "w", encoding="utf-8") as f:
            for item, response, label in zip(source.instructions, responses, answer):
                row = {"kind": item.kind, "inputs": item.inputs, "response": response,
                       "answer_like": bool(label)}  # fmt: skip
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
